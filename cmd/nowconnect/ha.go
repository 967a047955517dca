//go:build linux

package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/config"
	"github.com/nowconnect/nowconnect/internal/haregistry"
	"github.com/nowconnect/nowconnect/mesh"
)

// haRegistry is a mesh registry with what cmd manages around it.
type haRegistry interface {
	mesh.Registry
	Close()
}

// haSetup is the HA side of a hub: the registry (Redis with ha.redis_url,
// else in-memory for a single process), its sweeper, and the hub's view.
type haSetup struct {
	mode    hub.Mode
	reg     haRegistry
	sweeper *mesh.Sweeper
	mgr     *mesh.Manager           // the mesh transport, started once the hub serves
	handler *haregistry.MeshHandler // gives mgr's links to the hub
}

// haMode is the mode the config asks for: off unless ha.enabled.
func haMode(cfg *config.Hub) (hub.Mode, error) {
	if !cfg.HA.Enabled {
		return hub.ModeOff, nil
	}
	return hub.ParseMode(cfg.HA.Mode)
}

// checkHA validates what a start would need of HA without connecting.
func checkHA(cfg *config.Hub) error {
	mode, err := haMode(cfg)
	if err != nil || mode == hub.ModeOff {
		return err
	}
	if err := mesh.CheckReplicaID(cfg.HA.ReplicaID); err != nil {
		return fmt.Errorf("ha.replica_id: %w", err)
	}
	if cfg.HA.RedisURL != "" {
		if err := mesh.CheckRedisURL(cfg.HA.RedisURL); err != nil {
			return fmt.Errorf("ha.redis_url: %w", err)
		}
	}
	// The mesh as a start builds it, without starting it (no dial, no bind),
	// over an in-process registry in place of the real one.
	set, log := metrics.NewSet(), slog.New(slog.DiscardHandler)
	reg, err := mesh.NewMemory(mesh.MemoryConfig{Config: registryConfig(cfg, set, log)})
	if err != nil {
		return err
	}
	defer reg.Close()
	mgr, err := newMesh(cfg, reg, &haregistry.MeshHandler{}, set, log)
	if err != nil {
		return fmt.Errorf("ha.mesh: %w", err)
	}
	mgr.Close()
	return nil
}

// registryConfig is the registry's config from [ha].
func registryConfig(cfg *config.Hub, set *metrics.Set, log *slog.Logger) mesh.Config {
	return mesh.Config{
		ReplicaID: cfg.HA.ReplicaID,
		OwnerTTL:  cfg.HA.OwnerTTL.D(),
		HubTTL:    cfg.HA.OwnerTTL.D(),
		Metrics:   set,
		Logger:    log,
	}
}

// openHA builds the registry of an HA mode (nil, nil in mode off). It never
// waits for Redis: a Redis that is down at start only makes the hub
// degraded until it answers.
func openHA(cfg *config.Hub, set *metrics.Set, log *slog.Logger) (*haSetup, error) {
	mode, err := haMode(cfg)
	if err != nil {
		return nil, err
	}
	if mode == hub.ModeOff {
		if cfg.HA.Enabled {
			log.Warn("ha_off", "reason", "ha.enabled is true but ha.mode is off: no registry and no mesh")
		}
		return nil, nil
	}
	if err := checkHA(cfg); err != nil {
		return nil, err
	}
	mc := registryConfig(cfg, set, log)
	s := &haSetup{mode: mode}
	if cfg.HA.RedisURL == "" {
		log.Warn("ha_memory_registry", "reason", "ha.redis_url is not set: ownership is kept in this process only")
		r, err := mesh.NewMemory(mesh.MemoryConfig{Config: mc})
		if err != nil {
			return nil, err
		}
		s.reg = r
	} else {
		r, err := mesh.NewRedis(mesh.RedisConfig{Config: mc, URL: cfg.HA.RedisURL})
		if err != nil {
			return nil, err
		}
		s.reg = r
		if s.sweeper, err = mesh.StartSweeper(mesh.SweeperConfig{Registry: r, Logger: log}); err != nil {
			r.Close()
			return nil, err
		}
	}
	s.handler = &haregistry.MeshHandler{}
	if s.mgr, err = newMesh(cfg, s.reg, s.handler, set, log); err != nil {
		s.close()
		return nil, fmt.Errorf("ha.mesh: %w", err)
	}
	return s, nil
}

// attach gives the mesh's links to h; start starts the mesh once h serves.
func (s *haSetup) attach(h *hub.Hub) { s.handler.SetHub(h) }

func (s *haSetup) start() error {
	if err := s.mgr.Start(); err != nil {
		return fmt.Errorf("ha.mesh: %w", err)
	}
	return nil
}

// clearOwn removes what a previous run under this replica id left, with a
// deadline; a registry that is down is logged and the start goes on.
func (s *haSetup) clearOwn(log *slog.Logger) {
	deadline := time.Now().Add(3 * time.Second)
	for !s.reg.Healthy() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // wait for the first PING, bounded
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(2*time.Second))
	defer cancel()
	if err := s.reg.ClearOwn(ctx); err != nil {
		log.Warn("registry_clear_own_failed", "err", err.Error())
	}
}

func (s *haSetup) close() {
	if s.mgr != nil {
		s.mgr.Close()
	}
	if s.sweeper != nil {
		s.sweeper.Close()
	}
	s.reg.Close()
}

// hubConfig is the hub's HA config.
func (s *haSetup) hubConfig(cfg *config.Hub) *hub.HAConfig {
	return &hub.HAConfig{
		Mode:              s.mode,
		ReplicaID:         cfg.HA.ReplicaID,
		Registry:          haregistry.Adapt(s.reg),
		HeartbeatInterval: cfg.HA.HeartbeatInterval.D(),
	}
}
