package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/internal/config"
)

func runPremise(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("premise", "--cloud URL --agent-id ID --token-file FILE --connector NAME=HOST:PORT [flags]", stderr)
	path := fs.String("config", "", "agent config file, .toml or .yaml (optional; NC_* variables and flags override it)")
	var clouds, conns stringList
	fs.Var(&clouds, "cloud", "hub tunnel URL ws://HOST:8765/tunnel or wss://…; repeat for failover (env NC_CLOUD_URL)")
	agentID := fs.String("agent-id", "", "agent id, must match the token's sub (env NC_AGENT_ID)")
	tokenFile := fs.String("token-file", "", "file holding the JWT (env NC_TOKEN_FILE or NC_TOKEN)")
	fs.Var(&conns, "connector", "NAME=HOST:PORT target to serve; repeat (env NC_CONNECTORS)")
	caFile := fs.String("ca-file", "", "extra CA bundle for wss:// (env NC_CA_FILE)")
	level := fs.String("log-level", "", "debug, info, warn or error (default: log.level of the config, info)")
	metricsAddr := fs.String("metrics-listen", "", "serve the agent's /metrics on HOST:PORT (config metrics_listen)")
	tunnels := fs.Int("tunnels", 0, "tunnels to the hub, 1..16 (config tunnels, env NC_TUNNELS; default 2)")
	check := fs.Bool("check-config", false, "validate the configuration (config file, environment, flags, token and CA files) without connecting, and exit: 0 \"configuration OK\", or 1 and every error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *level != "" {
		if err := checkLevel(*level); err != nil {
			return err
		}
	}
	if *metricsAddr != "" {
		if err := checkAddr("--metrics-listen", *metricsAddr); err != nil {
			return err
		}
	}
	// Flags override the environment, which overrides the file: flags are
	// fed through the same NC_* names so that one pass validates everything,
	// and an error about a value given as a flag is then blamed on the flag.
	over := map[string]string{}
	blame := map[string]string{} // NC_* variable or config key → the flag that set it
	feed := func(flagName, env, key, v string) {
		over[env] = v
		blame[env], blame[key] = flagName, flagName
	}
	if len(clouds) > 0 {
		feed("--cloud", "NC_CLOUD_URL", "cloud_urls", strings.Join(clouds, ","))
	}
	if *agentID != "" {
		feed("--agent-id", "NC_AGENT_ID", "agent_id", *agentID)
	}
	if *tokenFile != "" {
		feed("--token-file", "NC_TOKEN_FILE", "token_file", *tokenFile)
		over["NC_TOKEN"] = ""
	}
	if len(conns) > 0 {
		feed("--connector", "NC_CONNECTORS", "connectors", strings.Join(conns, ","))
	}
	if *caFile != "" {
		feed("--ca-file", "NC_CA_FILE", "ca_file", *caFile)
	}
	if *tunnels != 0 {
		feed("--tunnels", "NC_TUNNELS", "tunnels", fmt.Sprint(*tunnels))
	}
	getenv := func(k string) string {
		if v, ok := over[k]; ok {
			return v
		}
		return os.Getenv(k)
	}
	what := *path
	if what == "" {
		what = "flags and environment"
	}
	// Before anything else: a SIGHUP while starting is a reload once
	// running, never the default death.
	hup, stopHUP := notifyHUP()
	defer stopHUP()
	a, cfg, log, err := loadPremise(*path, getenv, blame, *level, *metricsAddr, stderr)
	if *check {
		if err != nil {
			return checkFailed(err, what)
		}
		fmt.Fprintf(stderr, "configuration OK: %s\n", what)
		return nil
	}
	if err != nil {
		return err
	}
	r := &premiseReloader{what: what, path: *path, getenv: getenv, blame: blame, level: *level,
		metricsAddr: *metricsAddr, a: a, cfg: cfg, log: log, met: newReloadMetrics(a.metrics)}
	if cfg.MetricsListen != "" {
		stop, err := serveMetrics(cfg.MetricsListen, a.metrics, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	return runAgent(ctx, a.agent, cfg.ShutdownGrace.D(), log, hup, r.reload)
}

// premiseSetup is an agent ready to run.
type premiseSetup struct {
	agent   *agent.Agent
	metrics *metrics.Set
	lv      *slog.LevelVar // the logger's level (a reload sets it)
}

// loadPremise reads and checks everything an agent start needs (config file,
// environment, flags, token and CA files) and builds the agent without connecting: the
// path of both a start and --check-config. Errors about values that came from a flag
// name the flag (blame maps NC_* names and config keys to flags); without a config
// file, a missing required setting names its flag too. Such errors are usage errors.
func loadPremise(path string, getenv func(string) string, blame map[string]string, level, metricsAddr string, stderr io.Writer) (*premiseSetup, *config.Agent, *slog.Logger, error) {
	cfg, err := readPremise(path, getenv, blame, level, metricsAddr)
	if err != nil {
		return nil, nil, nil, err
	}
	log, lv, err := newLevelLogger(stderr, cfg.Log.Level)
	if err != nil {
		return nil, nil, nil, err
	}
	ac, err := agentConfig(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	ac.Logger = log
	ac.Metrics = metrics.NewSet()
	a, err := agent.New(ac)
	if err != nil {
		return nil, nil, nil, err
	}
	return &premiseSetup{agent: a, metrics: ac.Metrics, lv: lv}, cfg, log, nil
}

// readPremise reads the config file, the environment (getenv) and the
// flags given (level, metricsAddr, and the NC_* values getenv carries) into
// one checked configuration.
func readPremise(path string, getenv func(string) string, blame map[string]string, level, metricsAddr string) (*config.Agent, error) {
	cfg, err := config.LoadAgentEnv(path, getenv)
	if err != nil {
		return nil, blameFlags(err, blame, path == "")
	}
	if level != "" {
		cfg.Log.Level = level
	}
	if metricsAddr != "" {
		cfg.MetricsListen = metricsAddr
	}
	return cfg, nil
}

// premiseFlags are the flags that stand for config keys, for errors about a missing
// setting when there is no config file.
var premiseFlags = map[string]string{
	"cloud_urls": "--cloud", "agent_id": "--agent-id", "token_file": "--token-file",
	"connectors": "--connector", "ca_file": "--ca-file",
}

// envKeys maps the NC_* variables to the config keys they set.
var envKeys = map[string]string{
	"NC_CLOUD_URL": "cloud_urls", "NC_AGENT_ID": "agent_id", "NC_TOKEN": "token_file", "NC_TOKEN_FILE": "token_file",
	"NC_CONNECTORS": "connectors", "NC_CA_FILE": "ca_file", "NC_DIAL_TIMEOUT": "dial_timeout",
}

// blameFlags rewrites the keys of config errors about flag values to the flag, dropping
// the file position (the file's value was overridden). The result is a usage error when
// any error names a flag.
func blameFlags(err error, blame map[string]string, noFile bool) error {
	var errs config.Errors
	if !errors.As(err, &errs) {
		return err
	}
	var out config.Errors
	reported := map[string]bool{} // config keys with an error already
	flagErr := false
	for _, e := range errs {
		root := e.Key
		if i := strings.IndexAny(root, ".["); i >= 0 {
			root = root[:i]
		}
		key := root
		if k, ok := envKeys[root]; ok {
			key = k
		}
		if reported[key] && strings.HasPrefix(e.Msg, "required") {
			continue // a bad value was not applied: "required" would say it again
		}
		reported[key] = true
		f, ok := blame[root]
		if !ok && noFile {
			f, ok = premiseFlags[root]
		}
		if ok {
			e.Key, e.File, e.Line, e.Column = f, "", 0, 0
			flagErr = true
		}
		out = append(out, e)
	}
	if flagErr {
		return &usageError{err: out}
	}
	return out
}

// checkFailed words a failed --check-config, keeping a usage error one.
func checkFailed(err error, what string) error {
	wrapped := fmt.Errorf("%w\nconfiguration invalid: %s", err, what)
	var ue *usageError
	if errors.As(err, &ue) {
		return &usageError{err: wrapped}
	}
	return wrapped
}

// runAgent runs a until ctx ends, then shuts it down within grace. Every
// signal on hup runs reload (on this goroutine: reloads are serialised).
func runAgent(ctx context.Context, a *agent.Agent, grace time.Duration, log *slog.Logger, hup <-chan os.Signal, reload func()) error {
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }() // agentRunLoop, joined below
wait:
	for {
		select {
		case err := <-done:
			return err
		case <-hup:
			reload()
		case <-ctx.Done():
			break wait
		}
	}
	log.Info("shutting down", "grace", grace.String())
	sctx, scancel := context.WithTimeout(context.Background(), grace)
	defer scancel()
	if err := a.Shutdown(sctx); err != nil {
		log.Warn("grace period over", "err", err.Error())
	}
	cancel()
	return <-done
}

// serveMetrics serves the agent's metrics on addr until stop is called.
func serveMetrics(addr string, set *metrics.Set, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		set.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // metricsServeLoop
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Error("metrics server", "err", err.Error())
		}
	}()
	log.Info("metrics_started", "listen", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		wg.Wait()
	}, nil
}

