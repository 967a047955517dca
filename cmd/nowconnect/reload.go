package main

import (
	"errors"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// SIGHUP reloads (cloud and premise): the configuration is read and checked
// as a start would, without binding or connecting; an invalid one is logged
// (config_reload_failed) and changes nothing. A valid one is applied to the
// running process for what can change live (hub.Hub.Reload,
// agent.Agent.Reload, the log level here) and one line says what changed
// (config_reloaded); every other key that changed is named in a warning
// (config_reload_needs_restart), compared with the configuration the
// process started with, so it is named again at every reload until a
// restart. A valid file whose changes could not all be applied (a listener
// that cannot bind, ha.mode to or from off) applies the rest and counts as
// a failure. up has no configuration file: SIGHUP logs that it does not
// reload and stops it gracefully, as SIGTERM does (see runUp).

// Log events of a reload.
const (
	evReloaded          = "config_reloaded"
	evReloadFailed      = "config_reload_failed"
	evNeedsRestart      = "config_reload_needs_restart"
	evReloadUnsupported = "config_reload_unsupported"
)

// reloadMetrics are nowconnect_config_reloads_total{result} and
// nowconnect_config_last_reload_success_timestamp_seconds on a process's
// metric set, registered at start so they exist before the first reload.
type reloadMetrics struct {
	ok, failed *metrics.Counter
	last       *metrics.Gauge
}

func newReloadMetrics(set *metrics.Set) *reloadMetrics {
	return &reloadMetrics{
		ok:     set.GetOrCreateCounter(`nowconnect_config_reloads_total{result="success"}`),
		failed: set.GetOrCreateCounter(`nowconnect_config_reloads_total{result="failure"}`),
		last:   set.GetOrCreateGauge(`nowconnect_config_last_reload_success_timestamp_seconds`, nil),
	}
}

// report logs and counts the outcome of one reload: errs (nil: success),
// the changes applied, and the keys that changed but need a restart.
func (m *reloadMetrics) report(log *slog.Logger, path string, errs error, changes, restart []string) {
	for _, k := range restart {
		log.Warn(evNeedsRestart, "config", path, "key", k, "reason", "this key applies only at start: restart to use the new value")
	}
	if changes == nil {
		changes = []string{}
	}
	if errs != nil {
		m.failed.Inc()
		log.Error(evReloadFailed, "config", path, "errors", errorLines(errs), "applied", changes, "needs_restart", nonNil(restart))
		return
	}
	m.ok.Inc()
	m.last.Set(float64(time.Now().Unix()))
	log.Info(evReloaded, "config", path, "changes", changes, "needs_restart", nonNil(restart))
}

// errorLines splits joined errors (and config.Errors) into one string each.
func errorLines(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		out = append(out, strings.Split(strings.TrimSpace(e.Error()), "\n")...)
	}
	walk(err)
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// restartKeys returns the changed keys that are not among live: a live
// entry ending in "." covers a whole table ("auth.").
func restartKeys(changed []string, live []string) []string {
	var out []string
	for _, k := range changed {
		if !slices.ContainsFunc(live, func(l string) bool {
			return k == l || strings.HasSuffix(l, ".") && strings.HasPrefix(k, l)
		}) {
			out = append(out, k)
		}
	}
	return out
}

// reloadLevel sets lv from the level a reload read (the --log-level given
// at start wins over the file) and describes the change, "" when none.
func reloadLevel(lv *slog.LevelVar, level string) (string, error) {
	l, err := parseLevel(level)
	if err != nil {
		return "", err
	}
	was := lv.Level()
	if was == l {
		return "", nil
	}
	lv.Set(l)
	return "log.level " + strings.ToLower(was.String()) + " → " + strings.ToLower(l.String()), nil
}

var errNoReload = errors.New("up has no configuration file to reload: SIGHUP stops it like SIGTERM; start it again with other flags")
