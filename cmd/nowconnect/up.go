//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/ldapdemo"
)

const (
	// demoTarget as the TARGET of --forward starts the seeded demo directory.
	demoTarget = "demo"
	// probeTimeout bounds the start-up check that a target answers.
	probeTimeout = 2 * time.Second
)

// forward is one --forward LISTEN=TARGET.
type forward struct {
	name, listen, target string
	demo                 bool // target is the demo directory
}

// runUp runs a hub and an agent in one process with embedded defaults: no
// config file, no Redis, an internal token. For development and demos.
func runUp(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("up", "--forward LISTEN_ADDR=TARGET_ADDR [--forward …] [flags]", stderr)
	control := fs.String("control", "127.0.0.1:8765", "control port (health, metrics, /tunnel)")
	var fwds stringList
	fs.Var(&fwds, "forward", "LISTEN_ADDR=TARGET_ADDR: accept on LISTEN_ADDR, tunnel to TARGET_ADDR; repeat. TARGET \"demo\" starts a seeded demo LDAP directory (slapd) on a free loopback port")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	window := fs.Int("window", 256<<10, "per-stream credit window in bytes")
	loops := fs.Int("event-loops", 0, "hub event loops (0: one per CPU available)")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "on SIGTERM, how long streams in flight may take to finish")
	banner := fs.Bool("banner", isTerminal(stderr), "print a short human banner on stderr once serving: how to connect, the metrics URL, how to stop (default: when stderr is a terminal)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkLevel(*level); err != nil {
		return err
	}
	if err := checkAddr("--control", *control); err != nil {
		return err
	}
	if len(fwds) == 0 {
		return usagef("at least one --forward LISTEN_ADDR=TARGET_ADDR is required")
	}
	if *window <= 0 {
		return usagef("--window %d: must be greater than 0", *window)
	}
	if *loops < 0 {
		return usagef("--event-loops %d: must be 0 (one per CPU available) or more", *loops)
	}
	if *grace < 0 {
		return usagef("--shutdown-grace %v: must not be negative", *grace)
	}
	forwards, err := parseForwards(fwds)
	if err != nil {
		return err
	}
	// up has no configuration file to reload: SIGHUP (a terminal's hangup,
	// too) stops it gracefully, like SIGTERM, rather than killing it at
	// once or leaving a development server behind a closed terminal.
	hup, stopHUP := notifyHUP()
	defer stopHUP()
	ctx, stopUp := context.WithCancel(ctx)
	defer stopUp()
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}

	// The demo directory outlives the hub and the agent: its deferred Stop runs last.
	var demo *ldapdemo.Server
	for i := range forwards {
		if !forwards[i].demo {
			continue
		}
		if demo == nil {
			if demo, err = ldapdemo.Start(ctx, ldapdemo.Options{Users: demoUsers}); err != nil {
				if ctx.Err() != nil {
					return nil // interrupted while starting: nothing to serve, nothing wrong
				}
				return fmt.Errorf("--forward %s=%s: %w", forwards[i].listen, demoTarget, err)
			}
			defer demo.Stop()
			log.Info("demo_directory_started", "url", demo.URL(), "base_dn", ldapdemo.BaseDN, "users", demoUsers)
		}
		forwards[i].target = demo.Addr()
	}
	unreachable := probeTargets(ctx, forwards)
	for _, f := range forwards {
		if err := unreachable[f.name]; err != nil {
			log.Warn("target_unreachable", "listen", f.listen, "target", f.target, "err", err.Error())
		}
	}

	hc := hub.Config{Control: *control, Window: *window, EventLoops: *loops, Logger: log}
	targets := map[string]string{}
	for _, f := range forwards {
		hc.Listeners = append(hc.Listeners, hub.Listener{Name: f.name, Bind: f.listen, Connector: f.name})
		targets[f.name] = f.target
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
	if faultHooks != nil {
		defer faultHooks(h, log)()
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
	var hubFailed bool // read after wg.Wait
	wg.Add(1)
	go func() { // hubShutdownLoop, joined below
		defer wg.Done()
		select {
		case <-ctx.Done():
		case <-h.Done():
			hubFailed = true
			stopUp() // the agent goes too
			hubErr = stopFailedHub(h)
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), *grace)
		defer cancel()
		hubErr = h.Shutdown(sctx)
	}()
	if *banner {
		wg.Add(1)
		go func() { // bannerLoop, joined below: prints once the tunnel is up
			defer wg.Done()
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for !a.Connected() {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
			_, _ = io.WriteString(stderr, upBanner(*control, forwards, demo != nil, unreachable))
		}()
	}
	err = runAgent(ctx, a, *grace, log, hup, func() {
		log.Warn(evReloadUnsupported, "reason", errNoReload.Error())
		stopUp()
	})
	wg.Wait()
	if hubFailed || err == nil {
		return hubErr // a failed hub comes first: the agent's end is its consequence
	}
	return err
}

// parseForwards checks every --forward and names each listener fwdN.
func parseForwards(fwds []string) ([]forward, error) {
	var out []forward
	for i, f := range fwds {
		listen, target, ok := strings.Cut(f, "=")
		if !ok {
			return nil, usagef("--forward %q: want LISTEN_ADDR=TARGET_ADDR", f)
		}
		fw := forward{name: fmt.Sprintf("fwd%d", i+1), listen: listen, target: target, demo: target == demoTarget}
		addrs := []string{listen}
		if !fw.demo {
			addrs = append(addrs, target)
		}
		for _, a := range addrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return nil, usagef("--forward %q: %q is not HOST:PORT (TARGET may also be %q)", f, a, demoTarget)
			}
		}
		out = append(out, fw)
	}
	return out, nil
}

