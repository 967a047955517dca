//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/config"
	"github.com/nowconnect/nowconnect/internal/haregistry"
)

func runCloud(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("cloud", "--config FILE [--check-config] [--log-level LEVEL]", stderr)
	path := fs.String("config", os.Getenv("NC_CONFIG"), "hub config file, .toml or .yaml (env NC_CONFIG)")
	check := fs.Bool("check-config", false, "validate the configuration as a start would (files, keys, secrets) without binding anything, and exit: 0 \"configuration OK: FILE\", or 1 and every error")
	level := fs.String("log-level", "", "debug, info, warn or error (default: log.level of the config)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *level != "" {
		if err := checkLevel(*level); err != nil {
			return err
		}
	}
	if *path == "" {
		return usagef("no config: pass --config FILE or set NC_CONFIG")
	}
	// Before anything else: a SIGHUP while starting is a reload once
	// serving, never the default death.
	hup, stopHUP := notifyHUP()
	defer stopHUP()
	c, err := loadCloud(*path, *level, stderr, !*check)
	if *check {
		if err != nil {
			return fmt.Errorf("%w\nconfiguration invalid: %s", err, *path)
		}
		fmt.Fprintf(stderr, "configuration OK: %s\n", *path)
		return nil
	}
	if err != nil {
		return err
	}
	if c.jwks {
		// Warm the key cache so the first agent is not verified against a cold JWKS.
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := c.ver.RefreshKeys(wctx); err != nil {
			c.log.Warn("jwks_fetch_failed", "err", err.Error())
		}
		cancel()
	}
	if c.ha != nil {
		defer c.ha.close()
		c.ha.clearOwn(c.log)
	}
	r := &cloudReloader{path: *path, level: *level, c: c, met: newReloadMetrics(c.hub.Metrics())}
	if r.auth, err = authFingerprint(c.cfg.Auth); err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	var started func() error
	if c.ha != nil {
		started = c.ha.start
	}
	return bindAt(*path, c.cfg, serveHub(ctx, c.hub, c.grace, c.log, hup, r.reload, started))
}

// bindAt positions a bind error at the key of the config file at path that
// set the address ("cloud.toml:12:8: listeners[1].bind: listener l2 (bind
// …): … address already in use"); other errors pass unchanged.
func bindAt(path string, cfg *config.Hub, err error) error {
	be := (*hub.BindError)(nil)
	if !errors.As(err, &be) {
		return err
	}
	key := "listen"
	if be.Listener != "" {
		for i, l := range cfg.Listeners {
			if l.Name == be.Listener {
				key = fmt.Sprintf("listeners[%d].bind", i)
			}
		}
	}
	return config.At(path, key, err.Error())
}

// cloudSetup is a hub ready to start.
type cloudSetup struct {
	hub   *hub.Hub
	ver   *auth.Verifier
	jwks  bool // ver fetches keys from a JWKS URL
	grace time.Duration
	log   *slog.Logger
	lv    *slog.LevelVar // log's level (a reload sets it)
	cfg   *config.Hub    // as loaded
	ha    *haSetup       // nil in HA mode off
}

