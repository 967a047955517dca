package mesh

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// RedisConfig configures the Redis registry.
type RedisConfig struct {
	Config
	// URL of the Redis server: redis://[user:password@]host:port[/db],
	// rediss://… (TLS) or unix:///path/to/socket[?db=N]. Required. Query parameters
	// of rueidis.ParseURL that are honoured: db, addr (more seed addresses, e.g. of a
	// cluster), skip_verify, protocol=2, client_name, master_set (sentinel),
	// dial_timeout and write_timeout (override the OpTimeout-based defaults below).
	// Any other parameter is an error.
	URL string
	// HealthInterval is the period of the health PING. Default 1s.
	HealthInterval time.Duration
}

// urlParams are the query parameters RedisConfig.URL may carry.
var urlParams = []string{"db", "addr", "skip_verify", "protocol", "client_name", "master_set", "dial_timeout", "write_timeout"}

// Backoff of the first connection (rueidis.NewClient fails while Redis is down).
const (
	connectBackoffMin = 50 * time.Millisecond
	// the maximum is HealthInterval, so a Redis that comes up is used within it
)

// Redis is the Registry on a Redis server (or cluster) via rueidis.
//
// Health. A goroutine, healthLoop, owns the client. It creates it (rueidis.NewClient
// fails while it cannot connect: NewRedis does not fail, it returns an unhealthy
// registry and healthLoop retries with a capped, jittered backoff, 50ms doubling up to
// HealthInterval), then PINGs every HealthInterval with a deadline of
// min(OpTimeout, HealthInterval). One failed PING marks the registry unhealthy, one
// successful PING healthy again: a PING to a working Redis takes well under a
// millisecond, so missing a deadline of a second means our operations, bounded by the
// same OpTimeout, are failing too, and a second strike would only keep readiness
// green for another interval while claims fail. With the defaults a hung Redis
// (SIGSTOP) is detected within HealthInterval + OpTimeout = 2s and a recovered one
// within HealthInterval = 1s. While unhealthy, operations fail at once with
// ErrUnavailable instead of each waiting OpTimeout. Transitions are logged
// (registry_degraded with the reason, registry_recovered) and set
// nowconnect_registry_up.
//
// rueidis settings, set explicitly:
//   - Dialer.Timeout = OpTimeout (unless the URL sets dial_timeout): bounds connect plus
//     HELLO; a stopped server accepts TCP connections into its backlog but never
//     answers HELLO, and rueidis' default is 5s.
//   - ConnWriteTimeout = OpTimeout (unless write_timeout): rueidis closes a pipelined
//     connection whose background PING gets no answer within it and bounds writes to
//     a full socket; its default is 10s (10 × the 1s keep-alive).
//   - DisableRetry = false: rueidis retries commands marked retryable (reads, and all
//     our scripts but release, which are idempotent or, for claim, safe to repeat)
//     after a connection error, within the op's deadline only; that carries an op over
//     a connection Redis closed when it restarted. A hung server is not retried: the
//     deadline has passed when the first attempt fails. Measured against a SIGSTOPped
//     redis-server: a GET whose context allowed 30s kept retrying (reconnect, HELLO,
//     time out) for the full 30s, with ConnWriteTimeout 1s as with the default, which
//     is why every op carries OpTimeout; and rueidis.NewClient blocked for
//     Dialer.Timeout (5.0s with the default, 1.0s with ours).
//   - DisableCache = true: no client-side caching is used, and without it RESP2
//     servers and proxies work too.
//   - ClientName = "nowconnect:<replica>" (unless client_name), for CLIENT LIST.
type Redis struct {
	// set at construction
	cfg      RedisConfig
	opt      rueidis.ClientOption
	addr     string // InitAddress, for logs (the URL may hold a password)
	m        *registryMetrics
	ownerTTL string // OwnerTTL in ms
	hubTTL   string // HubTTL in ms
	prefix   string // "<replica>|", the start of this replica's owner entries

	client  atomic.Pointer[clientRef] // stored by healthLoop once connected
	healthy atomic.Bool               // written by healthLoop
	closed  atomic.Bool
	upMu    sync.Mutex
	upCtx   context.Context    // guarded by upMu: lives while healthy; Watch ends with it
	upEnd   context.CancelFunc // guarded by upMu

	// owned by healthLoop
	state     healthState
	downSince time.Time

	life      context.Context // healthLoop's lifetime: Close ends it, and Watch with it
	cancel    context.CancelFunc
	done      chan struct{} // closed when healthLoop has returned
	closeOnce sync.Once
}

