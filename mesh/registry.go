// Package mesh holds what hubs share with each other: the ownership
// registry (seed 002, "Control plane – DistributedRegistry") and the hub-to-hub links
// (manager.go, link.go).
//
// # The registry
//
// The registry records which hub (replica) owns which premise agent, fenced by an epoch,
// which connectors each agent serves, and which hubs are alive with their mesh URL.
// Two implementations have the same semantics and satisfy [Registry]: [Memory] (one
// process; the hub's tests) and [Redis] (github.com/redis/rueidis; production).
//
// Ownership. Claim makes this replica the owner of an agent and returns a new epoch:
//
//	epoch = max(stored epoch + 1, server time in ms, hint + 1)
//
// The stored epoch is kept forever (no TTL), so epochs of one agent strictly increase
// across claims by any replica; the server-time floor keeps them increasing after the
// store lost its data (a Redis restart without persistence, FLUSHALL); the hint, the
// highest epoch the calling hub has seen, keeps them increasing when the server clock
// steps back while the data is lost as well. (After a data loss, the floor beats the
// epochs of other hubs only if they did not run ahead of the clock, i.e. an agent was
// claimed less than once per millisecond on average; each hub's own sequence always
// increases through its hint. Fencing compares owner entries for equality, so it holds
// either way.) The owner entry "replica|epoch" lives for
// OwnerTTL; Heartbeat extends it only if it still names this replica and epoch
// (compare-and-extend), so a hub whose heartbeat returns owned=false has been fenced
// out and must stop using that epoch; one that gets ErrOwnerGone finds no owner at all
// (Redis restarted empty, or the entry expired while unreachable) and claims again. Release deletes it only on the same condition
// (compare-and-delete). A Claim that fails with ErrUnavailable may still have taken
// effect (the request reached Redis, the answer did not come back in time): such an
// owner entry expires after OwnerTTL unless it is heartbeaten.
//
// Connectors. AddConnectors records, fenced by the owner epoch, the connectors an agent
// serves under that epoch; a new Claim starts with none. Agents(connector) lists the
// agents that serve a connector under their current owner epoch, with owner and epoch;
// an agent whose owner entry expired or was released, or whose current epoch did not
// add that connector, is left out (and pruned by Sweep).
//
// Hubs. PublishHub records this replica's mesh URL for HubTTL (republish well within
// it, e.g. every HubTTL/3); Hubs lists the live replicas, this one included.
//
// Maintenance. ClearOwn, called once at hub start before serving, removes what a
// previous run under the same replica id left: the owner entries still naming this
// replica (any epoch) and its hub entry. Sweep, run periodically by any hub (see
// [Sweeper]; concurrent sweeps are safe), prunes connector memberships of agents
// without a live owner (or whose current epoch no longer serves the connector), hub
// entries past their TTL, and this replica's claim index.
//
// Availability. Every operation is bounded by OpTimeout as well as by its context
// (ClearOwn, which walks many keys, by OpTimeout per round trip, and Sweep per
// connector). While the registry is unhealthy operations fail fast with
// ErrUnavailable; see [Redis] for how health is tracked. No call waits on an
// unreachable Redis for longer than OpTimeout.
//
// # Redis keys
//
// Every key has a hash tag, and every script and command touches the keys of one slot
// only, so Redis Cluster works. <agent>, <connector> and <replica> are the ids as given.
//
//	nc:{a:<agent>}:epoch       string  highest epoch issued for the agent; no TTL, never deleted
//	nc:{a:<agent>}:owner       string  "<replica>|<epoch>" of the owner; PX OwnerTTL
//	nc:{a:<agent>}:connectors  hash    connector → epoch that added it; deleted by Claim and
//	                                   Release, PEXPIREd with the owner entry
//	nc:{c:<connector>}:agents  zset    agent → epoch of its latest AddConnectors (ZADD GT: the
//	                                   score never goes down); read by Agents, pruned by Sweep
//	nc:{idx}:connectors        set     connectors that have a membership zset (what Sweep walks)
//	nc:{r:<replica>}:agents    set     agents this replica claimed (what ClearOwn walks); advisory
//	nc:{hubs}:urls             hash    replica → mesh URL
//	nc:{hubs}:expiry           zset    replica → expiry time in ms (Redis TIME + HubTTL)
//
// # Redis scripts
//
// Lua, run with rueidis (EVALSHA, then EVAL on NOSCRIPT, so a restarted Redis needs no
// reload). All but release are idempotent or, for claim, safe to repeat, and are marked
// retryable (rueidis.NewLuaScriptRetryable); release is not (a repeat would answer
// "not the owner").
//
// Lua numbers are doubles: integers go through string.format('%d') (plain tostring
// prints 1.79e+15), and epochs and hints are at most MaxHint+1 < 2^53, where doubles are
// exact.
//
//	claim          KEYS owner, epoch, connectors; ARGV replica, hint, ttl_ms.
//	               e = max(GET epoch + 1, TIME in ms, hint + 1); SET epoch e;
//	               SET owner "replica|e" PX ttl; DEL connectors; returns e
//	               (an error reply, ErrEpochOverflow, if e would pass 2^53-1).
//	heartbeat      KEYS owner, connectors; ARGV "replica|epoch", ttl_ms.
//	               if GET owner == ARGV[1]: PEXPIRE both, return 1; no owner: 2
//	               (ErrOwnerGone); else 0.
//	release        KEYS owner, connectors; ARGV "replica|epoch".
//	               if GET owner == ARGV[1]: DEL both, return 1; else 0.
//	addConnectors  KEYS owner, connectors; ARGV "replica|epoch", epoch, connector…
//	               if GET owner == ARGV[1]: HSET connectors c epoch for each,
//	               PEXPIRE connectors (PTTL owner), return 1; else 0.
//	clearOwn       KEYS owner, connectors; ARGV "replica|".
//	               if GET owner starts with ARGV[1]: DEL both, return 1; else 0.
//	pruneMembers   KEYS nc:{c:<connector>}:agents; ARGV agent, epoch, agent, epoch…
//	               ZREM each agent whose score still equals the epoch at which Sweep
//	               judged it stale (not one a concurrent AddConnectors raised since);
//	               returns {removed, ZCARD}.
//	publishHub     KEYS urls, expiry; ARGV replica, url, ttl_ms.
//	               HSET urls; ZADD expiry TIME+ttl; returns 1.
//	hubs           KEYS urls, expiry; returns {replica, url, …} of expiry > TIME.
//	sweepHubs      KEYS urls, expiry; HDEL and ZREM the replicas with expiry <= TIME;
//	               returns how many.
//
// Plain commands, one slot each: SADD nc:{r:<replica>}:agents before the claim script;
// ZADD GT nc:{c:<connector>}:agents and SADD nc:{idx}:connectors after addConnectors,
// then PUBLISH nc:claims <agent> (Watch SUBSCRIBEs to nc:claims);
// Agents and Sweep read GET owner and HGET connectors of each member in one pipeline;
// ClearOwn ends with DEL nc:{r:<replica>}:agents, HDEL urls and ZREM expiry.
// The server needs Redis 6.2 or later (ZADD GT).
package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Registry is the full method set both implementations provide; the sweeper and the
// contract tests use it. Consumers (the hub) declare the subset they need.
//
// Every method may be called from any goroutine. Every ctx should carry a deadline;
// the implementation bounds each operation by OpTimeout as well.
type Registry interface {
	// Claim makes this replica the owner of agentID and returns its new epoch (see the
	// package comment). hint is the highest epoch the caller has seen for it (0: none).
	Claim(ctx context.Context, agentID string, hint uint64) (epoch uint64, err error)
	// Heartbeat extends this replica's ownership at epoch by OwnerTTL; owned is false
	// (and err nil) when another replica or epoch owns the agent: fenced out. It fails
	// with ErrOwnerGone when there is no owner entry at all (it expired, it was
	// released, or the server lost its data): nobody owns the agent, and the caller may
	// Claim it again.
	Heartbeat(ctx context.Context, agentID string, epoch uint64) (owned bool, err error)
	// Release ends this replica's ownership at epoch; ErrNotOwner if it did not hold it.
	Release(ctx context.Context, agentID string, epoch uint64) error
	// Owner returns the live owner of agentID; found is false when there is none.
	Owner(ctx context.Context, agentID string) (owner Owner, found bool, err error)
	// AddConnectors records that agentID serves connectors under epoch; ErrNotOwner
	// (and nothing recorded) unless this replica owns it at that epoch.
	AddConnectors(ctx context.Context, agentID string, epoch uint64, connectors []string) error
	// Agents lists the live agents of connector, sorted by agent id.
	Agents(ctx context.Context, connector string) ([]AgentInfo, error)
	// PublishHub records this replica's mesh URL for HubTTL.
	PublishHub(ctx context.Context, meshURL string) error
	// Hubs returns the live replicas (this one included) and their mesh URLs.
	Hubs(ctx context.Context) (map[string]string, error)
	// ClearOwn removes the entries a previous run of this replica id left behind:
	// owner entries naming it and its hub entry. Call it at start, before serving.
	ClearOwn(ctx context.Context) error
	// Sweep prunes stale connector memberships and expired hub entries and returns how
	// many of those it removed.
	Sweep(ctx context.Context) (removed int, err error)
	// Watch calls fn, on Watch's goroutine, with the agent id of every AddConnectors
	// that succeeds on any replica (this one included) while Watch is subscribed: the
	// moment an agent becomes routable on its new owner. It blocks until ctx ends or
	// the subscription breaks and returns why (ctx's error, ErrClosed, the failure).
	// Best effort: what is published while nobody is subscribed is lost, and a reader
	// learns it at its next read instead.
	Watch(ctx context.Context, fn func(agentID string)) error
	// Healthy reports whether the registry can serve operations now.
	Healthy() bool
	// Close stops the goroutines the registry owns and waits for them; later calls
	// fail with ErrClosed.
	Close()
}

