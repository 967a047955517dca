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
//     deadline has passed when the first attempt fails.
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

	// owned by healthLoop
	state     healthState
	downSince time.Time

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
		r.healthy.Store(true)
		r.m.setUp(true)
	case !ok && r.state != stateDown:
		log.Warn("registry_degraded", "addr", r.addr, "reason", reason)
		r.state = stateDown
		r.downSince = time.Now()
		r.healthy.Store(false)
		r.m.setUp(false)
	}
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

// Claim implements Registry.
func (r *Redis) Claim(ctx context.Context, agentID string, hint uint64) (epoch uint64, err error) {
	defer r.m.done(opClaim, time.Now(), &err)
	if err = checkHint(agentID, hint); err != nil {
		return 0, err
	}
	c, err := r.begin(opClaim)
	if err != nil {
		return 0, err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	what := strconv.Quote(agentID)
	// Index first: a failed claim leaves only a harmless index entry (Sweep prunes it).
	if err = c.Do(ctx, c.B().Sadd().Key(replicaKey(r.cfg.ReplicaID)).Member(agentID).Build().ToRetryable()).Error(); err != nil {
		return 0, r.fail(opClaim, what, err)
	}
	s, err := claimScript.Exec(ctx, c,
		[]string{ownerKey(agentID), epochKey(agentID), connectorsKey(agentID)},
		[]string{r.cfg.ReplicaID, strconv.FormatUint(hint, 10), r.ownerTTL}).ToString()
	if re, ok := rueidis.IsRedisErr(err); ok && strings.Contains(re.Error(), epochOverflowReply) {
		return 0, fmt.Errorf("registry claim %s: %w", what, ErrEpochOverflow)
	}
	if err != nil {
		return 0, r.fail(opClaim, what, err)
	}
	if epoch, err = strconv.ParseUint(s, 10, 64); err != nil || epoch == 0 {
		return 0, fmt.Errorf("registry claim %s: script answered %q", what, s)
	}
	return epoch, nil
}

// Heartbeat implements Registry.
func (r *Redis) Heartbeat(ctx context.Context, agentID string, epoch uint64) (owned bool, err error) {
	defer r.m.done(opHeartbeat, time.Now(), &err)
	if err = checkEpoch(agentID, epoch); err != nil {
		return false, err
	}
	c, err := r.begin(opHeartbeat)
	if err != nil {
		return false, err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	n, err := heartbeatScript.Exec(ctx, c,
		[]string{ownerKey(agentID), connectorsKey(agentID)},
		[]string{ownerValue(r.cfg.ReplicaID, epoch), r.ownerTTL}).AsInt64()
	if err != nil {
		return false, r.fail(opHeartbeat, strconv.Quote(agentID), err)
	}
	return n == 1, nil
}

// Release implements Registry.
func (r *Redis) Release(ctx context.Context, agentID string, epoch uint64) (err error) {
	defer r.m.done(opRelease, time.Now(), &err)
	if err = checkEpoch(agentID, epoch); err != nil {
		return err
	}
	c, err := r.begin(opRelease)
	if err != nil {
		return err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	n, err := releaseScript.Exec(ctx, c,
		[]string{ownerKey(agentID), connectorsKey(agentID)},
		[]string{ownerValue(r.cfg.ReplicaID, epoch)}).AsInt64()
	if err != nil {
		return r.fail(opRelease, strconv.Quote(agentID), err)
	}
	if n != 1 {
		return fmt.Errorf("registry release %q at epoch %d: %w", agentID, epoch, ErrNotOwner)
	}
	return nil
}

// Owner implements Registry.
func (r *Redis) Owner(ctx context.Context, agentID string) (owner Owner, found bool, err error) {
	defer r.m.done(opOwner, time.Now(), &err)
	if err = checkAgent(agentID); err != nil {
		return Owner{}, false, err
	}
	c, err := r.begin(opOwner)
	if err != nil {
		return Owner{}, false, err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	v, err := c.Do(ctx, c.B().Get().Key(ownerKey(agentID)).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return Owner{}, false, nil
	}
	if err != nil {
		return Owner{}, false, r.fail(opOwner, strconv.Quote(agentID), err)
	}
	if owner, err = parseOwner(v); err != nil {
		return Owner{}, false, fmt.Errorf("registry owner %q: %w", agentID, err)
	}
	return owner, true, nil
}

// AddConnectors implements Registry.
func (r *Redis) AddConnectors(ctx context.Context, agentID string, epoch uint64, connectors []string) (err error) {
	defer r.m.done(opAddConnectors, time.Now(), &err)
	if err = checkEpoch(agentID, epoch); err != nil {
		return err
	}
	if err = checkConnectors(agentID, connectors); err != nil {
		return err
	}
	c, err := r.begin(opAddConnectors)
	if err != nil {
		return err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	what := strconv.Quote(agentID)
	es := strconv.FormatUint(epoch, 10)
	args := append([]string{ownerValue(r.cfg.ReplicaID, epoch), es}, connectors...)
	n, err := addConnectorsScript.Exec(ctx, c, []string{ownerKey(agentID), connectorsKey(agentID)}, args).AsInt64()
	if err != nil {
		return r.fail(opAddConnectors, what, err)
	}
	if n != 1 {
		return fmt.Errorf("registry add_connectors %s at epoch %d: %w", what, epoch, ErrNotOwner)
	}
	if len(connectors) == 0 {
		return nil
	}
	// Membership after the agent's own record, so Sweep, which reads memberships first,
	// never judges a fresh membership stale (see pruneMembersScript).
	cmds := make(rueidis.Commands, 0, 2*len(connectors))
	for _, conn := range connectors {
		cmds = append(cmds,
			c.B().Zadd().Key(membersKey(conn)).Gt().ScoreMember().ScoreMember(float64(epoch), agentID).Build().ToRetryable(),
			c.B().Sadd().Key(connIndexKey).Member(conn).Build().ToRetryable())
	}
	for _, res := range c.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil {
			return r.fail(opAddConnectors, what, err)
		}
	}
	return nil
}

// liveness reads, in one pipeline, the owner entry and the connector's epoch of each
// agent, and returns the owners of those that serve connector under their current
// epoch (a zero Owner for the others).
func (r *Redis) liveness(ctx context.Context, c rueidis.Client, connector string, agents []string) ([]Owner, error) {
	cmds := make(rueidis.Commands, 0, 2*len(agents))
	for _, a := range agents {
		cmds = append(cmds,
			c.B().Get().Key(ownerKey(a)).Build(),
			c.B().Hget().Key(connectorsKey(a)).Field(connector).Build())
	}
	res := c.DoMulti(ctx, cmds...)
	owners := make([]Owner, len(agents))
	for i := range agents {
		v, err := res[2*i].ToString()
		if rueidis.IsRedisNil(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		e, err := res[2*i+1].ToString()
		if rueidis.IsRedisNil(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		o, perr := parseOwner(v)
		if perr != nil || strconv.FormatUint(o.Epoch, 10) != e {
			continue // a corrupt entry counts as not live; Sweep prunes it
		}
		owners[i] = o
	}
	return owners, nil
}

// Agents implements Registry.
func (r *Redis) Agents(ctx context.Context, connector string) (agents []AgentInfo, err error) {
	defer r.m.done(opAgents, time.Now(), &err)
	if err = checkConnector(connector); err != nil {
		return nil, err
	}
	c, err := r.begin(opAgents)
	if err != nil {
		return nil, err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	what := strconv.Quote(connector)
	members, err := c.Do(ctx, c.B().Zrange().Key(membersKey(connector)).Min("0").Max("-1").Build()).AsStrSlice()
	if err != nil {
		return nil, r.fail(opAgents, what, err)
	}
	if len(members) == 0 {
		return nil, nil
	}
	slices.Sort(members)
	owners, err := r.liveness(ctx, c, connector, members)
	if err != nil {
		return nil, r.fail(opAgents, what, err)
	}
	for i, a := range members {
		if owners[i].Epoch != 0 {
			agents = append(agents, AgentInfo{AgentID: a, Owner: owners[i]})
		}
	}
	return agents, nil
}

// PublishHub implements Registry.
func (r *Redis) PublishHub(ctx context.Context, meshURL string) (err error) {
	defer r.m.done(opPublishHub, time.Now(), &err)
	if err = checkURL(meshURL); err != nil {
		return err
	}
	c, err := r.begin(opPublishHub)
	if err != nil {
		return err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	if err = publishHubScript.Exec(ctx, c, []string{hubURLsKey, hubExpiryKey}, []string{r.cfg.ReplicaID, meshURL, r.hubTTL}).Error(); err != nil {
		return r.fail(opPublishHub, "", err)
	}
	return nil
}

// Hubs implements Registry.
func (r *Redis) Hubs(ctx context.Context) (hubs map[string]string, err error) {
	defer r.m.done(opHubs, time.Now(), &err)
	c, err := r.begin(opHubs)
	if err != nil {
		return nil, err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	flat, err := hubsScript.Exec(ctx, c, []string{hubURLsKey, hubExpiryKey}, nil).AsStrSlice()
	if err != nil {
		return nil, r.fail(opHubs, "", err)
	}
	hubs = make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		hubs[flat[i]] = flat[i+1]
	}
	return hubs, nil
}

// ClearOwn implements Registry.
func (r *Redis) ClearOwn(ctx context.Context) (err error) {
	defer r.m.done(opClearOwn, time.Now(), &err)
	c, err := r.begin(opClearOwn)
	if err != nil {
		return err
	}
	rctx, cancel := r.opCtx(ctx)
	agents, err := c.Do(rctx, c.B().Smembers().Key(replicaKey(r.cfg.ReplicaID)).Build()).AsStrSlice()
	cancel()
	if err != nil {
		return r.fail(opClearOwn, "", err)
	}
	for _, a := range agents {
		rctx, cancel := r.opCtx(ctx)
		err := clearOwnScript.Exec(rctx, c, []string{ownerKey(a), connectorsKey(a)}, []string{r.prefix}).Error()
		cancel()
		if err != nil {
			return r.fail(opClearOwn, strconv.Quote(a), err)
		}
	}
	rctx, cancel = r.opCtx(ctx)
	defer cancel()
	for _, res := range c.DoMulti(rctx,
		c.B().Del().Key(replicaKey(r.cfg.ReplicaID)).Build().ToRetryable(),
		c.B().Hdel().Key(hubURLsKey).Field(r.cfg.ReplicaID).Build().ToRetryable(),
		c.B().Zrem().Key(hubExpiryKey).Member(r.cfg.ReplicaID).Build().ToRetryable(),
	) {
		if err := res.Error(); err != nil {
			return r.fail(opClearOwn, "", err)
		}
	}
	return nil
}

// Sweep implements Registry: expired hub entries, then stale memberships connector by
// connector, then this replica's claim index. Each round trip is bounded by OpTimeout.
func (r *Redis) Sweep(ctx context.Context) (removed int, err error) {
	defer r.m.done(opSweep, time.Now(), &err)
	c, err := r.begin(opSweep)
	if err != nil {
		return 0, err
	}
	rctx, cancel := r.opCtx(ctx)
	n, err := sweepHubsScript.Exec(rctx, c, []string{hubURLsKey, hubExpiryKey}, nil).AsInt64()
	cancel()
	if err != nil {
		return 0, r.fail(opSweep, "hubs", err)
	}
	removed = int(n)

	rctx, cancel = r.opCtx(ctx)
	connectors, err := c.Do(rctx, c.B().Smembers().Key(connIndexKey).Build()).AsStrSlice()
	cancel()
	if err != nil {
		return removed, r.fail(opSweep, "connectors", err)
	}
	for _, conn := range connectors {
		n, err := r.sweepConnector(ctx, c, conn)
		removed += n
		if err != nil {
			return removed, r.fail(opSweep, strconv.Quote(conn), err)
		}
	}

	if err := r.sweepOwnIndex(ctx, c); err != nil {
		return removed, r.fail(opSweep, "claim index", err)
	}
	return removed, nil
}

// sweepConnector removes the stale memberships of one connector and, when none is
// left, the connector from the index.
//
// Race with AddConnectors, which writes the agent's record before the membership with
// ZADD GT: Sweep reads each membership's epoch first and removes it only if it still
// holds that epoch, so a membership raised meanwhile stays; one written at the epoch
// Sweep read had its agent record written before, so it was not judged stale unless
// it is.
func (r *Redis) sweepConnector(ctx context.Context, c rueidis.Client, conn string) (int, error) {
	key := membersKey(conn)
	rctx, cancel := r.opCtx(ctx)
	defer cancel()
	scores, err := c.Do(rctx, c.B().Zrange().Key(key).Min("0").Max("-1").Withscores().Build()).AsZScores()
	if err != nil {
		return 0, err
	}
	agents := make([]string, len(scores))
	for i, s := range scores {
		agents[i] = s.Member
	}
	owners, err := r.liveness(rctx, c, conn, agents)
	if err != nil {
		return 0, err
	}
	var stale []string
	for i, s := range scores {
		if owners[i].Epoch == 0 {
			stale = append(stale, s.Member, strconv.FormatUint(uint64(s.Score), 10))
		}
	}
	removed, remaining := 0, int64(len(scores))
	if len(stale) > 0 {
		res, err := pruneMembersScript.Exec(rctx, c, []string{key}, stale).AsIntSlice()
		if err != nil {
			return 0, err
		}
		if len(res) != 2 {
			return 0, fmt.Errorf("prune script answered %v", res)
		}
		removed, remaining = int(res[0]), res[1]
	}
	if remaining == 0 {
		// Drop the connector from the index; AddConnectors writes the membership before
		// the index, so if one appeared meanwhile, put the connector back.
		if err := c.Do(rctx, c.B().Srem().Key(connIndexKey).Member(conn).Build().ToRetryable()).Error(); err != nil {
			return removed, err
		}
		exists, err := c.Do(rctx, c.B().Exists().Key(key).Build()).AsInt64()
		if err != nil {
			return removed, err
		}
		if exists == 1 {
			if err := c.Do(rctx, c.B().Sadd().Key(connIndexKey).Member(conn).Build().ToRetryable()).Error(); err != nil {
				return removed, err
			}
		}
	}
	return removed, nil
}

// sweepOwnIndex drops from this replica's claim index the agents it no longer owns.
func (r *Redis) sweepOwnIndex(ctx context.Context, c rueidis.Client) error {
	key := replicaKey(r.cfg.ReplicaID)
	rctx, cancel := r.opCtx(ctx)
	defer cancel()
	agents, err := c.Do(rctx, c.B().Smembers().Key(key).Build()).AsStrSlice()
	if err != nil || len(agents) == 0 {
		return err
	}
	cmds := make(rueidis.Commands, len(agents))
	for i, a := range agents {
		cmds[i] = c.B().Get().Key(ownerKey(a)).Build()
	}
	var gone []string
	for i, res := range c.DoMulti(rctx, cmds...) {
		v, err := res.ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return err
		}
		if !strings.HasPrefix(v, r.prefix) {
			gone = append(gone, agents[i])
		}
	}
	if len(gone) == 0 {
		return nil
	}
	return c.Do(rctx, c.B().Srem().Key(key).Member(gone...).Build().ToRetryable()).Error()
}
