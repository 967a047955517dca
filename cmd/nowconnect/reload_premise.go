package main

import (
	"errors"
	"log/slog"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/internal/config"
)

// premiseLive are the agent's keys that a reload applies (agent.Agent.Reload,
// the log level): everything else that changed needs a restart. The token
// file needs none: it is read again before every connection.
var premiseLive = []string{"connectors", "log.level", "log.mask_client_addr"}

// premiseReloader reloads a running agent from its config file, the
// environment and the flags given at start. Owned by runAgent's goroutine.
type premiseReloader struct {
	what        string // the config file, or "flags and environment"
	path        string // the config file ("": none)
	getenv      func(string) string
	blame       map[string]string
	level       string // --log-level given at start ("": none)
	metricsAddr string // --metrics-listen given at start ("": none)
	a           *premiseSetup
	cfg         *config.Agent // as the agent started
	log         *slog.Logger
	met         *reloadMetrics
}

// reload runs one SIGHUP: read and check everything as a start does
// (without connecting), then apply it.
func (r *premiseReloader) reload() {
	r.log.Info("config_reload", "config", r.what)
	cfg, err := readPremise(r.path, r.getenv, r.blame, r.level, r.metricsAddr)
	var ac agent.Config
	if err == nil {
		ac, err = agentConfig(cfg)
	}
	if err == nil {
		// The agent's own checks on one built and dropped (no metrics, no logs).
		check := ac
		check.Logger = slog.New(slog.DiscardHandler)
		_, err = agent.New(check)
	}
	if err != nil {
		r.met.report(r.log, r.what, err, nil, nil)
		return
	}
	changes, applyErr := r.a.agent.Reload(ac)
	if what, err := reloadLevel(r.a.lv, cfg.Log.Level); err != nil {
		applyErr = errors.Join(applyErr, err)
	} else if what != "" {
		changes = append(changes, what)
	}
	restart := restartKeys(config.Changed(r.cfg, cfg), premiseLive)
	r.met.report(r.log, r.what, applyErr, changes, restart)
}