// Owner is the replica that owns an agent, and the epoch of its claim.
type Owner struct {
	ReplicaID string
	Epoch     uint64
}

// AgentInfo is a live agent of a connector with its owner.
type AgentInfo struct {
	AgentID string
	Owner   Owner
}

// Errors. Every error an operation returns wraps one of these (or the caller's
// context error), so callers branch with errors.Is.
var (
	// ErrUnavailable: the registry cannot be reached or did not answer in time (also
	// returned at once while it is unhealthy). The operation may or may not have
	// taken effect.
	ErrUnavailable = errors.New("registry unavailable")
	// ErrNotOwner: the operation is fenced and this replica does not own the agent at
	// that epoch (another replica or a newer epoch does, or the entry expired).
	ErrNotOwner = errors.New("not the owner at this epoch")
	// ErrOwnerGone: Heartbeat found no owner entry for the agent at all (expired,
	// released, or lost with the server's data); no replica owns it.
	ErrOwnerGone = errors.New("no owner entry")
	// ErrClosed: the registry has been closed.
	ErrClosed = errors.New("registry closed")
	// ErrInvalidArgument: an empty agent id, connector or URL, epoch 0, or a hint
	// above MaxHint.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrInvalidConfig: a MemoryConfig or RedisConfig field is wrong; the message names it.
	ErrInvalidConfig = errors.New("invalid registry config")
	// ErrEpochOverflow: the next epoch of an agent would reach 2^53 (only a hint near
	// MaxHint gets there; the clock would take 285,000 years).
	ErrEpochOverflow = errors.New("epoch overflow")
)

