package mesh_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// TestSweeperPrunesStaleEntries: a running Sweeper removes, from Redis itself, the
// membership of an agent whose owner stopped heartbeating and an expired hub entry,
// and keeps those of a live agent; Close stops it.
func TestSweeperPrunesStaleEntries(t *testing.T) {
	testenv.CheckGoroutines(t)
	srv := testenv.StartRedis(t)
	c := cfg("hub-a", nil)
	c.OwnerTTL, c.HubTTL = shortTTL, shortTTL
	r := openRedis(t, srv.URL, c, 0)
	dead := claim(t, r, "agent-dead", 0)
	addConnectors(t, r, "agent-dead", dead, "ldap", "ad")
	live := claim(t, r, "agent-live", 0)
	addConnectors(t, r, "agent-live", live, "ldap")
	if err := r.PublishHub(ctx(t), "wss://a/mesh"); err != nil {
		t.Fatalf("PublishHub: %v", err)
	}

	logs := &testenv.SyncBuffer{}
	s, err := mesh.StartSweeper(mesh.SweeperConfig{Registry: r, Interval: 50 * time.Millisecond, Logger: jsonLogger(logs)})
	if err != nil {
		t.Fatalf("StartSweeper: %v", err)
	}
	defer s.Close()
	testenv.WaitFor(t, 5*time.Second, "sweeper pruned agent-dead and the hub entry", func() bool {
		heartbeat(t, r, "agent-live", live)
		return srv.Do(t, "ZSCORE", "nc:{c:ldap}:agents", "agent-dead") == nil &&
			srv.Do(t, "EXISTS", "nc:{c:ad}:agents") == int64(0) &&
			srv.Do(t, "SISMEMBER", "nc:{idx}:connectors", "ad") == int64(0) &&
			srv.Do(t, "HEXISTS", "nc:{hubs}:urls", "hub-a") == int64(0)
	})
	if got := srv.Do(t, "SISMEMBER", "nc:{idx}:connectors", "ldap"); got != int64(1) {
		t.Fatalf("ldap left the connector index while agent-live serves it: %v", got)
	}
	wantAgents(t, r, "ldap", mesh.AgentInfo{AgentID: "agent-live", Owner: mesh.Owner{ReplicaID: "hub-a", Epoch: live}})
	if !logged(logs, "registry_swept", `"removed":`) {
		t.Fatalf("no registry_swept in the log:\n%s", logs)
	}
	s.Close()
	s.Close() // idempotent
}

func TestStartSweeperConfigErrors(t *testing.T) {
	m, err := mesh.NewMemory(mesh.MemoryConfig{Config: cfg("hub-a", nil)})
	if err != nil {
		t.Fatalf("NewMemory: %v", err)
	}
	defer m.Close()
	for _, c := range []mesh.SweeperConfig{
		{},
		{Registry: m, Interval: -time.Second},
		{Registry: m, Timeout: time.Nanosecond},
	} {
		if s, err := mesh.StartSweeper(c); !errors.Is(err, mesh.ErrInvalidConfig) {
			if s != nil {
				s.Close()
			}
			t.Errorf("StartSweeper(%+v) = %v, want ErrInvalidConfig", c, err)
		}
	}
}
