package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"github.com/VictoriaMetrics/metrics"
	"io"
	"os"
	"strings"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/internal/config"
)

func runPremise(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("premise", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "agent config file, .toml or .yaml (optional; NC_* variables and flags override it)")
	var clouds, conns stringList
	fs.Var(&clouds, "cloud", "hub tunnel URL ws://HOST:8765/tunnel or wss://…; repeat for failover (env NC_CLOUD_URL)")
	agentID := fs.String("agent-id", "", "agent id, must match the token's sub (env NC_AGENT_ID)")
	tokenFile := fs.String("token-file", "", "file holding the JWT (env NC_TOKEN_FILE or NC_TOKEN)")
	fs.Var(&conns, "connector", "NAME=HOST:PORT target to serve; repeat (env NC_CONNECTORS)")
	caFile := fs.String("ca-file", "", "extra CA bundle for wss:// (env NC_CA_FILE)")
	level := fs.String("log-level", "", "debug, info, warn or error")
	metricsAddr := fs.String("metrics-listen", "", "serve the agent's /metrics on HOST:PORT (config metrics_listen)")
	tunnels := fs.Int("tunnels", 0, "tunnels to the hub, 1..16 (config tunnels, env NC_TUNNELS; default 2)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Flags override the environment, which overrides the file: flags are
	// fed through the same NC_* names so that one pass validates everything.
	over := map[string]string{}
	if len(clouds) > 0 {
		over["NC_CLOUD_URL"] = strings.Join(clouds, ",")
	}
	if *agentID != "" {
		over["NC_AGENT_ID"] = *agentID
	}
	if *tokenFile != "" {
		over["NC_TOKEN_FILE"] = *tokenFile
		over["NC_TOKEN"] = ""
	}
	if len(conns) > 0 {
		over["NC_CONNECTORS"] = strings.Join(conns, ",")
	}
	if *caFile != "" {
		over["NC_CA_FILE"] = *caFile
	}
	if *tunnels != 0 {
		over["NC_TUNNELS"] = fmt.Sprint(*tunnels)
	}
	getenv := func(k string) string {
		if v, ok := over[k]; ok {
			return v
		}
		return os.Getenv(k)
	}
	cfg, err := config.LoadAgentEnv(*path, getenv)
	if err != nil {
		return err
	}
	if *level != "" {
		cfg.Log.Level = *level
	}
	log, err := newLogger(stderr, cfg.Log.Level)
	if err != nil {
		return err
	}
	ac, err := agentConfig(cfg)
	if err != nil {
		return err
	}
	ac.Logger = log
	ac.Metrics = metrics.NewSet()
	a, err := agent.New(ac)
	if err != nil {
		return err
	}
	if *metricsAddr != "" {
		cfg.MetricsListen = *metricsAddr
	}
	if cfg.MetricsListen != "" {
		stop, err := serveMetrics(cfg.MetricsListen, ac.Metrics, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	return runAgent(ctx, a, cfg.ShutdownGrace.D(), log)
}

// runAgent runs a until ctx ends, then shuts it down within grace.
func runAgent(ctx context.Context, a *agent.Agent, grace time.Duration, log *slog.Logger) error {
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }() // agentRunLoop, joined below
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
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
		ReconnectMin: cfg.ReconnectMin.D(),
		ReconnectMax: cfg.ReconnectMax.D(),
		PingInterval: cfg.PingInterval.D(),
		PingTimeout:  cfg.PingTimeout.D(),
	}
	for _, c := range cfg.Connectors {
		ac.Connectors[c.Name] = c.Target
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
