package mesh_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// TestEpochsConcurrentClaims: 1000 claims of one agent from 3 registries with
// different replica ids, 4 callers each, all at once. Every epoch is distinct, each
// caller's sequence strictly increases, and the final owner holds the largest epoch.
func TestEpochsConcurrentClaims(t *testing.T) {
	testenv.CheckGoroutines(t)
	const (
		claims     = 1000
		replicas   = 3
		perReplica = 4
		callers    = replicas * perReplica
	)
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			e := b.newEnv(t)
			regs := make([]mesh.Registry, replicas)
			for i := range regs {
				regs[i] = e.open(t, cfg(fmt.Sprintf("hub-%c", 'a'+i), nil))
			}
			seqs := make([][]uint64, callers)
			errs := make([]error, callers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range callers {
				n := claims / callers
				if i < claims%callers {
					n++
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					r := regs[i%replicas]
					var hint uint64
					for range n {
						c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						ep, err := r.Claim(c, "agent-1", hint)
						cancel()
						if err != nil {
							errs[i] = err
							return
						}
						seqs[i] = append(seqs[i], ep)
						hint = ep
					}
				}()
			}
			close(start)
			wg.Wait()

			seen := make(map[uint64]int, claims)
			var maxEpoch uint64
			maxReplica := ""
			for i, seq := range seqs {
				if errs[i] != nil {
					t.Fatalf("caller %d: %v", i, errs[i])
				}
				for j, ep := range seq {
					if j > 0 && ep <= seq[j-1] {
						t.Fatalf("caller %d: epoch %d after %d", i, ep, seq[j-1])
					}
					if other, dup := seen[ep]; dup {
						t.Fatalf("epoch %d issued to callers %d and %d", ep, other, i)
					}
					seen[ep] = i
					if ep > maxEpoch {
						maxEpoch, maxReplica = ep, fmt.Sprintf("hub-%c", 'a'+i%replicas)
					}
				}
			}
			if len(seen) != claims {
				t.Fatalf("%d epochs, want %d", len(seen), claims)
			}
			if got := owner(t, regs[0], "agent-1"); got != (mesh.Owner{ReplicaID: maxReplica, Epoch: maxEpoch}) {
				t.Fatalf("final owner %+v, want %s at the largest epoch %d", got, maxReplica, maxEpoch)
			}
		})
	}
}

// TestMemoryClock: the in-memory store's clock plays the Redis server's: a clock
// stepped back does not lower epochs (stored+1), not even after FlushAll (the hint),
// and TTLs expire by it.
func TestMemoryClock(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	store := mesh.NewMemoryStore(func() time.Time { return time.Unix(0, now.Load()) })
	step := func(d time.Duration) { now.Add(int64(d)) }
	c := cfg("hub-a", nil)
	c.OwnerTTL, c.HubTTL = 10*time.Second, 10*time.Second
	r, err := mesh.NewMemory(mesh.MemoryConfig{Config: c, Store: store})
	if err != nil {
		t.Fatalf("NewMemory: %v", err)
	}
	defer r.Close()

	e1 := claim(t, r, "agent-1", 0)
	if want := uint64(time.Unix(0, now.Load()).UnixMilli()); e1 != want {
		t.Fatalf("epoch %d, want the store's time %d ms", e1, want)
	}
	step(-time.Hour)
	e2 := claim(t, r, "agent-1", 0)
	if e2 != e1+1 {
		t.Fatalf("claim after the clock stepped back = %d, want stored+1 = %d", e2, e1+1)
	}
	store.FlushAll()
	if got := claim(t, r, "agent-1", e2); got != e2+1 {
		t.Fatalf("claim after clock step and FlushAll with hint = %d, want %d", got, e2+1)
	}

	e := claim(t, r, "agent-2", 0)
	addConnectors(t, r, "agent-2", e, "ldap")
	if err := r.PublishHub(ctx(t), "wss://a/mesh"); err != nil {
		t.Fatalf("PublishHub: %v", err)
	}
	step(c.OwnerTTL - time.Millisecond)
	if !heartbeat(t, r, "agent-2", e) {
		t.Fatal("owner expired before its TTL")
	}
	step(c.OwnerTTL - time.Millisecond) // 2 TTLs after the claim, 1 after the heartbeat
	if got := owner(t, r, "agent-2"); got.Epoch != e {
		t.Fatalf("owner after a heartbeat = %+v", got)
	}
	if len(hubs(t, r)) != 0 {
		t.Fatal("hub entry outlived HubTTL")
	}
	step(time.Millisecond)
	if got := owner(t, r, "agent-2"); got != (mesh.Owner{}) {
		t.Fatalf("owner outlived its TTL: %+v", got)
	}
	if n := sweep(t, r); n != 2 {
		t.Fatalf("Sweep removed %d, want agent-2's membership and the hub entry", n)
	}
}