// agentConfig turns the file's configuration into the agent's.
func agentConfig(cfg *config.Agent) (agent.Config, error) {
	ac := agent.Config{
		URLs:         cfg.CloudURLs,
		AgentID:      cfg.AgentID,
		Token:        cfg.Token,
		Connectors:   make(map[string]string, len(cfg.Connectors)),
		DialTimeout:  cfg.DialTimeout.D(),
		Window:       cfg.StreamWindow,
		MaxWindow:    cfg.MaxStreamWindow,
		TunnelWindow: cfg.TunnelWindow,
		Tunnels:      cfg.Tunnels,

		TargetSendBuffer: cfg.TargetSendBuffer,
		ReconnectMin:     cfg.ReconnectMin.D(),
		ReconnectMax:     cfg.ReconnectMax.D(),
		PingInterval:     cfg.PingInterval.D(),
		PingTimeout:      cfg.PingTimeout.D(),

		MaskClientAddr: cfg.Log.MaskClientAddr,
	}
	if f := cfg.TokenFile; f != "" {
		// Read again before every connection attempt: a token rotated in
		// place is used without a restart. NC_TOKEN stays as it was.
		ac.TokenSource = func() (string, error) { return config.ReadTokenFile(f) }
	}
	for _, c := range cfg.Connectors {
		ac.Connectors[c.Name] = c.Target
		if c.ProxyProtocol != "" {
			if ac.ProxyProtocol == nil {
				ac.ProxyProtocol = map[string]string{}
			}
			ac.ProxyProtocol[c.Name] = c.ProxyProtocol
		}
	}
	if cfg.CAFile != "" || cfg.InsecureSkipVerify {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return ac, fmt.Errorf("ca_file: %w", err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return ac, fmt.Errorf("ca_file %s: no PEM certificates", cfg.CAFile)
			}
			tc.RootCAs = pool
		}
		ac.TLSConfig = tc
	}
	return ac, nil
}
