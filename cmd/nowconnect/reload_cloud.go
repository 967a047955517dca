//go:build linux

package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/config"
)

// cloudLive are the hub's keys that a reload applies (hub.Hub.Reload, the
// log level): everything else that changed needs a restart. ha.enabled is
// here because it and ha.mode make the effective mode, which the hub
// switches or refuses (to or from off) itself.
var cloudLive = []string{"listeners", "allow_cidrs", "pdp.", "auth.", "log.level", "log.mask_client_addr", "ha.mode", "ha.enabled"}

// cloudReloader reloads a running hub from its config file. Owned by
// serveHub's goroutine.
type cloudReloader struct {
	path  string // the config file
	level string // --log-level given at start ("": none), wins over log.level
	c     *cloudSetup
	met   *reloadMetrics
	auth  [sha256.Size]byte // fingerprint of the key material in force
}

// reload runs one SIGHUP: read and check the file as a start does (without
// binding, without connecting to the registry), then apply it.
func (r *cloudReloader) reload() {
	log := r.c.log
	log.Info("config_reload", "config", r.path)
	cfg, hc, ver, err := r.read()
	if err != nil {
		r.met.report(log, r.path, err, nil, nil)
		return
	}
	fp, err := authFingerprint(cfg.Auth)
	if err != nil {
		r.met.report(log, r.path, fmt.Errorf("%s: %w", r.path, err), nil, nil)
		return
	}
	hc.Verifier = nil // the keys in force stay unless they changed
	if fp != r.auth {
		if cfg.Auth.JWKSURL != "" {
			// Warm the new key cache, as a start does.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := ver.RefreshKeys(ctx); err != nil {
				log.Warn("jwks_fetch_failed", "err", err.Error())
			}
			cancel()
		}
		hc.Verifier = ver
	}
	if mode, _ := haMode(cfg); mode != hub.ModeOff {
		hc.HA = &hub.HAConfig{Mode: mode} // Reload reads the mode only
	}
	// The file passed hub.New's checks (read), so Reload applies all it
	// can: the verifier, when given, is in force from here.
	changes, applyErr := r.c.hub.Reload(hc)
	r.auth = fp
	if what, err := reloadLevel(r.c.lv, cfg.Log.Level); err != nil {
		applyErr = errors.Join(applyErr, err)
	} else if what != "" {
		changes = append(changes, what)
	}
	restart := restartKeys(config.Changed(r.c.cfg, cfg), cloudLive)
	r.met.report(log, r.path, applyErr, changes, restart)
}

// read reads the file and checks it exactly as a start does (loadCloud
// with open false): the file, the keys, the listeners, HA, and the hub's
// own checks on a hub that is built and dropped. It returns the file's
// config, the hub config to apply and a verifier built from the file.
func (r *cloudReloader) read() (*config.Hub, hub.Config, *auth.Verifier, error) {
	cfg, err := config.LoadHub(r.path)
	if err != nil {
		return nil, hub.Config{}, nil, err
	}
	if r.level != "" {
		cfg.Log.Level = r.level
	}
	hc, ver, err := checkCloud(r.path, cfg, r.c.log)
	if err != nil {
		return nil, hub.Config{}, nil, err
	}
	check := hc
	check.Metrics = metrics.NewSet() // the dropped hub's metrics go nowhere
	check.HA = checkedHA(cfg)
	if _, err := hub.New(check); err != nil {
		return nil, hub.Config{}, nil, fmt.Errorf("%s: %w", r.path, err)
	}
	return cfg, hc, ver, nil
}

// authFingerprint hashes what the verifier is built from: the auth keys
// and the contents of the key files, so that a secret rotated in place (the
// same jwt_secret_file, new bytes) is a change.
func authFingerprint(a config.Auth) ([sha256.Size]byte, error) {
	h := sha256.New()
	field := func(b []byte) {
		_ = binary.Write(h, binary.BigEndian, uint64(len(b)))
		h.Write(b)
	}
	file := func(name string) error {
		field([]byte(name))
		if name == "" {
			return nil
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("auth: %w", err)
		}
		field(b)
		return nil
	}
	if err := file(a.JWTSecretFile); err != nil {
		return [sha256.Size]byte{}, err
	}
	for _, f := range a.PublicKeyFiles {
		if err := file(f); err != nil {
			return [sha256.Size]byte{}, err
		}
	}
	field([]byte(a.JWKSURL))
	field([]byte(a.Audience))
	field([]byte(a.Issuer))
	field([]byte(a.Leeway.D().String()))
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}
