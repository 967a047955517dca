package check

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/nowconnect/nowconnect/internal/resp"
)

// redisCheck speaks RESP: AUTH (when a password is set), PING, and ROLE, reported;
// with registry, also what NowConnect's HA registry needs of the user (registryProbe).
type redisCheck struct {
	network, addr string // "tcp" host:port, or "unix" socket path
	useTLS        bool
	tls           *tls.Config
	user, pw      string
	registry      bool
}

func parseRedis(f *fields) prober {
	c := &redisCheck{network: "tcp"}
	if sock := f.str("socket"); sock != "" {
		c.network, c.addr = "unix", sock
		for _, k := range []string{"host", "port"} {
			if f.has(k) {
				f.errf(k, "set socket or host and port, not both")
			}
		}
	} else {
		host := f.need("host")
		c.addr = hostPort(host, f.port("port", 6379))
	}
	c.useTLS = f.boolean("tls", false)
	host, _, _ := net.SplitHostPort(c.addr)
	c.tls = f.tlsConfig(host, true)
	c.user = f.str("username")
	c.pw = f.password("password")
	c.registry = f.boolean("registry", false)
	if c.user != "" && c.pw == "" {
		f.errf("username", "username needs password or password_file")
	}
	return c
}

func (c *redisCheck) name() string { return "redis " + c.addr }

func (c *redisCheck) run(ctx context.Context, r *report) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, c.network, c.addr)
	if err != nil {
		r.crit("connect: %s", r.failed(ctx, err))
		return
	}
	defer raw.Close()
	defer guard(ctx, raw)()
	conn := raw
	if c.useTLS {
		tc := tls.Client(raw, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			r.crit("TLS: %s", r.failed(ctx, err))
			return
		}
		conn = tc
	}
	rc := &respConn{w: conn, r: bufio.NewReader(conn)}
	if c.pw != "" {
		args := []string{"AUTH", c.pw}
		if c.user != "" {
			args = []string{"AUTH", c.user, c.pw}
		}
		v, err := rc.call(args...)
		if !c.answered(ctx, r, "AUTH", v, err) {
			return
		}
	}
	v, err := rc.call("PING")
	if !c.answered(ctx, r, "PING", v, err) {
		return
	}
	if s, _ := v.(string); s != "PONG" {
		r.crit("PING answered %q, want PONG", fmt.Sprint(v))
		return
	}
	v, err = rc.call("ROLE")
	var role string
	switch e, isErr := v.(resp.ErrorReply); {
	case err != nil:
		r.crit("ROLE: %s", r.failed(ctx, err))
		return
	case isErr:
		role = fmt.Sprintf("ROLE refused (%s)", string(e))
	default:
		role = describeRole(v)
	}
	if !c.registry {
		r.ok("PONG; %s", role)
		return
	}
	data, channel, err := registryProbe(rc)
	switch {
	case err != nil:
		r.crit("PONG; %s; registry probe: %s", role, r.failed(ctx, err))
	case data != "":
		r.crit("PONG; %s; the HA registry cannot work as this user: %s (see the README's ACL line)", role, data)
	case channel != "":
		r.warn("PONG; %s; registry keys and scripts allowed, but %s: hubs learn of agents moving between them only at their registry reads (grant &nc:claims and +@pubsub)", role, channel)
	default:
		r.ok("PONG; %s; registry: keys nc:*, scripts with TIME and the channel nc:claims allowed", role)
	}
}

// registryProbe tries, as the check's user, what the HA registry (mesh/registry.go)
// does, leaving its data alone: a script that calls TIME, a write, read and delete of
// a probe key under nc:, and SUBSCRIBE to nc:claims (the channel of ownership moves),
// then UNSUBSCRIBE. It returns what was refused: data (scripts, keys: the registry
// cannot work) and channel (moves are not announced), "" when allowed.
func registryProbe(rc *respConn) (data, channel string, err error) {
	const probeKey = "nc:{check}:probe"
	var refused []string
	for _, cmd := range [][]string{
		{"EVAL", "return redis.call('TIME')[1]", "0"},
		{"SET", probeKey, "1", "PX", "10000"},
		{"GET", probeKey},
		{"DEL", probeKey},
	} {
		v, err := rc.call(cmd...)
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", cmd[0], err)
		}
		if e, isErr := v.(resp.ErrorReply); isErr {
			refused = append(refused, fmt.Sprintf("%s refused (%s)", cmd[0], string(e)))
		}
	}
	v, err := rc.call("SUBSCRIBE", "nc:claims")
	if err != nil {
		return "", "", fmt.Errorf("SUBSCRIBE: %w", err)
	}
	if e, isErr := v.(resp.ErrorReply); isErr {
		channel = fmt.Sprintf("SUBSCRIBE nc:claims refused (%s)", string(e))
	} else if _, err := rc.call("UNSUBSCRIBE", "nc:claims"); err != nil {
		return "", "", fmt.Errorf("UNSUBSCRIBE: %w", err)
	}
	return strings.Join(refused, "; "), channel, nil
}

// answered reports whether a command got a non-error answer, recording why not.
func (c *redisCheck) answered(ctx context.Context, r *report, cmd string, v any, err error) bool {
	var nr notRedis
	switch e, isErr := v.(resp.ErrorReply); {
	case errors.As(err, &nr):
		r.crit("not Redis: to %s the server answered %s", cmd, quoteStart([]byte(nr)))
	case err != nil:
		r.crit("%s: %s", cmd, r.failed(ctx, err))
	case isErr && strings.HasPrefix(string(e), "NOAUTH"):
		r.crit("%s: %s (set password or password_file)", cmd, string(e))
	case isErr:
		r.crit("%s refused: %s", cmd, string(e))
	default:
		return true
	}
	return false
}

// describeRole renders a ROLE answer: "role master, 2 replicas" or "role slave of h:p (connected)".
func describeRole(v any) string {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return "role unknown"
	}
	role, _ := a[0].(string)
	switch {
	case role == "master" && len(a) >= 3:
		reps, _ := a[2].([]any)
		return fmt.Sprintf("role master, %d replicas", len(reps))
	case role == "slave" && len(a) >= 4:
		port, _ := a[2].(int64)
		state, _ := a[3].(string)
		host, _ := a[1].(string)
		return fmt.Sprintf("role replica of %s (%s)", net.JoinHostPort(host, strconv.FormatInt(port, 10)), state)
	}
	return "role " + role
}

// respLimits bound a RESP answer read by the check: ROLE is the largest it asks for.
var respLimits = resp.Limits{MaxBulk: 1 << 20, MaxArray: 1024, MaxDepth: 4}

// notRedis holds the first bytes of an answer that is not RESP.
type notRedis string

func (n notRedis) Error() string { return "not a RESP answer" }

// respConn is a RESP connection for one command at a time.
type respConn struct {
	w io.Writer
	r *bufio.Reader
}

// call sends a command and reads one answer: a string, an int64, nil, []any, or a
// resp.ErrorReply; notRedis when the answer does not start like RESP.
func (c *respConn) call(args ...string) (any, error) {
	if _, err := c.w.Write(resp.AppendCommand(nil, args...)); err != nil {
		return nil, err
	}
	first, err := c.r.Peek(1)
	if err != nil {
		return nil, err
	}
	if !resp.IsType(first[0]) {
		peek, _ := c.r.Peek(min(c.r.Buffered(), 32))
		return nil, notRedis(peek)
	}
	return resp.Read(c.r, respLimits)
}