// maxEpoch is the largest epoch: 2^53 - 1, the last integer a double holds exactly.
const maxEpoch = MaxHint + 1

// MaxHint is the largest hint Claim accepts: epochs stay below 2^53, where Lua's
// doubles are exact.
const MaxHint = 1<<53 - 2

// Defaults of the Config fields.
const (
	DefaultOwnerTTL       = 15 * time.Second
	DefaultHubTTL         = 15 * time.Second
	DefaultOpTimeout      = time.Second
	DefaultHealthInterval = time.Second
)

// Config holds the fields both implementations take.
type Config struct {
	// ReplicaID names this hub in owner entries and the hub list. Required; printable
	// ASCII without spaces and without '|' (see CheckReplicaID).
	ReplicaID string
	// OwnerTTL is how long an owner entry outlives its last Claim or Heartbeat.
	// Default 15s; heartbeat well within it (e.g. every OwnerTTL/3).
	OwnerTTL time.Duration
	// HubTTL is how long a hub entry outlives its last PublishHub. Default 15s.
	HubTTL time.Duration
	// OpTimeout bounds every operation (each round trip of ClearOwn, each connector of
	// Sweep), on top of the caller's context; also rueidis' dial and connection write
	// timeouts and the health PING's deadline. Default 1s.
	OpTimeout time.Duration
	// Metrics receives the nowconnect_registry_* series. Default: a private set (not
	// exposed). Use one registry per set: they would share the series.
	Metrics *metrics.Set
	// Logger receives registry_degraded / registry_recovered. Default: discard.
	Logger *slog.Logger
}

