//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/auth"
)

// runUp runs a hub and an agent in one process with embedded defaults: no
// config file, no Redis, an internal token. For development and demos.
func runUp(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	control := fs.String("control", "127.0.0.1:8765", "control port (health, metrics, /tunnel)")
	var fwds stringList
	fs.Var(&fwds, "forward", "LISTEN_ADDR=TARGET_ADDR: accept on LISTEN_ADDR, tunnel to TARGET_ADDR; repeat")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	window := fs.Int("window", 256<<10, "per-stream credit window in bytes")
	loops := fs.Int("event-loops", 0, "hub event loops (0: one per CPU)")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "on SIGTERM, how long streams in flight may take to finish")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(fwds) == 0 {
		return fmt.Errorf("at least one --forward LISTEN_ADDR=TARGET_ADDR is required")
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	hc := hub.Config{Control: *control, Window: *window, EventLoops: *loops, Logger: log}
	targets := map[string]string{}
	for i, f := range fwds {
		listen, target, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("--forward %q: want LISTEN_ADDR=TARGET_ADDR", f)
		}
		for _, a := range []string{listen, target} {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return fmt.Errorf("--forward %q: %w", f, err)
			}
		}
		name := fmt.Sprintf("fwd%d", i+1)
		hc.Listeners = append(hc.Listeners, hub.Listener{Name: name, Bind: listen, Connector: name})
		targets[name] = target
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	ver, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: secret, Audience: "nowconnect"})
	if err != nil {
		return err
	}
	hc.Verifier = ver
	tok, err := auth.Mint(secret, "local-agent", nil, 0, "")
	if err != nil {
		return err
	}
	h, err := hub.New(hc)
	if err != nil {
		return err
	}
	if err := h.Start(); err != nil {
		return err
	}
	a, err := agent.New(agent.Config{
		URLs:       []string{"ws://" + *control + "/tunnel"},
		AgentID:    "local-agent",
		Token:      tok,
		Connectors: targets,
		Window:     *window,
		Logger:     log,
	})
	if err != nil {
		_ = h.Stop(context.Background())
		return err
	}
	// On a signal both sides drain together: the hub refuses new clients,
	// the agent refuses new streams, and both wait for the streams in flight.
	var wg sync.WaitGroup
	var hubErr error
	wg.Add(1)
	go func() { // hubShutdownLoop, joined below
		defer wg.Done()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), *grace)
		defer cancel()
		hubErr = h.Shutdown(sctx)
	}()
	err = runAgent(ctx, a, *grace, log)
	wg.Wait()
	if err != nil {
		return err
	}
	return hubErr
}