type clientRef struct{ c rueidis.Client }

type healthState int8

const (
	stateUnknown healthState = iota // not checked yet
	stateUp
	stateDown
)

var _ Registry = (*Redis)(nil)

// NewRedis returns a Redis registry and starts its healthLoop. It fails only on a bad
// config; it neither fails nor blocks when Redis is down: the registry then reports
// unhealthy until healthLoop connects. Close it to stop the loop.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	c, err := cfg.Config.withDefaults("RedisConfig")
	if err != nil {
		return nil, err
	}
	cfg.Config = c
	switch {
	case cfg.HealthInterval == 0:
		cfg.HealthInterval = DefaultHealthInterval
	case cfg.HealthInterval < time.Millisecond:
		return nil, fmt.Errorf("%w: RedisConfig.HealthInterval is %v, must be at least 1ms (0 for the default %v)", ErrInvalidConfig, cfg.HealthInterval, DefaultHealthInterval)
	}
	opt, err := parseRedisURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if opt.Dialer.Timeout == 0 {
		opt.Dialer.Timeout = c.OpTimeout
	}
	if opt.ConnWriteTimeout == 0 {
		opt.ConnWriteTimeout = c.OpTimeout
	}
	opt.DisableRetry = false
	opt.DisableCache = true
	if opt.ClientName == "" {
		opt.ClientName = "nowconnect:" + c.ReplicaID
	}
	ctx, cancel := context.WithCancel(context.Background()) // the loop's lifetime; every call under it has a deadline
	r := &Redis{
		cfg:      cfg,
		opt:      opt,
		addr:     strings.Join(opt.InitAddress, ","),
		m:        newRegistryMetrics(c.Metrics),
		ownerTTL: strconv.FormatInt(c.OwnerTTL.Milliseconds(), 10),
		hubTTL:   strconv.FormatInt(c.HubTTL.Milliseconds(), 10),
		prefix:   c.ReplicaID + "|",
		life:     ctx,
		cancel:   cancel,
		done:     make(chan struct{}),
	}
	r.m.setUp(false)
	go r.healthLoop(ctx)
	return r, nil
}

// parseRedisURL parses a Redis URL with rueidis.ParseURL, refusing query parameters it
// does not honour. Errors never quote the URL: it may hold a password.
func parseRedisURL(raw string) (rueidis.ClientOption, error) {
	if raw == "" {
		return rueidis.ClientOption{}, fmt.Errorf("%w: RedisConfig.URL is required", ErrInvalidConfig)
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return rueidis.ClientOption{}, fmt.Errorf("%w: RedisConfig.URL: %v", ErrInvalidConfig, err)
	}
	for k := range u.Query() {
		if !slices.Contains(urlParams, k) {
			return rueidis.ClientOption{}, fmt.Errorf("%w: RedisConfig.URL: query parameter %q is not supported (supported: %s)", ErrInvalidConfig, k, strings.Join(urlParams, ", "))
		}
	}
	opt, err := rueidis.ParseURL(raw)
	if err != nil {
		return rueidis.ClientOption{}, fmt.Errorf("%w: RedisConfig.URL (scheme %q): %v", ErrInvalidConfig, u.Scheme, err)
	}
	if len(opt.InitAddress) == 0 || opt.InitAddress[0] == "" {
		return rueidis.ClientOption{}, fmt.Errorf("%w: RedisConfig.URL names no address", ErrInvalidConfig)
	}
	return opt, nil
}

// healthLoop owns the rueidis client: it connects (with backoff), PINGs every
// HealthInterval, keeps healthy and the up gauge current, and closes the client when
// Close cancels ctx.
func (r *Redis) healthLoop(ctx context.Context) {
	defer close(r.done)
	var c rueidis.Client
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	backoff := connectBackoffMin
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if c == nil {
			var err error
			// Bounded by Dialer.Timeout; rueidis takes no context here.
			if c, err = rueidis.NewClient(r.opt); err != nil {
				c = nil
				r.setHealth(false, "connect: "+err.Error())
				timer.Reset(backoff + rand.N(backoff/4+1))
				backoff = min(2*backoff, r.cfg.HealthInterval)
				continue
			}
			r.client.Store(&clientRef{c})
		}
		err := r.ping(ctx, c)
		if ctx.Err() != nil {
			return // closing: not a health verdict
		}
		if err != nil {
			r.setHealth(false, "ping: "+err.Error())
		} else {
			r.setHealth(true, "")
		}
		timer.Reset(r.cfg.HealthInterval)
	}
}

