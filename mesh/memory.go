package mesh

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// MemoryStore is the shared state of in-memory registries: what a Redis server is to
// Redis registries. Registries with different replica ids on one store see each other,
// as hubs on one Redis do. Its clock plays the Redis server's: epochs are floored by
// its time in ms and TTLs expire by it. Safe for concurrent use.
type MemoryStore struct {
	now func() time.Time // set at construction

	mu       sync.Mutex                   // guards everything below
	epochs   map[string]uint64            // agent → highest epoch issued (never expires)
	owners   map[string]*memOwner         // agent → owner entry (expired ones removed lazily)
	members  map[string]map[string]uint64 // connector → agent → epoch of its latest AddConnectors
	replicas map[string]map[string]bool   // replica → agents it claimed (ClearOwn's index)
	hubs     map[string]memHub            // replica → mesh URL and expiry
	watchers map[chan string]struct{}     // Watch subscriptions (kept by FlushAll, as Redis keeps its channels)
}

type memOwner struct {
	replica    string
	epoch      uint64
	expires    time.Time
	connectors map[string]uint64 // connector → epoch that added it
}

type memHub struct {
	url     string
	expires time.Time
}

// NewMemoryStore returns an empty store whose clock is now (nil: time.Now). A test can
// pass a clock it steps, e.g. back in time.
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	s := &MemoryStore{now: now, watchers: make(map[chan string]struct{})}
	s.FlushAll()
	return s
}

// FlushAll forgets everything, stored epochs included, as FLUSHALL does to Redis.
func (s *MemoryStore) FlushAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epochs = make(map[string]uint64)
	s.owners = make(map[string]*memOwner)
	s.members = make(map[string]map[string]uint64)
	s.replicas = make(map[string]map[string]bool)
	s.hubs = make(map[string]memHub)
}

// ownerLocked returns the live owner entry of agent, dropping an expired one.
func (s *MemoryStore) ownerLocked(agent string, now time.Time) *memOwner {
	o := s.owners[agent]
	if o != nil && !now.Before(o.expires) {
		delete(s.owners, agent)
		return nil
	}
	return o
}

// liveLocked reports whether agent serves connector under its live owner's epoch.
func (s *MemoryStore) liveLocked(agent, connector string, now time.Time) (*memOwner, bool) {
	o := s.ownerLocked(agent, now)
	if o == nil || o.connectors[connector] != o.epoch {
		return nil, false
	}
	return o, true
}

// MemoryConfig configures an in-memory registry.
type MemoryConfig struct {
	Config
	// Store is the shared state. Default: a new private store on time.Now.
	Store *MemoryStore
}

// Memory is the in-memory Registry: the semantics of Redis on a MemoryStore, without
// I/O. It is always healthy until closed and owns no goroutine.
type Memory struct {
	// set at construction
	cfg   Config
	store *MemoryStore
	m     *registryMetrics

	closed atomic.Bool
	done   chan struct{} // closed by Close: Watch returns
}

var _ Registry = (*Memory)(nil)

// NewMemory returns an in-memory registry; it fails only on a bad config.
func NewMemory(cfg MemoryConfig) (*Memory, error) {
	c, err := cfg.Config.withDefaults("MemoryConfig")
	if err != nil {
		return nil, err
	}
	store := cfg.Store
	if store == nil {
		store = NewMemoryStore(nil)
	}
	r := &Memory{cfg: c, store: store, m: newRegistryMetrics(c.Metrics), done: make(chan struct{})}
	r.m.setUp(true)
	return r, nil
}