// loadCloud reads and checks everything a hub start needs (the config, its files, the
// key material, the hub's own checks) and builds the hub without binding anything: the
// path of both a start and --check-config, so the check cannot pass what a start
// refuses. level, when set, overrides log.level. With open, the HA registry
// is set up too (a start); without, it is only checked (--check-config
// connects to nothing).
func loadCloud(path, level string, stderr io.Writer, open bool) (*cloudSetup, error) {
	cfg, err := config.LoadHub(path)
	if err != nil {
		return nil, err
	}
	if level != "" {
		cfg.Log.Level = level
	}
	log, lv, err := newLevelLogger(stderr, cfg.Log.Level)
	if err != nil {
		return nil, err
	}
	hc, ver, err := checkCloud(path, cfg, log)
	if err != nil {
		return nil, err
	}
	hc.Metrics = metrics.NewSet()
	var ha *haSetup
	if open {
		if ha, err = openHA(cfg, hc.Metrics, log); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if ha != nil {
			hc.HA = ha.hubConfig(cfg)
			meshHubConfig(&hc, cfg, ha.mgr)
		}
	} else {
		hc.HA = checkedHA(cfg)
	}
	h, err := hub.New(hc)
	if err != nil {
		if ha != nil {
			ha.close()
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if ha != nil {
		ha.attach(h)
	}
	return &cloudSetup{hub: h, ver: ver, jwks: cfg.Auth.JWKSURL != "", grace: cfg.Timeouts.ShutdownGrace.D(),
		log: log, lv: lv, cfg: cfg, ha: ha}, nil
}

// checkCloud checks what a hub needs of cfg (read from path) beyond the
// file itself: a key source and the keys, the listeners' allowlists, HA;
// it returns the hub's config (no metrics, no HA) and the verifier.
func checkCloud(path string, cfg *config.Hub, log *slog.Logger) (hub.Config, *auth.Verifier, error) {
	if !cfg.Auth.HasKeySource() {
		return hub.Config{}, nil, fmt.Errorf("%s: auth: no key source for agent tokens: set auth.jwt_secret_file, auth.public_key_files or auth.jwks_url", path)
	}
	ver, err := auth.LoadVerifier(cfg.Auth.JWTSecretFile, cfg.Auth.PublicKeyFiles, cfg.Auth.JWKSURL,
		cfg.Auth.Audience, cfg.Auth.Issuer, cfg.Auth.Leeway.D())
	if err != nil {
		return hub.Config{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	hc, err := hubConfig(cfg, ver, log)
	if err != nil {
		return hub.Config{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := checkHA(cfg); err != nil {
		return hub.Config{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	return hc, ver, nil
}

// checkedHA is the HA config of a hub built only to be checked (nil in
// mode off): a registry that is never asked stands in, so the rest of the
// HA config is validated without connecting to anything.
func checkedHA(cfg *config.Hub) *hub.HAConfig {
	mode, _ := haMode(cfg)
	if mode == hub.ModeOff {
		return nil
	}
	return &hub.HAConfig{Mode: mode, ReplicaID: cfg.HA.ReplicaID, Registry: haregistry.Adapt(nil)}
}

// hubConfig turns the file's configuration into the hub's.
func hubConfig(cfg *config.Hub, v hub.TokenVerifier, log *slog.Logger) (hub.Config, error) {
	hc := hub.Config{
		Control:          cfg.Listen,
		Window:           cfg.Tunnel.StreamWindow,
		MaxWindow:        cfg.Tunnel.MaxStreamWindow,
		TunnelWindow:     cfg.Tunnel.TunnelWindow,
		MaxFramePayload:  cfg.Tunnel.MaxFramePayload,
		QueueDepth:       cfg.QueueDepthPerCID,
		PingInterval:     cfg.Tunnel.PingInterval.D(),
		PingTimeout:      cfg.Tunnel.PingTimeout.D(),
		HandshakeTimeout: cfg.Tunnel.HandshakeTimeout.D(),
		OpenTimeout:      cfg.Timeouts.Open.D(),
		EventLoops:       cfg.Engine.EventLoops,
		ReadBufferBytes:  cfg.Engine.ReadBufferBytes,
		SocketRecvBuffer: cfg.Engine.SocketRecvBuffer,
		SocketSendBuffer: cfg.Engine.SocketSendBuffer,
		MaxConnections:   cfg.Engine.MaxConnections,
		IdleTimeout:      cfg.Timeouts.Idle.D(),
		RequestTimeout:   cfg.Timeouts.HTTPRequest.D(),
		Verifier:         v,
		Logger:           log,
		MaskClientAddr:   cfg.Log.MaskClientAddr,
	}
	if cfg.PDP.URL != "" {
		hc.PDP = &hub.PDPConfig{
			URL:       cfg.PDP.URL,
			Timeout:   cfg.PDP.Timeout.D(),
			CacheTTL:  cfg.PDP.CacheTTL.D(),
			CacheSize: cfg.PDP.CacheSize,
			FailOpen:  cfg.PDP.FailOpen,
		}
	}
	for _, l := range cfg.Listeners {
		allow, err := config.ParseCIDRs(l.EffectiveAllowCIDRs(cfg))
		if err != nil {
			return hc, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		hc.Listeners = append(hc.Listeners, hub.Listener{Name: l.Name, Bind: l.Bind, Connector: l.Connector, Allow: allow, PDP: l.UsePDP(cfg)})
	}
	return hc, nil
}

// serveHub starts h and runs it until ctx ends, then stops it within
// grace. Every signal on hup runs reload (on this goroutine: reloads are
// serialised).
func serveHub(ctx context.Context, h *hub.Hub, grace time.Duration, log *slog.Logger, hup <-chan os.Signal, reload func(), started func() error) error {
	if err := h.Start(); err != nil {
		return err
	}
	if faultHooks != nil {
		defer faultHooks(h, log)()
	}
	if started != nil {
		if err := started(); err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = h.Stop(sctx)
			return err
		}
	}
serve:
	for {
		select {
		case <-ctx.Done():
			break serve
		case <-hup:
			reload()
		case <-h.Done():
			return stopFailedHub(h)
		}
	}
	log.Info("shutting down", "grace", grace.String())
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	return h.Shutdown(sctx)
}

// stopFailedHub stops h, whose engine failed (Done is closed), within 5 s
// and returns why. Never alive and deaf: the caller exits non-zero, so that
// a supervisor restarts the process.
func stopFailedHub(h *hub.Hub) error {
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = h.Stop(sctx)
	return fmt.Errorf("hub failed: %w", h.Err())
}

// faultHooks arms fault injection on a started hub and returns what disarms
// it. Only test builds set it (fault.go, tag nowconnect_faults): nil in the
// binary that ships, which then behaves as if it did not exist.
var faultHooks func(h *hub.Hub, log *slog.Logger) (stop func())

var _ hub.TokenVerifier = (*auth.Verifier)(nil)
