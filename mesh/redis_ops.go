package mesh

// The Registry operations of Redis; redis.go has the client, health and errors.

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

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
	if n == 2 {
		return false, fmt.Errorf("registry heartbeat %q: %w", agentID, ErrOwnerGone)
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
	// The agent is routable on its new owner: tell the watchers (best effort, so a
	// failure here fails nothing; they learn it at their next read).
	if err := c.Do(ctx, c.B().Publish().Channel(claimsChannel).Message(agentID).Build()).Error(); err != nil {
		r.m.failed(opPublish)
	}
	return nil
}

// claimsChannel is the channel AddConnectors publishes on and Watch subscribes to.
const claimsChannel = "nc:claims"

// Watch implements Registry. The subscription has a connection of its own; Close ends
// it too, and so does the registry turning unhealthy.
func (r *Redis) Watch(parent context.Context, fn func(agentID string)) (err error) {
	defer r.m.watchEnded(parent, &err)
	fn = r.m.notified(fn)
	if err := parent.Err(); err != nil {
		return err
	}
	c, err := r.begin(opWatch)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	// Close ends the watch, and so does the health check's verdict that the
	// server stopped answering: a subscription is never left deaf (a frozen
	// server, a connection a middlebox dropped without a reset).
	up := r.upContext()
	defer context.AfterFunc(up, cancel)()
	// A connection of its own, kept off the shared pipeline, and closed when the
	// watch ends, never handed back: rueidis would first unsubscribe it and wait
	// for the answer, seconds when the server is frozen. Close also interrupts
	// the Receive below when ctx ends.
	dc, _ := c.Dedicate()
	defer dc.Close()
	defer context.AfterFunc(ctx, dc.Close)()
	err = dc.Receive(ctx, dc.B().Subscribe().Channel(claimsChannel).Build(), func(m rueidis.PubSubMessage) { fn(m.Message) })
	switch {
	case r.closed.Load():
		return fmt.Errorf("registry watch: %w", ErrClosed)
	case parent.Err() != nil:
		return parent.Err()
	case up.Err() != nil:
		return fmt.Errorf("registry watch: %w (unhealthy)", ErrUnavailable)
	case err == nil:
		return fmt.Errorf("registry watch: %w (unsubscribed)", ErrUnavailable)
	}
	return fmt.Errorf("registry watch: %w", err)
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