// probeTargets dials every target once, concurrently, and returns the errors of those
// that do not answer, by forward name: a warning, not a refusal (the target may come up
// later; each client's stream dials again).
func probeTargets(ctx context.Context, forwards []forward) map[string]error {
	errs := make(map[string]error)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, f := range forwards {
		wg.Add(1)
		go func() { // probeLoop, joined below
			defer wg.Done()
			d := net.Dialer{Timeout: probeTimeout}
			c, err := d.DialContext(ctx, "tcp", f.target)
			if err != nil {
				mu.Lock()
				errs[f.name] = err
				mu.Unlock()
				return
			}
			_ = c.Close()
		}()
	}
	wg.Wait()
	return errs
}

// clientAddr is the address a local client dials for a listen address: a wildcard or
// empty host becomes loopback.
func clientAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// upBanner is the human summary `up` prints once it serves.
func upBanner(control string, forwards []forward, demo bool, unreachable map[string]error) string {
	var b strings.Builder
	b.WriteString("\nnowconnect up: serving (hub and agent in one process)\n\n")
	try := forwards[0]
	for _, f := range forwards {
		if f.demo {
			try = f
			break
		}
	}
	if try.demo {
		fmt.Fprintf(&b, "  try:       ldapsearch -x -H ldap://%s -b %s '(objectClass=inetOrgPerson)' cn mail\n", clientAddr(try.listen), ldapdemo.BaseDN)
	} else {
		fmt.Fprintf(&b, "  try:       ldapsearch -x -H ldap://%s -s base -b '' namingContexts\n", clientAddr(try.listen))
	}
	for _, f := range forwards {
		to := f.target
		if f.demo {
			to = fmt.Sprintf("the demo directory ldap://%s (%s, users uid=user0000..user%04d, admin %s / %s)", f.target, ldapdemo.BaseDN, demoUsers-1, ldapdemo.AdminDN, ldapdemo.AdminPW)
		}
		fmt.Fprintf(&b, "  forward:   %s -> tunnel -> %s\n", f.listen, to)
		if err := unreachable[f.name]; err != nil {
			var ne net.Error
			why := err.Error()
			if errors.As(err, &ne) && ne.Timeout() {
				why = "no answer within " + probeTimeout.String()
			}
			fmt.Fprintf(&b, "  WARNING:   %s is unreachable (%s): clients will fail until it answers\n", f.target, why)
		}
	}
	fmt.Fprintf(&b, "  metrics:   http://%s/metrics   (also /healthz, /readyz)\n", clientAddr(control))
	b.WriteString("  elsewhere: --forward LISTEN=HOST:PORT   (make run FORWARD=HOST:PORT)\n")
	if demo {
		b.WriteString("  stop:      Ctrl-C (stops the demo directory too)\n\n")
	} else {
		b.WriteString("  stop:      Ctrl-C\n\n")
	}
	return b.String()
}
