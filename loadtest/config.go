package loadtest

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Scenario names an operation mix.
type Scenario string

// The scenarios. One "op" of each is what its latency measures:
//   - bind-search: a simple bind as a seeded user, then a search for that user's entry;
//   - search: a search by uid on a connection bound as --bind-dn (anonymous if empty);
//   - group-write: add a user as member of a group, then delete that member value, bound
//     as --bind-dn. Result 20 (typeOrValueExists) on the add and 16 (noSuchAttribute) on
//     the delete are success ("benign"), as in the LDAP connector's idempotency rule;
//   - mixed: each op is one of the above, drawn by weight (Config.Mix).
const (
	BindSearch Scenario = "bind-search"
	Search     Scenario = "search"
	GroupWrite Scenario = "group-write"
	Mixed      Scenario = "mixed"
)

// opKinds are the scenarios an individual op can be; their order indexes per-kind stats.
var opKinds = [...]Scenario{BindSearch, Search, GroupWrite}

const numKinds = len(opKinds)

func kindIndex(s Scenario) int {
	for i, k := range opKinds {
		if k == s {
			return i
		}
	}
	return -1
}

// ErrConfig marks errors in the configuration or in the preflight against the target
// (unreachable, wrong credentials, templates that match no entry): exit code 2.
var ErrConfig = errors.New("config error")

// Config describes one run. Templates expand {base} (BaseDN), {uid} (the user's uid),
// {i} / {i:04} (user index, optionally zero-padded to a width) and {g} / {g:02} (group
// index).
type Config struct {
	URL    string // ldap://host:port (the gateway listener or the server)
	BaseDN string
	BindDN string // admin identity for search and group-write; empty = anonymous
	BindPW string

	Scenario Scenario
	// Mix weights the op kinds of the mixed scenario; nil means DefaultMix.
	Mix map[Scenario]int

	Concurrency int     // workers, one connection each
	Rate        float64 // offered ops/s in total (open loop); 0 = closed loop
	Duration    time.Duration
	Warmup      time.Duration // ops before this are run but not recorded
	OpTimeout   time.Duration // per LDAP request; 0 = 5s
	Reconnect   bool          // a new connection per op instead of one per worker

	Filter        string // search filter template; {uid} is filter-escaped
	Attributes    []string
	UserCount     int // users picked from [UserOffset, UserOffset+UserCount)
	UserOffset    int
	UIDTemplate   string
	UserDNTmpl    string
	UserPWTmpl    string
	GroupCount    int // groups picked from [0, GroupCount)
	GroupDNTmpl   string
	AllowExisting bool // group-write may toggle memberships that existed before the run

	MetricsURL string // optional hub /metrics: nowconnect_tcp_* deltas are reported

	SLOP99       time.Duration // 0 = no latency gate
	MaxErrorRate float64       // fraction of ops; negative = no error budget

	// Progress, when set, receives a progress line every ProgressInterval (default 1s);
	// ProgressTTY rewrites one line in place instead of printing one per interval.
	Progress         io.Writer
	ProgressInterval time.Duration
	ProgressTTY      bool

	Seed uint64 // random picks; 0 = from the clock
}

// Defaults of the templates and sizes (they match the seeded test directory).
const (
	DefaultFilter      = "(uid={uid})"
	DefaultUIDTemplate = "user{i:04}"
	DefaultUserDN      = "uid={uid},ou=people,{base}"
	DefaultUserPW      = "password{i:04}"
	DefaultGroupDN     = "cn=group{g:02},ou=groups,{base}"
	DefaultAttributes  = "cn,mail,description"
	DefaultUserCount   = 100
	DefaultGroupCount  = 10
	DefaultOpTimeout   = 5 * time.Second
)

// DefaultMix is the weighting of the mixed scenario when none is given.
var DefaultMix = map[Scenario]int{Search: 70, BindSearch: 20, GroupWrite: 10}

// ParseMix parses "search=70,bind-search=20,group-write=10".
func ParseMix(s string) (map[Scenario]int, error) {
	m := map[Scenario]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("mix %q: want SCENARIO=WEIGHT", part)
		}
		sc := Scenario(strings.TrimSpace(k))
		if kindIndex(sc) < 0 {
			return nil, fmt.Errorf("mix %q: scenario must be bind-search, search or group-write", part)
		}
		w, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || w < 0 {
			return nil, fmt.Errorf("mix %q: weight must be a non-negative integer", part)
		}
		m[sc] = w
	}
	return m, nil
}

// FormatMix renders a mix in ParseMix's syntax, in a fixed order.
func FormatMix(m map[Scenario]int) string {
	var parts []string
	for _, k := range opKinds {
		if w, ok := m[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%d", k, w))
		}
	}
	return strings.Join(parts, ",")
}

func (c *Config) withDefaults() Config {
	cc := *c
	if cc.Filter == "" {
		cc.Filter = DefaultFilter
	}
	if cc.UIDTemplate == "" {
		cc.UIDTemplate = DefaultUIDTemplate
	}
	if cc.UserDNTmpl == "" {
		cc.UserDNTmpl = DefaultUserDN
	}
	if cc.UserPWTmpl == "" {
		cc.UserPWTmpl = DefaultUserPW
	}
	if cc.GroupDNTmpl == "" {
		cc.GroupDNTmpl = DefaultGroupDN
	}
	if cc.Attributes == nil {
		cc.Attributes = strings.Split(DefaultAttributes, ",")
	}
	if cc.OpTimeout == 0 {
		cc.OpTimeout = DefaultOpTimeout
	}
	if cc.ProgressInterval == 0 {
		cc.ProgressInterval = time.Second
	}
	if cc.Scenario == Mixed && cc.Mix == nil {
		cc.Mix = DefaultMix
	}
	return cc
}

