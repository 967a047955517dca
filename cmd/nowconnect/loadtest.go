package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nowconnect/nowconnect/loadtest"
)

const loadtestUsage = `usage: nowconnect loadtest ldap --url ldap://HOST:PORT --base-dn DN [flags]

Drives real LDAP traffic at a directory, directly or through a gateway listener, and
reports ops/s, p50/p95/p99/p99.9/max latency and errors by LDAP result code or network
class. Scenarios: bind-search (bind as a user, search its entry), search (search by uid
on one --bind-dn connection per worker), group-write (add a user to a group, then remove
it; result 20 on the add and 16 on the delete are benign successes), mixed (--mix).
--rate R runs open loop: ops are scheduled at R/s in total and latency counts from the
intended start, so queueing is not hidden; --rate 0 runs closed loop, as fast as possible.
Templates expand {base}, {uid}, {i} (user index; {i:04} zero-pads) and {g} (group index).

Exit status: 0 every gate passed, 1 the p99 SLO or the error budget was missed (or no op
succeeded), 2 usage or configuration error (including a failed preflight bind/search).
SIGINT stops the run early; the report is still printed.

flags:
`

// runLoadtest is `nowconnect loadtest ldap [flags]`; it returns the exit status.
func runLoadtest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "ldap" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			newLoadtestFlags(stdout, stdout).fs.Usage()
			return 0
		}
		newLoadtestFlags(stderr, stderr).fs.Usage()
		return 2
	}
	lf := newLoadtestFlags(stderr, stderr)
	if err := lf.fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if lf.fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nowconnect loadtest: unexpected arguments %q\n", lf.fs.Args())
		return 2
	}
	cfg, err := lf.config(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "nowconnect loadtest: %v\n", err)
		return 2
	}
	// Open the output files first: a bad path must not cost a whole run.
	var reportFile, jsonFile *os.File
	for _, o := range []struct {
		path string
		f    **os.File
	}{{lf.report, &reportFile}, {lf.json, &jsonFile}} {
		if o.path == "" {
			continue
		}
		f, err := os.Create(o.path)
		if err != nil {
			fmt.Fprintf(stderr, "nowconnect loadtest: %v\n", err)
			closeAll(reportFile, jsonFile)
			return 2
		}
		*o.f = f
	}
	defer closeAll(reportFile, jsonFile)

	res, err := loadtest.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "nowconnect loadtest: %v\n", err)
		return 2
	}
	if err := res.WriteMarkdown(stdout); err != nil {
		fmt.Fprintf(stderr, "nowconnect loadtest: %v\n", err)
	}
	for _, o := range []struct {
		f     *os.File
		write func(io.Writer) error
	}{{reportFile, res.WriteMarkdown}, {jsonFile, res.WriteJSON}} {
		if o.f == nil {
			continue
		}
		err := o.write(o.f)
		if cerr := o.f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			fmt.Fprintf(stderr, "nowconnect loadtest: writing %s: %v\n", o.f.Name(), err)
			return 2
		}
	}
	if res.Interrupted {
		fmt.Fprintln(stderr, "nowconnect loadtest: interrupted; the report covers the run until then")
	}
	for _, c := range res.Failed() {
		fmt.Fprintf(stderr, "nowconnect loadtest: FAIL %s: %s, limit %s\n", c.Name, c.Actual, c.Limit)
	}
	return res.ExitCode()
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		if f != nil {
			_ = f.Close() // a second Close after a successful write is harmless
		}
	}
}

type loadtestFlags struct {
	fs                                       *flag.FlagSet
	url, baseDN, bindDN, bindPW, bindPWFile  string
	scenario, mix, filter, attrs             string
	uid, userDN, userPW, groupDN             string
	metricsURL, report, json                 string
	concurrency, userCount, userOffset, grps int
	rate, maxErrRate                         float64
	duration, warmup, opTimeout, sloP99      time.Duration
	reconnect, allowExisting, progress       bool
	seed                                     uint64
}

