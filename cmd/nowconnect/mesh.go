//go:build linux

package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/config"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/internal/haregistry"
	"github.com/nowconnect/nowconnect/mesh"
)

// meshLimits are the windows this hub grants peers on a link: the tunnel's
// per-stream windows, within the link window (per_link_max_inflight_bytes).
func meshLimits(cfg *config.Hub) flow.Limits {
	link := cfg.HA.Mesh.PerLinkMaxInflightBytes
	window := min(cfg.Tunnel.StreamWindow, link)
	return flow.Limits{Stream: window, MaxStream: max(window, min(cfg.Tunnel.MaxStreamWindow, link)), Tunnel: link}
}

// meshTLS builds the dialer's and the listener's TLS configs from
// ha.mesh.tls (nil, nil when it names no certificate).
func meshTLS(cfg *config.Hub) (dial, listen *tls.Config, err error) {
	t := cfg.HA.Mesh.TLS
	if t.CertFile == "" && t.CABundle == "" {
		return nil, nil, nil
	}
	var pool *x509.CertPool
	if t.CABundle != "" {
		pem, err := os.ReadFile(t.CABundle)
		if err != nil {
			return nil, nil, fmt.Errorf("ha.mesh.tls.ca_bundle: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("ha.mesh.tls.ca_bundle %s: no PEM certificate", t.CABundle)
		}
	}
	dial = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("ha.mesh.tls.cert_file/key_file: %w", err)
		}
		dial.Certificates = []tls.Certificate{cert}
		listen = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, ClientCAs: pool}
		if cfg.HA.Mesh.RequireMTLS {
			listen.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return dial, listen, nil
}

// meshSecret reads ha.mesh.secret_file (nil when not set).
func meshSecret(cfg *config.Hub) ([]byte, error) {
	if cfg.HA.Mesh.SecretFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(cfg.HA.Mesh.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("ha.mesh.secret_file: %w", err)
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) < 32 {
		return nil, fmt.Errorf("ha.mesh.secret_file %s: %d bytes, at least 32 needed", cfg.HA.Mesh.SecretFile, len(b))
	}
	return b, nil
}

// newMesh builds the mesh transport of a hub (not started): handler
// receives its links; discovery, when set, is the registry.
func newMesh(cfg *config.Hub, discovery mesh.PeerSource, handler *haregistry.MeshHandler, set *metrics.Set, log *slog.Logger) (*mesh.Manager, error) {
	dial, listen, err := meshTLS(cfg)
	if err != nil {
		return nil, err
	}
	secret, err := meshSecret(cfg)
	if err != nil {
		return nil, err
	}
	m := &cfg.HA.Mesh
	lim := meshLimits(cfg)
	mc := mesh.ManagerConfig{
		ReplicaID:      cfg.HA.ReplicaID,
		Peers:          m.Peers,
		AdvertiseURL:   m.AdvertiseURL,
		HubTTL:         cfg.HA.OwnerTTL.D(),
		DialTLS:        dial,
		Secret:         secret,
		Listen:         m.Listen,
		Window:         lim.Stream,
		MaxWindow:      lim.MaxStream,
		LinkWindow:     lim.Tunnel,
		Active:         handler.Active,
		SendQueueDepth: m.SendQueueDepth,
		BackoffMax:     time.Duration(m.ConnectBackoffMaxSec) * time.Second,
		Handler:        handler,
		Metrics:        set,
		Logger:         log,
	}
	if m.Listen != "" {
		mc.ListenTLS = listen
	}
	if discovery != nil {
		mc.Discovery = discovery
	}
	return mesh.NewManager(mc)
}

// meshHubConfig puts the mesh into the hub's config.
func meshHubConfig(hc *hub.Config, cfg *config.Hub, mgr *mesh.Manager) {
	hc.Mesh = mgr
	hc.MeshLimits = meshLimits(cfg)
	hc.MetricFamilies = mesh.MetricFamilies()
}