// CheckReplicaID reports whether id can name a replica: 1 to 128 bytes of printable
// ASCII ('!' to '~') other than '|', which separates replica and epoch in owner
// entries (Redis also refuses spaces in the client name derived from it).
func CheckReplicaID(id string) error {
	if id == "" {
		return errors.New("must not be empty")
	}
	if len(id) > 128 {
		return fmt.Errorf("%d bytes, at most 128", len(id))
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < '!' || c > '~' || c == '|' {
			return fmt.Errorf("byte %d (%q) is not printable ASCII other than '|'", i, c)
		}
	}
	return nil
}

// withDefaults validates c and fills in the defaults; kind names the config type in
// errors ("MemoryConfig", "RedisConfig").
func (c Config) withDefaults(kind string) (Config, error) {
	if err := CheckReplicaID(c.ReplicaID); err != nil {
		return c, fmt.Errorf("%w: %s.ReplicaID %q: %v", ErrInvalidConfig, kind, c.ReplicaID, err)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"OwnerTTL", &c.OwnerTTL, DefaultOwnerTTL},
		{"HubTTL", &c.HubTTL, DefaultHubTTL},
		{"OpTimeout", &c.OpTimeout, DefaultOpTimeout},
	} {
		switch {
		case *d.v == 0:
			*d.v = d.def
		case *d.v < time.Millisecond:
			return c, fmt.Errorf("%w: %s.%s is %v, must be at least 1ms (0 for the default %v)", ErrInvalidConfig, kind, d.name, *d.v, d.def)
		}
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// ownerValue is the owner entry of replica at epoch: "replica|epoch".
func ownerValue(replica string, epoch uint64) string {
	return replica + "|" + strconv.FormatUint(epoch, 10)
}

// parseOwner parses an owner entry; the replica id cannot contain '|'.
func parseOwner(v string) (Owner, error) {
	replica, epoch, ok := strings.Cut(v, "|")
	if !ok || replica == "" {
		return Owner{}, fmt.Errorf("owner entry %q is not replica|epoch", v)
	}
	e, err := strconv.ParseUint(epoch, 10, 64)
	if err != nil || e == 0 {
		return Owner{}, fmt.Errorf("owner entry %q has a bad epoch", v)
	}
	return Owner{ReplicaID: replica, Epoch: e}, nil
}

// Argument checks shared by both implementations.

func checkAgent(agentID string) error {
	if agentID == "" {
		return fmt.Errorf("%w: empty agent id", ErrInvalidArgument)
	}
	return nil
}

func checkEpoch(agentID string, epoch uint64) error {
	if err := checkAgent(agentID); err != nil {
		return err
	}
	if epoch == 0 || epoch > maxEpoch {
		return fmt.Errorf("%w: agent %q: epoch %d out of range", ErrInvalidArgument, agentID, epoch)
	}
	return nil
}

func checkHint(agentID string, hint uint64) error {
	if err := checkAgent(agentID); err != nil {
		return err
	}
	if hint > MaxHint {
		return fmt.Errorf("%w: agent %q: hint %d above MaxHint %d", ErrInvalidArgument, agentID, hint, uint64(MaxHint))
	}
	return nil
}

func checkConnectors(agentID string, connectors []string) error {
	for i, c := range connectors {
		if c == "" {
			return fmt.Errorf("%w: agent %q: connector %d is empty", ErrInvalidArgument, agentID, i)
		}
	}
	return nil
}

func checkConnector(connector string) error {
	if connector == "" {
		return fmt.Errorf("%w: empty connector", ErrInvalidArgument)
	}
	return nil
}

func checkURL(meshURL string) error {
	if meshURL == "" {
		return fmt.Errorf("%w: empty mesh URL", ErrInvalidArgument)
	}
	return nil
}