// Validate checks the configuration without contacting anything. Its errors wrap
// ErrConfig.
func (c *Config) Validate() error {
	cc := c.withDefaults()
	return cc.validate()
}

func (c *Config) validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if c.URL == "" {
		bad("--url is required")
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "" {
		bad("--url %q: want ldap://HOST:PORT or ldaps://HOST:PORT", c.URL)
	}
	if c.BaseDN == "" {
		bad("--base-dn is required")
	}
	switch c.Scenario {
	case BindSearch, Search, GroupWrite:
	case Mixed:
		total := 0
		for k, w := range c.Mix {
			if kindIndex(k) < 0 {
				bad("--mix: unknown scenario %q", k)
			}
			total += w
		}
		if total <= 0 {
			bad("--mix: the weights must add up to more than 0")
		}
	default:
		bad("--scenario %q: want bind-search, search, group-write or mixed", c.Scenario)
	}
	if c.usesKind(GroupWrite) && c.BindDN == "" {
		bad("--scenario %s writes group members: --bind-dn is required", c.Scenario)
	}
	if c.BindDN != "" && c.BindPW == "" {
		bad("--bind-pw is required with --bind-dn")
	}
	if c.Concurrency < 1 {
		bad("--concurrency must be at least 1")
	}
	if c.Rate < 0 {
		bad("--rate must be >= 0 (0 = closed loop)")
	}
	if c.Duration <= 0 {
		bad("--duration must be > 0")
	}
	if c.Warmup < 0 {
		bad("--warmup must be >= 0")
	}
	if c.OpTimeout < 0 {
		bad("--op-timeout must be >= 0")
	}
	if c.UserCount < 1 {
		bad("--user-count must be at least 1")
	}
	if c.UserOffset < 0 {
		bad("--user-offset must be >= 0")
	}
	if c.UserCount > 10_000_000 {
		bad("--user-count %d is unreasonably large (max 10000000)", c.UserCount)
	}
	if c.usesKind(GroupWrite) && c.GroupCount < 1 {
		bad("--group-count must be at least 1")
	}
	if c.SLOP99 < 0 {
		bad("--slo-p99 must be >= 0")
	}
	if c.MaxErrorRate > 1 {
		bad("--max-error-rate is a fraction in [0, 1]")
	}
	if c.MetricsURL != "" {
		if u, err := url.Parse(c.MetricsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("--metrics-url %q: want http://HOST:PORT/metrics", c.MetricsURL)
		}
	}
	for name, tmpl := range map[string]string{"--filter": c.Filter, "--uid": c.UIDTemplate, "--user-dn": c.UserDNTmpl, "--user-pw": c.UserPWTmpl, "--group-dn": c.GroupDNTmpl} {
		if _, err := expand(tmpl, templateVars{}); err != nil {
			bad("%s: %v", name, err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	sort.Strings(errs)
	return fmt.Errorf("%w: %s", ErrConfig, strings.Join(errs, "; "))
}

// usesKind reports whether ops of kind k can occur.
func (c *Config) usesKind(k Scenario) bool {
	if c.Scenario == Mixed {
		return c.Mix[k] > 0
	}
	return c.Scenario == k
}

type templateVars struct {
	base, uid string
	i, g      int
	escapeUID bool // filter templates: escape {uid} for a filter
}

// expand replaces {base}, {uid}, {i[:W]} and {g[:W]} in tmpl. W is a width; a leading 0
// pads with zeros ({i:04} → 0007).
func expand(tmpl string, v templateVars) (string, error) {
	var b strings.Builder
	for {
		open := strings.IndexByte(tmpl, '{')
		if open < 0 {
			b.WriteString(tmpl)
			return b.String(), nil
		}
		end := strings.IndexByte(tmpl[open:], '}')
		if end < 0 {
			return "", fmt.Errorf("unclosed { in %q", tmpl)
		}
		b.WriteString(tmpl[:open])
		name, width, _ := strings.Cut(tmpl[open+1:open+end], ":")
		switch name {
		case "base":
			b.WriteString(v.base)
		case "uid":
			if v.escapeUID {
				b.WriteString(ldap.EscapeFilter(v.uid))
			} else {
				b.WriteString(v.uid)
			}
		case "i", "g":
			n := v.i
			if name == "g" {
				n = v.g
			}
			if width != "" {
				if _, err := strconv.Atoi(width); err != nil {
					return "", fmt.Errorf("bad width in {%s:%s}", name, width)
				}
				fmt.Fprintf(&b, "%"+width+"d", n)
			} else {
				b.WriteString(strconv.Itoa(n))
			}
		default:
			return "", fmt.Errorf("unknown placeholder {%s} (want base, uid, i, g)", name)
		}
		tmpl = tmpl[open+end+1:]
	}
}