// begin checks that the registry is open and ctx is live, and locks the store.
func (r *Memory) begin(ctx context.Context, o op) error {
	if r.closed.Load() {
		return fmt.Errorf("registry %s: %w", o, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("registry %s: %w: %w", o, ErrUnavailable, err)
	}
	r.store.mu.Lock()
	return nil
}

func (r *Memory) end() { r.store.mu.Unlock() }

// Claim implements Registry.
func (r *Memory) Claim(ctx context.Context, agentID string, hint uint64) (epoch uint64, err error) {
	defer r.m.done(opClaim, time.Now(), &err)
	if err = checkHint(agentID, hint); err != nil {
		return 0, err
	}
	if err = r.begin(ctx, opClaim); err != nil {
		return 0, err
	}
	defer r.end()
	s := r.store
	now := s.now()
	epoch = max(s.epochs[agentID]+1, uint64(max(now.UnixMilli(), 0)), hint+1)
	if epoch > maxEpoch {
		return 0, fmt.Errorf("registry claim %q: %w", agentID, ErrEpochOverflow)
	}
	s.epochs[agentID] = epoch
	s.owners[agentID] = &memOwner{replica: r.cfg.ReplicaID, epoch: epoch, expires: now.Add(r.cfg.OwnerTTL)}
	if s.replicas[r.cfg.ReplicaID] == nil {
		s.replicas[r.cfg.ReplicaID] = make(map[string]bool)
	}
	s.replicas[r.cfg.ReplicaID][agentID] = true
	return epoch, nil
}

// ownedLocked returns the live owner entry if this replica holds it at epoch.
func (r *Memory) ownedLocked(agentID string, epoch uint64, now time.Time) *memOwner {
	o := r.store.ownerLocked(agentID, now)
	if o == nil || o.replica != r.cfg.ReplicaID || o.epoch != epoch {
		return nil
	}
	return o
}

// Heartbeat implements Registry.
func (r *Memory) Heartbeat(ctx context.Context, agentID string, epoch uint64) (owned bool, err error) {
	defer r.m.done(opHeartbeat, time.Now(), &err)
	if err = checkEpoch(agentID, epoch); err != nil {
		return false, err
	}
	if err = r.begin(ctx, opHeartbeat); err != nil {
		return false, err
	}
	defer r.end()
	now := r.store.now()
	if r.store.ownerLocked(agentID, now) == nil {
		return false, fmt.Errorf("registry heartbeat %q: %w", agentID, ErrOwnerGone)
	}
	o := r.ownedLocked(agentID, epoch, now)
	if o == nil {
		return false, nil
	}
	o.expires = now.Add(r.cfg.OwnerTTL)
	return true, nil
}

// Release implements Registry.
func (r *Memory) Release(ctx context.Context, agentID string, epoch uint64) (err error) {
	defer r.m.done(opRelease, time.Now(), &err)
	if err = checkEpoch(agentID, epoch); err != nil {
		return err
	}
	if err = r.begin(ctx, opRelease); err != nil {
		return err
	}
	defer r.end()
	if r.ownedLocked(agentID, epoch, r.store.now()) == nil {
		return fmt.Errorf("registry release %q at epoch %d: %w", agentID, epoch, ErrNotOwner)
	}
	delete(r.store.owners, agentID)
	return nil
}

// Owner implements Registry.
func (r *Memory) Owner(ctx context.Context, agentID string) (owner Owner, found bool, err error) {
	defer r.m.done(opOwner, time.Now(), &err)
	if err = checkAgent(agentID); err != nil {
		return Owner{}, false, err
	}
	if err = r.begin(ctx, opOwner); err != nil {
		return Owner{}, false, err
	}
	defer r.end()
	o := r.store.ownerLocked(agentID, r.store.now())
	if o == nil {
		return Owner{}, false, nil
	}
	return Owner{ReplicaID: o.replica, Epoch: o.epoch}, true, nil
}

// AddConnectors implements Registry.
func (r *Memory) AddConnectors(ctx context.Context, agentID string, epoch uint64, connectors []string) (err error) {
	defer r.m.done(opAddConnectors, time.Now(), &err)
	if err = checkEpoch(agentID, epoch); err != nil {
		return err
	}
	if err = checkConnectors(agentID, connectors); err != nil {
		return err
	}
	if err = r.begin(ctx, opAddConnectors); err != nil {
		return err
	}
	defer r.end()
	s := r.store
	o := r.ownedLocked(agentID, epoch, s.now())
	if o == nil {
		return fmt.Errorf("registry add_connectors %q at epoch %d: %w", agentID, epoch, ErrNotOwner)
	}
	for _, c := range connectors {
		if o.connectors == nil {
			o.connectors = make(map[string]uint64)
		}
		o.connectors[c] = epoch
		if s.members[c] == nil {
			s.members[c] = make(map[string]uint64)
		}
		s.members[c][agentID] = max(s.members[c][agentID], epoch) // ZADD GT
	}
	for w := range s.watchers { // PUBLISH: a watcher that is behind misses it
		select {
		case w <- agentID:
		default:
		}
	}
	return nil
}

// watchBuffer is how many notifications a Memory watcher may be behind.
const watchBuffer = 64

// Watch implements Registry.
func (r *Memory) Watch(ctx context.Context, fn func(agentID string)) (err error) {
	defer r.m.watchEnded(ctx, &err)
	fn = r.m.notified(fn)
	if r.closed.Load() {
		return ErrClosed
	}
	w := make(chan string, watchBuffer)
	s := r.store
	s.mu.Lock()
	s.watchers[w] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.done:
			return ErrClosed
		case a := <-w:
			fn(a)
		}
	}
}