func newLoadtestFlags(out, usageOut io.Writer) *loadtestFlags {
	lf := &loadtestFlags{fs: flag.NewFlagSet("loadtest ldap", flag.ContinueOnError)}
	fs := lf.fs
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(usageOut, loadtestUsage)
		fs.SetOutput(usageOut)
		fs.PrintDefaults()
		fs.SetOutput(out)
	}
	fs.StringVar(&lf.url, "url", "", "ldap://HOST:PORT of the gateway listener or the directory (required)")
	fs.StringVar(&lf.baseDN, "base-dn", "", "search base and {base} of the templates (required)")
	fs.StringVar(&lf.bindDN, "bind-dn", "", "identity for search and group-write (empty: anonymous search)")
	fs.StringVar(&lf.bindPW, "bind-pw", "", "password of --bind-dn (visible in ps: prefer --bind-pw-file)")
	fs.StringVar(&lf.bindPWFile, "bind-pw-file", "", "file holding the password of --bind-dn")
	fs.StringVar(&lf.scenario, "scenario", string(loadtest.BindSearch), "bind-search, search, group-write or mixed")
	fs.StringVar(&lf.mix, "mix", loadtest.FormatMix(loadtest.DefaultMix), "weights of the mixed scenario")
	fs.IntVar(&lf.concurrency, "concurrency", 10, "workers, one LDAP connection each")
	fs.Float64Var(&lf.rate, "rate", 0, "offered ops/s in total, open loop; 0 = closed loop, as fast as possible")
	fs.DurationVar(&lf.duration, "duration", 30*time.Second, "measured duration")
	fs.DurationVar(&lf.warmup, "warmup", time.Second, "load before the measured duration, not recorded")
	fs.DurationVar(&lf.opTimeout, "op-timeout", loadtest.DefaultOpTimeout, "timeout of each LDAP request and dial")
	fs.BoolVar(&lf.reconnect, "reconnect", false, "new connection per op (default: one persistent connection per worker)")
	fs.StringVar(&lf.filter, "filter", loadtest.DefaultFilter, "search filter template ({uid} is filter-escaped)")
	fs.StringVar(&lf.attrs, "attrs", loadtest.DefaultAttributes, "attributes to fetch, comma-separated")
	fs.IntVar(&lf.userCount, "user-count", loadtest.DefaultUserCount, "users to pick from: indexes [user-offset, user-offset+user-count)")
	fs.IntVar(&lf.userOffset, "user-offset", 0, "first user index")
	fs.StringVar(&lf.uid, "uid", loadtest.DefaultUIDTemplate, "uid template of user {i}")
	fs.StringVar(&lf.userDN, "user-dn", loadtest.DefaultUserDN, "DN template of a user")
	fs.StringVar(&lf.userPW, "user-pw", loadtest.DefaultUserPW, "password template of a user (bind-search)")
	fs.IntVar(&lf.grps, "group-count", loadtest.DefaultGroupCount, "groups to pick from: indexes [0, group-count)")
	fs.StringVar(&lf.groupDN, "group-dn", loadtest.DefaultGroupDN, "DN template of group {g}")
	fs.BoolVar(&lf.allowExisting, "allow-existing", false, "let group-write toggle memberships that existed before the run (default: never touch them)")
	fs.StringVar(&lf.metricsURL, "metrics-url", "", "hub http://CONTROL/metrics: report the deltas of the nowconnect_tcp_* counters")
	fs.StringVar(&lf.report, "report", "", "write the Markdown report to this file too (it always goes to stdout)")
	fs.StringVar(&lf.json, "json", "", "write the result as JSON to this file")
	fs.DurationVar(&lf.sloP99, "slo-p99", 0, "fail (exit 1) when p99 latency exceeds this; 0 = no latency gate")
	fs.Float64Var(&lf.maxErrRate, "max-error-rate", 0.01, "fail (exit 1) when errors/ops exceeds this fraction; negative = no budget")
	fs.BoolVar(&lf.progress, "progress", isTerminal(out), "live progress line on stderr every second (default: on when stderr is a terminal)")
	fs.Uint64Var(&lf.seed, "seed", 0, "random seed for user/group picks (0: from the clock)")
	return lf
}

func (lf *loadtestFlags) config(stderr io.Writer) (loadtest.Config, error) {
	pw := lf.bindPW
	if lf.bindPWFile != "" {
		if pw != "" {
			return loadtest.Config{}, fmt.Errorf("--bind-pw and --bind-pw-file are exclusive")
		}
		b, err := os.ReadFile(lf.bindPWFile)
		if err != nil {
			return loadtest.Config{}, err
		}
		pw = strings.TrimRight(string(b), "\r\n")
	}
	cfg := loadtest.Config{
		URL: lf.url, BaseDN: lf.baseDN, BindDN: lf.bindDN, BindPW: pw,
		Scenario: loadtest.Scenario(lf.scenario), Concurrency: lf.concurrency, Rate: lf.rate,
		Duration: lf.duration, Warmup: lf.warmup, OpTimeout: lf.opTimeout, Reconnect: lf.reconnect,
		Filter: lf.filter, UserCount: lf.userCount, UserOffset: lf.userOffset,
		UIDTemplate: lf.uid, UserDNTmpl: lf.userDN, UserPWTmpl: lf.userPW,
		GroupCount: lf.grps, GroupDNTmpl: lf.groupDN, AllowExisting: lf.allowExisting,
		MetricsURL: lf.metricsURL, SLOP99: lf.sloP99, MaxErrorRate: lf.maxErrRate, Seed: lf.seed,
	}
	for _, a := range strings.Split(lf.attrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.Attributes = append(cfg.Attributes, a)
		}
	}
	if cfg.Attributes == nil {
		cfg.Attributes = []string{"1.1"} // no attributes
	}
	if cfg.Scenario == loadtest.Mixed {
		m, err := loadtest.ParseMix(lf.mix)
		if err != nil {
			return loadtest.Config{}, fmt.Errorf("--mix: %w", err)
		}
		cfg.Mix = m
	}
	if lf.progress {
		cfg.Progress = stderr
		cfg.ProgressTTY = isTerminal(stderr)
	}
	return cfg, cfg.Validate()
}
