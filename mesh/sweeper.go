package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Sweepable is what a Sweeper needs of a registry.
type Sweepable interface {
	Sweep(ctx context.Context) (removed int, err error)
}

// Defaults of SweeperConfig.
const (
	DefaultSweepInterval = 10 * time.Second
	DefaultSweepTimeout  = 5 * time.Second
)

// SweeperConfig configures a Sweeper.
type SweeperConfig struct {
	// Registry is swept. Required.
	Registry Sweepable
	// Interval between sweeps, jittered by up to +20% so hubs started together do not
	// sweep in step. Default 10s.
	Interval time.Duration
	// Timeout bounds one sweep. Default 5s.
	Timeout time.Duration
	// Logger receives registry_swept (debug) and registry_sweep_failed (warn; debug
	// while the registry is unavailable, which registry_degraded already reports).
	// Default: discard.
	Logger *slog.Logger
}

// Sweeper runs Sweep periodically in its own goroutine (sweepLoop) until Close. Every
// hub may run one: sweeps are idempotent and safe to run concurrently.
type Sweeper struct {
	// set at construction
	cfg SweeperConfig

	cancel    context.CancelFunc
	done      chan struct{} // closed when sweepLoop has returned
	closeOnce sync.Once
}

// StartSweeper validates cfg and starts the sweep loop; the first sweep runs after
// one Interval.
func StartSweeper(cfg SweeperConfig) (*Sweeper, error) {
	if cfg.Registry == nil {
		return nil, fmt.Errorf("%w: SweeperConfig.Registry is required", ErrInvalidConfig)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Interval", &cfg.Interval, DefaultSweepInterval},
		{"Timeout", &cfg.Timeout, DefaultSweepTimeout},
	} {
		switch {
		case *d.v == 0:
			*d.v = d.def
		case *d.v < time.Millisecond:
			return nil, fmt.Errorf("%w: SweeperConfig.%s is %v, must be at least 1ms (0 for the default %v)", ErrInvalidConfig, d.name, *d.v, d.def)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background()) // the loop's lifetime; each sweep has a deadline
	s := &Sweeper{cfg: cfg, cancel: cancel, done: make(chan struct{})}
	go s.sweepLoop(ctx)
	return s, nil
}

func (s *Sweeper) sweepLoop(ctx context.Context) {
	defer close(s.done)
	timer := time.NewTimer(s.next())
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		s.sweepOnce(ctx)
		timer.Reset(s.next())
	}
}

func (s *Sweeper) next() time.Duration {
	return s.cfg.Interval + rand.N(s.cfg.Interval/5+1)
}

func (s *Sweeper) sweepOnce(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	removed, err := s.cfg.Registry.Sweep(ctx)
	log := s.cfg.Logger
	switch {
	case err == nil:
		log.Debug("registry_swept", "removed", removed)
	case errors.Is(err, ErrUnavailable) || errors.Is(err, ErrClosed):
		log.Debug("registry_sweep_failed", "removed", removed, "err", err.Error())
	default:
		log.Warn("registry_sweep_failed", "removed", removed, "err", err.Error())
	}
}

// Close stops the sweep loop and waits for it (and a sweep in progress, bounded by
// Timeout).
func (s *Sweeper) Close() {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
	})
}
