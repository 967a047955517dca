package mesh_test

import (
	"context"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// BenchmarkRedis measures Claim and Heartbeat against a real redis-server on loopback
// (one caller, so a round trip each; not asserted).
func BenchmarkRedis(b *testing.B) {
	srv := testenv.StartRedis(b)
	r := openRedis(b, srv.URL, cfg("hub-a", nil), 0)
	c, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	b.Run("Claim", func(b *testing.B) {
		b.ReportAllocs()
		var hint uint64
		for b.Loop() {
			e, err := r.Claim(c, "agent-bench", hint)
			if err != nil {
				b.Fatal(err)
			}
			hint = e
		}
	})
	b.Run("Heartbeat", func(b *testing.B) {
		e, err := r.Claim(c, "agent-bench", 0)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			owned, err := r.Heartbeat(c, "agent-bench", e)
			if err != nil || !owned {
				b.Fatalf("Heartbeat: %v, owned=%v", err, owned)
			}
		}
	})
	b.Run("HeartbeatParallel", func(b *testing.B) {
		e, err := r.Claim(c, "agent-bench", 0)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := r.Heartbeat(c, "agent-bench", e); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkMemory is the in-memory baseline.
func BenchmarkMemory(b *testing.B) {
	r, err := mesh.NewMemory(mesh.MemoryConfig{Config: cfg("hub-a", nil)})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	c := context.Background()
	b.Run("Claim", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Claim(c, "agent-bench", 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
