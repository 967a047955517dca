//go:build linux

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/config"
)

func runCloud(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("cloud", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", os.Getenv("NC_CONFIG"), "hub config file, .toml or .yaml (env NC_CONFIG)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("no config: pass --config FILE or set NC_CONFIG")
	}
	cfg, err := config.LoadHub(*path)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.Log.Level)
	if err != nil {
		return err
	}
	if !cfg.Auth.HasKeySource() {
		return fmt.Errorf("%s: auth: no key source for agent tokens: set auth.jwt_secret_file, auth.public_key_files or auth.jwks_url", *path)
	}
	ver, err := auth.LoadVerifier(cfg.Auth.JWTSecretFile, cfg.Auth.PublicKeyFiles, cfg.Auth.JWKSURL,
		cfg.Auth.Audience, cfg.Auth.Issuer, cfg.Auth.Leeway.D())
	if err != nil {
		return err
	}
	if cfg.Auth.JWKSURL != "" {
		// Warm the key cache so the first agent is not verified against a cold JWKS.
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := ver.RefreshKeys(wctx); err != nil {
			log.Warn("jwks_fetch_failed", "err", err.Error())
		}
		cancel()
	}
	hc, err := hubConfig(cfg, ver, log)
	if err != nil {
		return err
	}
	return serveHub(ctx, hc, cfg.Timeouts.ShutdownGrace.D(), log)
}

// hubConfig turns the file's configuration into the hub's.
func hubConfig(cfg *config.Hub, v hub.TokenVerifier, log *slog.Logger) (hub.Config, error) {
	hc := hub.Config{
		Control:          cfg.Listen,
		Window:           cfg.Tunnel.StreamWindow,
		QueueDepth:       cfg.QueueDepthPerCID,
		PingInterval:     cfg.Tunnel.PingInterval.D(),
		PingTimeout:      cfg.Tunnel.PingTimeout.D(),
		HandshakeTimeout: cfg.Tunnel.HandshakeTimeout.D(),
		EventLoops:       cfg.Engine.EventLoops,
		ReadBufferBytes:  cfg.Engine.ReadBufferBytes,
		SocketRecvBuffer: cfg.Engine.SocketRecvBuffer,
		SocketSendBuffer: cfg.Engine.SocketSendBuffer,
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

// serveHub runs a hub until ctx ends, then stops it within grace.
func serveHub(ctx context.Context, hc hub.Config, grace time.Duration, log *slog.Logger) error {
	h, err := hub.New(hc)
	if err != nil {
		return err
	}
	if err := h.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down", "grace", grace.String())
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	return h.Shutdown(sctx)
}

var _ hub.TokenVerifier = (*auth.Verifier)(nil)