// ping sends PING with a deadline of min(OpTimeout, HealthInterval).
func (r *Redis) ping(ctx context.Context, c rueidis.Client) (err error) {
	defer r.m.done(opPing, time.Now(), &err)
	ctx, cancel := context.WithTimeout(ctx, min(r.cfg.OpTimeout, r.cfg.HealthInterval))
	defer cancel()
	return c.Do(ctx, c.B().Ping().Build()).Error()
}

// setHealth records a health verdict; only healthLoop calls it.
func (r *Redis) setHealth(ok bool, reason string) {
	log := r.cfg.Logger
	switch {
	case ok && r.state != stateUp:
		if r.state == stateDown {
			log.Info("registry_recovered", "addr", r.addr, "down_for", time.Since(r.downSince).Round(time.Millisecond).String())
		} else {
			log.Info("registry_connected", "addr", r.addr)
		}
		r.state = stateUp
		r.upMu.Lock()
		r.upCtx, r.upEnd = context.WithCancel(r.life)
		r.upMu.Unlock()
		r.healthy.Store(true)
		r.m.setUp(true)
	case !ok && r.state != stateDown:
		log.Warn("registry_degraded", "addr", r.addr, "reason", reason)
		r.state = stateDown
		r.downSince = time.Now()
		r.healthy.Store(false)
		r.upMu.Lock()
		if r.upEnd != nil {
			r.upEnd() // a subscription on a server that stopped answering hears nothing: end it
		}
		r.upMu.Unlock()
		r.m.setUp(false)
	}
}

// upContext returns a context that ends when the registry next turns unhealthy
// (or closes); an ended one while it is unhealthy.
func (r *Redis) upContext() context.Context {
	r.upMu.Lock()
	defer r.upMu.Unlock()
	if r.upCtx == nil {
		ctx, cancel := context.WithCancel(r.life)
		cancel()
		return ctx
	}
	return r.upCtx
}

// Healthy implements Registry.
func (r *Redis) Healthy() bool { return r.healthy.Load() && !r.closed.Load() }

// Close implements Registry: it stops healthLoop (which may be inside a connect or a
// PING, each bounded by OpTimeout), waits for it, and closes the client.
func (r *Redis) Close() {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		r.cancel()
		<-r.done
		r.healthy.Store(false)
		r.m.setUp(false)
	})
}

// begin returns the client for an operation, or fails fast when the registry is
// closed, not connected yet, or unhealthy.
func (r *Redis) begin(o op) (rueidis.Client, error) {
	if r.closed.Load() {
		return nil, fmt.Errorf("registry %s: %w", o, ErrClosed)
	}
	ref := r.client.Load()
	if ref == nil || !r.healthy.Load() {
		return nil, fmt.Errorf("registry %s: %w (unhealthy)", o, ErrUnavailable)
	}
	return ref.c, nil
}

// opCtx bounds ctx by OpTimeout.
func (r *Redis) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.OpTimeout)
}

// unavailablePrefixes are Redis error replies that mean "cannot serve now", not "bad
// request".
var unavailablePrefixes = []string{"LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "OOM"}

// fail wraps an error of operation o: ErrClosed once closed, the error reply as is
// unless it means unavailability, ErrUnavailable for everything else (timeouts,
// connection errors, the caller's context).
func (r *Redis) fail(o op, what string, err error) error {
	if what != "" {
		what = " " + what
	}
	if errors.Is(err, rueidis.ErrClosing) || r.closed.Load() {
		return fmt.Errorf("registry %s%s: %w: %w", o, what, ErrClosed, err)
	}
	if re, ok := rueidis.IsRedisErr(err); ok {
		msg := re.Error()
		for _, p := range unavailablePrefixes {
			if strings.HasPrefix(msg, p) {
				return fmt.Errorf("registry %s%s: %w: %w", o, what, ErrUnavailable, err)
			}
		}
		return fmt.Errorf("registry %s%s: %w", o, what, err)
	}
	return fmt.Errorf("registry %s%s: %w: %w", o, what, ErrUnavailable, err)
}

// CheckRedisURL reports whether NewRedis would accept url, without
// connecting (for a config check). The error never quotes the URL.
func CheckRedisURL(url string) error {
	_, err := parseRedisURL(url)
	return err
}