// Agents implements Registry.
func (r *Memory) Agents(ctx context.Context, connector string) (agents []AgentInfo, err error) {
	defer r.m.done(opAgents, time.Now(), &err)
	if err = checkConnector(connector); err != nil {
		return nil, err
	}
	if err = r.begin(ctx, opAgents); err != nil {
		return nil, err
	}
	defer r.end()
	s := r.store
	now := s.now()
	for _, agent := range slices.Sorted(maps.Keys(s.members[connector])) {
		if o, ok := s.liveLocked(agent, connector, now); ok {
			agents = append(agents, AgentInfo{AgentID: agent, Owner: Owner{ReplicaID: o.replica, Epoch: o.epoch}})
		}
	}
	return agents, nil
}

// PublishHub implements Registry.
func (r *Memory) PublishHub(ctx context.Context, meshURL string) (err error) {
	defer r.m.done(opPublishHub, time.Now(), &err)
	if err = checkURL(meshURL); err != nil {
		return err
	}
	if err = r.begin(ctx, opPublishHub); err != nil {
		return err
	}
	defer r.end()
	r.store.hubs[r.cfg.ReplicaID] = memHub{url: meshURL, expires: r.store.now().Add(r.cfg.HubTTL)}
	return nil
}

// Hubs implements Registry.
func (r *Memory) Hubs(ctx context.Context) (hubs map[string]string, err error) {
	defer r.m.done(opHubs, time.Now(), &err)
	if err = r.begin(ctx, opHubs); err != nil {
		return nil, err
	}
	defer r.end()
	now := r.store.now()
	hubs = make(map[string]string)
	for id, h := range r.store.hubs {
		if now.Before(h.expires) {
			hubs[id] = h.url
		}
	}
	return hubs, nil
}

// ClearOwn implements Registry.
func (r *Memory) ClearOwn(ctx context.Context) (err error) {
	defer r.m.done(opClearOwn, time.Now(), &err)
	if err = r.begin(ctx, opClearOwn); err != nil {
		return err
	}
	defer r.end()
	s := r.store
	for agent := range s.replicas[r.cfg.ReplicaID] {
		if o := s.owners[agent]; o != nil && o.replica == r.cfg.ReplicaID {
			delete(s.owners, agent)
		}
	}
	delete(s.replicas, r.cfg.ReplicaID)
	delete(s.hubs, r.cfg.ReplicaID)
	return nil
}

// Sweep implements Registry.
func (r *Memory) Sweep(ctx context.Context) (removed int, err error) {
	defer r.m.done(opSweep, time.Now(), &err)
	if err = r.begin(ctx, opSweep); err != nil {
		return 0, err
	}
	defer r.end()
	s := r.store
	now := s.now()
	for agent := range s.owners {
		s.ownerLocked(agent, now) // drops an expired entry
	}
	for id, h := range s.hubs {
		if !now.Before(h.expires) {
			delete(s.hubs, id)
			removed++
		}
	}
	for connector, agents := range s.members {
		for agent := range agents {
			if _, ok := s.liveLocked(agent, connector, now); !ok {
				delete(agents, agent)
				removed++
			}
		}
		if len(agents) == 0 {
			delete(s.members, connector)
		}
	}
	for agent := range s.replicas[r.cfg.ReplicaID] {
		if o := s.ownerLocked(agent, now); o == nil || o.replica != r.cfg.ReplicaID {
			delete(s.replicas[r.cfg.ReplicaID], agent)
		}
	}
	return removed, nil
}

// Healthy implements Registry: true until Close.
func (r *Memory) Healthy() bool { return !r.closed.Load() }

// Close implements Registry. It owns no goroutine; later calls fail with ErrClosed.
func (r *Memory) Close() {
	if !r.closed.Swap(true) {
		r.m.setUp(false)
		close(r.done)
	}
}
