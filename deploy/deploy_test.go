// Package deploy holds the operator artefacts of NowConnect: Prometheus alert rules and their
// unit tests, an example Prometheus configuration, and a Grafana dashboard. This test file
// checks them with the real tools (promtool, prometheus) and against a real hub: the metric
// names the dashboard and the alerts use must be the ones the hub exports (SPEC §6).
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

const (
	alertsFile     = "prometheus/alerts.yml"
	alertsTestFile = "prometheus/alerts_test.yml"
	promConfigFile = "prometheus/prometheus.yml"
	dashboardFile  = "grafana/nowconnect.json"

	installHint = "run make test (installs prometheus)"
)

// catalog is the metric contract of the hub's connector metrics (SPEC §6) that the
// dashboard and the alerts may use. Histograms are exposed as _bucket, _sum and _count.
var catalog = map[string]string{
	"nowconnect_tcp_connections_total":       "counter",
	"nowconnect_tcp_active_connections":      "gauge",
	"nowconnect_tcp_bytes_total":             "counter",
	"nowconnect_tcp_fin_total":               "counter",
	"nowconnect_tcp_rst_total":               "counter",
	"nowconnect_connection_duration_seconds": "histogram",
	"nowconnect_write_drain_seconds":         "histogram",
	"nowconnect_inbound_queue_size":          "gauge",
	"nowconnect_listener_errors_total":       "counter",
	"nowconnect_pdp_decisions_total":         "counter",
	"nowconnect_agents_connected":            "gauge",
	// HA (SPEC §6 mesh rows, exported by mesh.Manager and the hub) and the registry's health.
	"nowconnect_mesh_links":                    "gauge",
	"nowconnect_mesh_frames_total":             "counter",
	"nowconnect_mesh_rtt_seconds":              "histogram",
	"nowconnect_owner_epoch_mismatch_total":    "counter",
	"nowconnect_cid_dedup_dropped_total":       "counter",
	"nowconnect_mesh_backpressure_drops_total": "counter",
	"nowconnect_mesh_link_reconnects_total":    "counter",
	"nowconnect_mesh_link_errors_total":        "counter",
	"nowconnect_mesh_send_queue_size":          "gauge",
	"nowconnect_mesh_inflight_bytes":           "gauge",
	"nowconnect_registry_up":                   "gauge",
	"nowconnect_registry_errors_total":         "counter",
}

var metricNameRE = regexp.MustCompile(`nowconnect_[a-z_]+`)

// unknownMetrics returns the nowconnect_* names in expr that are not in the catalog.
func unknownMetrics(expr string) []string {
	var bad []string
	for _, name := range metricNameRE.FindAllString(expr, -1) {
		if _, ok := catalog[name]; ok {
			continue
		}
		ok := false
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, cut := strings.CutSuffix(name, suf); cut && catalog[base] == "histogram" {
				ok = true
			}
		}
		if !ok {
			bad = append(bad, name)
		}
	}
	return bad
}

// ---------------------------------------------------------------------------------------
// tools

// tool returns the path of a Prometheus tool; a missing tool fails the test (never skips).
func tool(t *testing.T, name string) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/" + name, "/usr/local/bin/" + name} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("%s not found: %s", name, installHint)
	return ""
}

// run runs a command to completion (bounded by a timeout) and returns its combined output
// and exit code.
func run(t *testing.T, stdin []byte, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
		}
		return string(out), ee.ExitCode()
	}
	return string(out), 0
}

// mustRun fails the test unless the command exits 0.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, code := run(t, nil, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d\n%s", filepath.Base(name), strings.Join(args, " "), code, out)
	}
	return out
}

// ---------------------------------------------------------------------------------------
// alert rules

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTestFile struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name          string `yaml:"name"`
		AlertRuleTest []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `yaml:"exp_labels"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// The alerts of seeds 000, 001 and 002 (SPEC §6: "Ship Prometheus alert rules ... for the panels
// and alerts of the source documents").
var wantAlerts = []string{
	"NowConnectBackpressure",          // 001: p95 write or drain > 100ms for 5m
	"NowConnectInboundQueueHigh",      // 001: queue > 75% of queue_depth_per_cid for 2m
	"NowConnectListenerErrorSpike",    // 001: increase(listener_errors[5m]) > threshold
	"NowConnectPDPDecisionErrors",     // 001: increase(pdp error[5m]) > 0
	"NowConnectNoTraffic",             // 000: no new connections for 15m in business hours
	"NowConnectOneWayTraffic",         // 000: c2a > 0 and a2c == 0 (or vice versa) for 5m
	"NowConnectAgentDisconnected",     // 000: agent gone
	"NowConnectAgentMetricsAbsent",    // 000: agent gone (no series at all)
	"NowConnectMeshHighRTT",           // 002: mesh p95 RTT > 20ms for 5m
	"NowConnectMeshTLSIssues",         // 002: link errors or > 3 reconnects per 5m, for 10m
	"NowConnectEpochMismatch",         // 002: epoch mismatches > 0 in 5m
	"NowConnectMeshBackpressureDrops", // 002: backpressure drops > 0 in 5m
	"NowConnectMeshLinkDown",          // 002: a peer's link not up for > 60s
	"NowConnectRegistryDegraded",      // issue 8: registry unreachable for 1m
	"NowConnectRegistryWatchFailing",  // issue 9: ownership moves not announced (watch/publish failing) while Redis answers
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestAlertRules runs promtool check rules, promtool test rules and promtool check config on
// the shipped files, and checks the rules' shape: every alert of the source documents is
// there, labelled and annotated, uses only catalog metrics, and is unit-tested both firing
// and not firing.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool := tool(t, "promtool")

	t.Run("promtool check rules", func(t *testing.T) {
		out := mustRun(t, promtool, "check", "rules", alertsFile)
		t.Log(strings.TrimSpace(out))
	})
	t.Run("promtool test rules", func(t *testing.T) {
		out := mustRun(t, promtool, "test", "rules", alertsTestFile)
		if !strings.Contains(out, "SUCCESS") {
			t.Fatalf("promtool test rules: no SUCCESS in output:\n%s", out)
		}
	})
	t.Run("promtool check config", func(t *testing.T) {
		// rule_files are resolved relative to the config file's directory.
		out := mustRun(t, promtool, "check", "config", promConfigFile)
		if !strings.Contains(out, "1 rule files found") || !strings.Contains(out, "alerts.yml") {
			t.Fatalf("prometheus.yml does not load alerts.yml:\n%s", out)
		}
	})

	var rules ruleFile
	readYAML(t, alertsFile, &rules)
	var tests ruleTestFile
	readYAML(t, alertsTestFile, &tests)

	t.Run("shape", func(t *testing.T) {
		seen := map[string]bool{}
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				if r.Alert == "" {
					continue
				}
				seen[r.Alert] = true
				if s := r.Labels["severity"]; s != "critical" && s != "warning" {
					t.Errorf("%s: severity label %q, want critical or warning", r.Alert, s)
				}
				for _, a := range []string{"summary", "description", "runbook"} {
					if strings.TrimSpace(r.Annotations[a]) == "" {
						t.Errorf("%s: annotation %q missing", r.Alert, a)
					}
				}
				if bad := unknownMetrics(r.Expr); len(bad) > 0 {
					t.Errorf("%s: metrics not in the hub's catalog: %v", r.Alert, bad)
				}
				if !metricNameRE.MatchString(r.Expr) {
					t.Errorf("%s: expression uses no nowconnect metric: %s", r.Alert, r.Expr)
				}
			}
		}
		for _, a := range wantAlerts {
			if !seen[a] {
				t.Errorf("alert %s missing from %s", a, alertsFile)
			}
		}
		for a := range seen {
			if !contains(wantAlerts, a) {
				t.Errorf("alert %s is not in wantAlerts: add it there (and test it)", a)
			}
		}
	})

	t.Run("every alert tested firing and silent", func(t *testing.T) {
		fires, silent := map[string]int{}, map[string]int{}
		for _, tc := range tests.Tests {
			for _, at := range tc.AlertRuleTest {
				if len(at.ExpAlerts) > 0 {
					fires[at.Alertname]++
				} else {
					silent[at.Alertname]++
				}
			}
		}
		for _, a := range wantAlerts {
			if fires[a] == 0 {
				t.Errorf("%s: no alert_rule_test where it fires", a)
			}
			if silent[a] == 0 {
				t.Errorf("%s: no alert_rule_test where it must not fire", a)
			}
		}
	})

	t.Run("queue threshold is 75% of queue_depth_per_cid", func(t *testing.T) {
		const defaultQueueDepth = 64 // queue_depth_per_cid default (internal/config, seed 001)
		got := alertThreshold(t, rules, "NowConnectInboundQueueHigh")
		if want := 0.75 * defaultQueueDepth; got != want {
			t.Fatalf("NowConnectInboundQueueHigh threshold %v, want 0.75 x %d = %v", got, defaultQueueDepth, want)
		}
		// The dashboard's queue panel draws the same line.
		d := loadDashboard(t)
		found := false
		for _, p := range d.allPanels() {
			if !p.uses("nowconnect_inbound_queue_size") || p.Type != "timeseries" {
				continue
			}
			for _, s := range p.FieldConfig.Defaults.Thresholds.Steps {
				if s.Value != nil && *s.Value == got {
					found = true
				}
			}
		}
		if !found {
			t.Fatalf("no inbound queue timeseries panel with a threshold at %v", got)
		}
	})
}

var thresholdRE = regexp.MustCompile(`>\s*([0-9.]+)\s*$`)

func alertThreshold(t *testing.T, rules ruleFile, alert string) float64 {
	t.Helper()
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert != alert {
				continue
			}
			m := thresholdRE.FindStringSubmatch(strings.TrimSpace(r.Expr))
			if m == nil {
				t.Fatalf("%s: no trailing '> N' in %q", alert, r.Expr)
			}
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("alert %s not found", alert)
	return 0
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------------------
// dashboard

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int     `json:"id"`
	Type       string  `json:"type"`
	Title      string  `json:"title"`
	Datasource *dsRef  `json:"datasource"`
	Panels     []panel `json:"panels"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string `json:"refId"`
		Expr       string `json:"expr"`
		Datasource *dsRef `json:"datasource"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Thresholds struct {
				Steps []struct {
					Value *float64 `json:"value"`
				} `json:"steps"`
			} `json:"thresholds"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

func (p panel) uses(metric string) bool {
	for _, tg := range p.Targets {
		if strings.Contains(tg.Expr, metric) {
			return true
		}
	}
	return false
}

type templateVar struct {
	Type       string `json:"type"`
	Name       string `json:"name"`
	Query      any    `json:"query"`
	Datasource *dsRef `json:"datasource"`
	Multi      bool   `json:"multi"`
	IncludeAll bool   `json:"includeAll"`
}

func (v templateVar) queryString() string {
	switch q := v.Query.(type) {
	case string:
		return q
	case map[string]any:
		s, _ := q["query"].(string)
		return s
	}
	return ""
}

type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []templateVar `json:"list"`
	} `json:"templating"`
}

// allPanels flattens rows (collapsed rows keep their panels inside).
func (d *dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dec.More() {
		t.Fatalf("%s: trailing data after the JSON object", dashboardFile)
	}
	return &d
}

var grafanaVarRE = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|\$([A-Za-z0-9_]+)`)

// substituteGrafana replaces Grafana's variables by values that make plain PromQL:
// template variables (used in regex matchers) by ".*", interval macros by durations.
func substituteGrafana(expr string, vars map[string]bool) (string, error) {
	var err error
	out := grafanaVarRE.ReplaceAllStringFunc(expr, func(m string) string {
		sm := grafanaVarRE.FindStringSubmatch(m)
		name := sm[1] + sm[2]
		switch name {
		case "__rate_interval", "__interval":
			return "1m"
		case "__range":
			return "1h"
		}
		if vars[name] {
			return ".*"
		}
		err = fmt.Errorf("unknown variable %s in %q", m, expr)
		return m
	})
	return out, err
}

var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)

// TestDashboard parses the Grafana dashboard, checks its variables and panels, that every
// PromQL expression uses only the hub's catalog metrics, that the panels of seed 001 are all
// there, and that promtool accepts every expression (as recording rules).
func TestDashboard(t *testing.T) {
	t.Parallel()
	promtool := tool(t, "promtool")
	d := loadDashboard(t)

	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want >= 36", d.SchemaVersion)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q uid %q: both required", d.Title, d.UID)
	}

	// Variables: a Prometheus datasource variable and a connector variable from label_values.
	vars := map[string]bool{}
	var varExprs []string // PromQL selectors inside label_values(...)
	var dsVar, connVar bool
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Type {
		case "datasource":
			if v.Name == "datasource" && v.queryString() == "prometheus" {
				dsVar = true
			}
		case "query":
			q := v.queryString()
			m := labelValuesRE.FindStringSubmatch(q)
			if m == nil {
				t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, q)
				continue
			}
			varExprs = append(varExprs, m[1])
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable %s: datasource %+v, want uid ${datasource}", v.Name, v.Datasource)
			}
			if v.Name == "connector" && m[2] == "connector" {
				connVar = true
			}
		}
	}
	if !dsVar {
		t.Error(`no datasource variable "datasource" of type prometheus`)
	}
	if !connVar {
		t.Error("no connector variable from label_values(..., connector)")
	}

	// Panels.
	type promExpr struct{ where, expr string }
	var exprs []promExpr
	ids := map[int]bool{}
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %q: no gridPos", p.Title)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want uid ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no targets", p.Title)
		}
		for _, tg := range p.Targets {
			where := fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID)
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s: empty expr", where)
				continue
			}
			if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
				t.Errorf("%s: datasource %+v, want uid ${datasource}", where, tg.Datasource)
			}
			exprs = append(exprs, promExpr{where, tg.Expr})
		}
	}
	for i, e := range varExprs {
		exprs = append(exprs, promExpr{fmt.Sprintf("variable query %d", i), e})
	}

	for _, e := range exprs {
		if bad := unknownMetrics(e.expr); len(bad) > 0 {
			t.Errorf("%s: metrics not in the hub's catalog: %v in %s", e.where, bad, e.expr)
		}
		if !metricNameRE.MatchString(e.expr) {
			t.Errorf("%s: uses no nowconnect metric: %s", e.where, e.expr)
		}
	}

	// The panels of seed 001 (and the FIN/RST, active connections, agents of seed 000 and
	// the brief): each needs one expression containing all of the fragments.
	required := [][]string{
		{"histogram_quantile(0.5,", "nowconnect_write_drain_seconds_bucket", `phase="write"`, "connector"},
		{"histogram_quantile(0.95,", "nowconnect_write_drain_seconds_bucket", `phase="write"`, "connector"},
		{"histogram_quantile(0.5,", "nowconnect_write_drain_seconds_bucket", `phase="drain"`, "connector"},
		{"histogram_quantile(0.95,", "nowconnect_write_drain_seconds_bucket", `phase="drain"`, "connector"},
		{"max_over_time(nowconnect_inbound_queue_size", "by (connector)"},
		{"rate(nowconnect_tcp_bytes_total", "by (direction, connector)"},
		{"rate(nowconnect_tcp_connections_total", "[5m]", "by (connector)"},
		{"nowconnect_tcp_active_connections", "by (connector)"},
		{"increase(nowconnect_listener_errors_total", "by (connector, type)"},
		{"increase(nowconnect_pdp_decisions_total", `result="error"`, "by (connector)"},
		{"rate(nowconnect_tcp_fin_total", "event"},
		{"rate(nowconnect_tcp_rst_total", "event"},
		{"nowconnect_agents_connected", "by (connector)"},
		{"histogram_quantile(0.95,", "nowconnect_connection_duration_seconds_bucket", "connector"},
		// Seed 002's golden rows: mesh health (links by state, RTT p50/p95, frames by
		// dir/type) and safety (epoch mismatches, dedup drops, backpressure, registry).
		{"nowconnect_mesh_links", "state"},
		{"histogram_quantile(0.5,", "nowconnect_mesh_rtt_seconds_bucket", "peer"},
		{"histogram_quantile(0.95,", "nowconnect_mesh_rtt_seconds_bucket", "peer"},
		{"rate(nowconnect_mesh_frames_total", "by (dir, type)"},
		{"increase(nowconnect_owner_epoch_mismatch_total"},
		{"increase(nowconnect_cid_dedup_dropped_total"},
		{"increase(nowconnect_mesh_backpressure_drops_total", "reason"},
		{"nowconnect_registry_up"},
	}
	for _, frags := range required {
		found := false
		for _, e := range exprs {
			all := true
			for _, f := range frags {
				if !strings.Contains(e.expr, f) {
					all = false
					break
				}
			}
			if all {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no panel expression contains all of %q", frags)
		}
	}

	// The HA rows exist, by title.
	rows := map[string]bool{}
	for _, p := range d.allPanels() {
		if p.Type == "row" {
			rows[p.Title] = true
		}
	}
	for _, r := range []string{"Mesh health", "Safety"} {
		if !rows[r] {
			t.Errorf("no dashboard row %q", r)
		}
	}

	// promtool syntax check: every expression as a recording rule.
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rs []rule
	for i, e := range exprs {
		plain, err := substituteGrafana(e.expr, vars)
		if err != nil {
			t.Errorf("%s: %v", e.where, err)
			continue
		}
		if strings.Contains(plain, "$") {
			t.Errorf("%s: unsubstituted $ in %q", e.where, plain)
		}
		rs = append(rs, rule{Record: fmt.Sprintf("nowconnect_dashboard:expr_%d", i), Expr: plain})
	}
	doc := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rs}}}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard_rules.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, promtool, "check", "rules", path)
	if want := fmt.Sprintf("%d rules found", len(rs)); !strings.Contains(out, want) {
		t.Fatalf("promtool check rules: want %q:\n%s", want, out)
	}
	t.Logf("%d dashboard expressions pass promtool", len(rs))
}

// ---------------------------------------------------------------------------------------
// end to end: a real hub, real LDAP traffic, a real Prometheus

var httpClient = &http.Client{Timeout: 3 * time.Second}

func httpGet(u string) (int, []byte, error) {
	resp, err := httpClient.Get(u)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// eventually polls f every interval until it returns nil, and fails the test with f's last
// error after timeout.
func eventually(t *testing.T, timeout, interval time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v: %v", what, timeout, err)
		}
		<-tick.C
	}
}

// sample is one line of the text exposition.
type sample struct {
	name   string
	labels map[string]string
	raw    string
	value  float64
}

var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

func parseExposition(t *testing.T, body string) []sample {
	t.Helper()
	var out []sample
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var s sample
		s.raw = line
		s.labels = map[string]string{}
		var rest string
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				t.Fatalf("bad exposition line %q", line)
			}
			s.name = line[:i]
			for _, m := range labelRE.FindAllStringSubmatch(line[i+1:j], -1) {
				s.labels[m[1]] = m[2]
			}
			rest = strings.TrimSpace(line[j+1:])
		} else {
			f := strings.Fields(line)
			s.name, rest = f[0], strings.Join(f[1:], " ")
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			t.Fatalf("no value in exposition line %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			t.Fatalf("bad value in exposition line %q: %v", line, err)
		}
		s.value = v
		out = append(out, s)
	}
	return out
}

// find returns the samples named name whose labels include want.
func find(samples []sample, name string, want map[string]string) []sample {
	var out []sample
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range want {
			if s.labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

func lbl(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// promQuery runs an instant query against Prometheus' HTTP API and returns the vector.
func promQuery(base, q string) ([]float64, error) {
	code, body, err := httpGet(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %s", code, body)
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  []any             `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%v: %s", err, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("status %s: %s", r.Status, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", r.Data.ResultType)
	}
	var vals []float64
	for _, res := range r.Data.Result {
		if len(res.Value) != 2 {
			return nil, fmt.Errorf("bad sample %v", res.Value)
		}
		s, _ := res.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("bad sample value %q", s)
		}
		vals = append(vals, v)
	}
	return vals, nil
}

// TestEndToEnd runs the real gateway (`nowconnect up`) in front of a seeded slapd, drives
// ldapsearch through it, lints its /metrics with promtool, checks the catalog series, and
// then scrapes it with a real Prometheus using the shipped configuration and alert rules.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	promtool := tool(t, "promtool")
	prometheus := tool(t, "prometheus")
	bin := testenv.Binary(t)
	slapd := testenv.StartSlapd(t, 100)

	control := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	hub := testenv.StartProcess(t, bin, []string{"up", "--control", control, "--forward", listen + "=" + slapd.Addr}, nil)

	base := "http://" + control
	metricsText := func() (string, error) {
		code, body, err := httpGet(base + "/metrics")
		if err != nil {
			return "", err
		}
		if code != http.StatusOK {
			return "", fmt.Errorf("/metrics: HTTP %d", code)
		}
		return string(body), nil
	}
	eventually(t, 20*time.Second, 20*time.Millisecond, "hub /readyz 200 and the agent connected", func() error {
		if hub.Exited() {
			t.Fatalf("nowconnect up exited:\n%s", hub.Output())
		}
		code, body, err := httpGet(base + "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/readyz: HTTP %d %s", code, body)
		}
		m, err := metricsText()
		if err != nil {
			return err
		}
		if !strings.Contains(m, `nowconnect_agents_connected{connector="fwd1"} 1`) {
			return errors.New("agent not connected yet")
		}
		return nil
	})

	const searches = 3
	for i := 0; i < searches; i++ {
		out := testenv.LDAPSearch(t, listen, slapd.BaseDN, fmt.Sprintf("(uid=user%04d)", i), "mail")
		if want := "dn: " + testenv.UserDN(i); !strings.Contains(out, want) {
			t.Fatalf("ldapsearch through the gateway: want %q in\n%s", want, out)
		}
	}
	// The big search moves real bytes both ways.
	if out := testenv.LDAPSearch(t, listen, slapd.BaseDN, "(objectClass=inetOrgPerson)"); strings.Count(out, "dn: ") != 100 {
		t.Fatalf("full search through the gateway: want 100 entries, got %d", strings.Count(out, "dn: "))
	}

	// Counters are updated by the hub's event loops; poll until the searches show.
	var body string
	var samples []sample
	eventually(t, 10*time.Second, 20*time.Millisecond, "connection and byte counters", func() error {
		var err error
		if body, err = metricsText(); err != nil {
			return err
		}
		samples = parseExposition(t, body)
		for _, c := range [][]string{
			{"nowconnect_tcp_connections_total", "", ""},
			{"nowconnect_tcp_bytes_total", "direction", "c2a"},
			{"nowconnect_tcp_bytes_total", "direction", "a2c"},
		} {
			want := lbl("connector", "fwd1")
			if c[1] != "" {
				want[c[1]] = c[2]
			}
			ss := find(samples, c[0], want)
			if len(ss) != 1 {
				return fmt.Errorf("%s%v: %d series", c[0], want, len(ss))
			}
			min := 1.0
			if c[0] == "nowconnect_tcp_connections_total" {
				min = searches + 1
			}
			if ss[0].value < min {
				return fmt.Errorf("%s = %v, want >= %v", ss[0].raw, ss[0].value, min)
			}
		}
		return nil
	})

	t.Run("promtool check metrics", func(t *testing.T) {
		out, code := run(t, []byte(body), promtool, "check", "metrics")
		switch code {
		case 0:
			if strings.TrimSpace(out) != "" {
				t.Logf("promtool check metrics (exit 0) says:\n%s", out)
			}
		case 3:
			t.Fatalf("promtool check metrics: exit 3 (lint problems: the hub's /metrics must carry "+
				"# HELP <text> and # TYPE lines for every family):\n%s", out)
		default:
			t.Fatalf("promtool check metrics: exit %d (the exposition does not parse):\n%s", code, out)
		}
	})

	t.Run("catalog series", func(t *testing.T) {
		fwd1 := func(kv ...string) map[string]string { return lbl(append([]string{"connector", "fwd1"}, kv...)...) }
		want := []struct {
			name   string
			labels map[string]string
		}{
			{"nowconnect_tcp_connections_total", fwd1()},
			{"nowconnect_tcp_active_connections", fwd1()},
			{"nowconnect_tcp_bytes_total", fwd1("direction", "c2a")},
			{"nowconnect_tcp_bytes_total", fwd1("direction", "a2c")},
			{"nowconnect_tcp_fin_total", fwd1("event", "sent")},
			{"nowconnect_tcp_fin_total", fwd1("event", "recv")},
			{"nowconnect_tcp_rst_total", fwd1("event", "sent")},
			{"nowconnect_tcp_rst_total", fwd1("event", "recv")},
			{"nowconnect_connection_duration_seconds_bucket", fwd1("le", "+Inf")},
			{"nowconnect_connection_duration_seconds_sum", fwd1()},
			{"nowconnect_connection_duration_seconds_count", fwd1()},
			{"nowconnect_write_drain_seconds_bucket", fwd1("phase", "write", "le", "+Inf")},
			{"nowconnect_write_drain_seconds_bucket", fwd1("phase", "drain", "le", "+Inf")},
			{"nowconnect_write_drain_seconds_sum", fwd1("phase", "write")},
			{"nowconnect_write_drain_seconds_count", fwd1("phase", "write")},
			{"nowconnect_write_drain_seconds_sum", fwd1("phase", "drain")},
			{"nowconnect_write_drain_seconds_count", fwd1("phase", "drain")},
			{"nowconnect_inbound_queue_size", fwd1()},
			{"nowconnect_listener_errors_total", fwd1()},
			{"nowconnect_agents_connected", fwd1()},
		}
		for _, w := range want {
			if len(find(samples, w.name, w.labels)) == 0 {
				t.Errorf("missing series %s%v", w.name, w.labels)
			}
		}
		for _, d := range []string{"c2a", "a2c"} {
			for _, s := range find(samples, "nowconnect_tcp_bytes_total", fwd1("direction", d)) {
				if s.value <= 0 {
					t.Errorf("%s: want > 0 after LDAP traffic", s.raw)
				}
			}
		}
		if ss := find(samples, "nowconnect_agents_connected", fwd1()); len(ss) == 1 && ss[0].value != 1 {
			t.Errorf("%s: want 1", ss[0].raw)
		}
		// Every listener error type is labelled.
		for _, s := range find(samples, "nowconnect_listener_errors_total", fwd1()) {
			if s.labels["type"] == "" {
				t.Errorf("%s: no type label", s.raw)
			}
		}
		// nowconnect_pdp_decisions_total is optional here (no PDP is configured); when the
		// hub exports it, it carries the three results of the contract.
		if pdp := find(samples, "nowconnect_pdp_decisions_total", fwd1()); len(pdp) > 0 {
			for _, r := range []string{"allow", "deny", "error"} {
				if len(find(pdp, "nowconnect_pdp_decisions_total", lbl("result", r))) != 1 {
					t.Errorf("nowconnect_pdp_decisions_total{connector=\"fwd1\",result=%q} missing", r)
				}
			}
		}
		checkHistograms(t, samples)
		// nowconnect_* families beyond the catalog are allowed (SPEC §6: "add what an operator
		// needs ... in the same style"); the dashboard and alerts must not rely on them.
		extras := map[string]bool{}
		for _, s := range samples {
			if strings.HasPrefix(s.name, "nowconnect_") && len(unknownMetrics(s.name)) > 0 {
				extras[s.name] = true
			}
		}
		names := make([]string, 0, len(extras))
		for n := range extras {
			names = append(names, n)
		}
		sort.Strings(names)
		t.Logf("nowconnect series beyond the catalog: %v", names)
	})

	t.Run("prometheus server", func(t *testing.T) {
		dir := t.TempDir()
		writeScrapeConfig(t, dir, control)
		mustRun(t, promtool, "check", "config", filepath.Join(dir, "prometheus.yml"))

		promAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
		prom := testenv.StartProcess(t, prometheus, []string{
			"--config.file=" + filepath.Join(dir, "prometheus.yml"),
			"--storage.tsdb.path=" + filepath.Join(dir, "data"),
			"--web.listen-address=" + promAddr,
		}, nil)
		pbase := "http://" + promAddr
		eventually(t, 30*time.Second, 50*time.Millisecond, "prometheus /-/ready", func() error {
			if prom.Exited() {
				t.Fatalf("prometheus exited:\n%s", prom.Output())
			}
			code, _, err := httpGet(pbase + "/-/ready")
			if err != nil {
				return err
			}
			if code != http.StatusOK {
				return fmt.Errorf("HTTP %d", code)
			}
			return nil
		})
		// The hub is scraped and healthy.
		eventually(t, 20*time.Second, 100*time.Millisecond, `up{job="nowconnect"} == 1`, func() error {
			v, err := promQuery(pbase, `up{job="nowconnect"}`)
			if err != nil {
				return err
			}
			if len(v) != 1 || v[0] != 1 {
				return fmt.Errorf("up = %v", v)
			}
			return nil
		})

		// LDAP traffic for about 5 seconds (bounded), while Prometheus scrapes every second.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start, n := time.Now(), 0
		for ; n < 500 && time.Since(start) < 5*time.Second; n++ {
			out, err := testenv.RunLDAPSearch(ctx, listen, slapd.AdminDN, slapd.AdminPW, slapd.BaseDN, "(objectClass=inetOrgPerson)", "cn", "description")
			if err != nil {
				t.Fatalf("ldapsearch %d through the gateway: %v", n, err)
			}
			if c := strings.Count(out, "dn: "); c != 100 {
				t.Fatalf("ldapsearch %d: %d entries, want 100", n, c)
			}
		}
		t.Logf("%d searches in %v", n, time.Since(start).Round(time.Millisecond))

		for _, q := range []string{
			`histogram_quantile(0.95, sum by (le) (rate(nowconnect_write_drain_seconds_bucket[1m])))`,
			`sum(rate(nowconnect_tcp_bytes_total[1m]))`,
		} {
			var got float64
			eventually(t, 60*time.Second, 200*time.Millisecond, q, func() error {
				v, err := promQuery(pbase, q)
				if err != nil {
					return err
				}
				if len(v) != 1 {
					return fmt.Errorf("%d samples", len(v))
				}
				if math.IsNaN(v[0]) || math.IsInf(v[0], 0) {
					return fmt.Errorf("value %v", v[0])
				}
				got = v[0]
				return nil
			})
			t.Logf("%s = %g", q, got)
			if strings.Contains(q, "bytes") && got <= 0 {
				t.Errorf("%s = %g, want > 0", q, got)
			}
		}

		// The shipped alert rules load and evaluate against the real series without errors;
		// with the agent connected, the agent alerts are inactive.
		eventually(t, 20*time.Second, 200*time.Millisecond, "alert rules evaluated", func() error {
			return checkRules(pbase)
		})
	})
}

// checkHistograms checks each Prometheus histogram series: cumulative buckets, a +Inf bucket
// equal to _count.
func checkHistograms(t *testing.T, samples []sample) {
	t.Helper()
	type key struct{ name, labels string }
	keyOf := func(name string, l map[string]string) key {
		var parts []string
		for k, v := range l {
			if k != "le" {
				parts = append(parts, k+"="+v)
			}
		}
		sort.Strings(parts)
		return key{name, strings.Join(parts, ",")}
	}
	type bucket struct{ le, v float64 }
	buckets := map[key][]bucket{}
	counts := map[key]float64{}
	for _, s := range samples {
		if base, ok := strings.CutSuffix(s.name, "_bucket"); ok && strings.HasPrefix(s.name, "nowconnect_") {
			le, err := strconv.ParseFloat(s.labels["le"], 64)
			if err != nil {
				t.Errorf("%s: bad le: %v", s.raw, err)
				continue
			}
			k := keyOf(base, s.labels)
			buckets[k] = append(buckets[k], bucket{le, s.value})
		}
		if base, ok := strings.CutSuffix(s.name, "_count"); ok && strings.HasPrefix(s.name, "nowconnect_") {
			counts[keyOf(base, s.labels)] = s.value
		}
	}
	for k, bs := range buckets {
		sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
		for i := 1; i < len(bs); i++ {
			if bs[i].v < bs[i-1].v {
				t.Errorf("%s{%s}: bucket le=%g (%g) < le=%g (%g): not cumulative", k.name, k.labels, bs[i].le, bs[i].v, bs[i-1].le, bs[i-1].v)
			}
		}
		last := bs[len(bs)-1]
		if !math.IsInf(last.le, 1) {
			t.Errorf("%s{%s}: no le=\"+Inf\" bucket", k.name, k.labels)
			continue
		}
		if c, ok := counts[k]; !ok || c != last.v {
			t.Errorf("%s{%s}: _count %v (present %v) != +Inf bucket %v", k.name, k.labels, c, ok, last.v)
		}
	}
}

// writeScrapeConfig writes the shipped prometheus.yml into dir with the hub's control
// address as the only target and 1s scrape and evaluation intervals, next to alerts.yml.
func writeScrapeConfig(t *testing.T, dir, target string) {
	t.Helper()
	var cfg map[string]any
	readYAML(t, promConfigFile, &cfg)
	global, _ := cfg["global"].(map[string]any)
	if global == nil {
		t.Fatalf("%s: no global section", promConfigFile)
	}
	global["scrape_interval"] = "1s"
	global["evaluation_interval"] = "1s"
	scs, _ := cfg["scrape_configs"].([]any)
	found := false
	for _, sc := range scs {
		m, _ := sc.(map[string]any)
		if m == nil || m["job_name"] != "nowconnect" {
			continue
		}
		found = true
		if m["metrics_path"] != "/metrics" {
			t.Errorf("job nowconnect: metrics_path %v, want /metrics", m["metrics_path"])
		}
		statics, _ := m["static_configs"].([]any)
		if len(statics) != 1 {
			t.Fatalf("job nowconnect: %d static_configs, want 1", len(statics))
		}
		st, _ := statics[0].(map[string]any)
		targets, _ := st["targets"].([]any)
		if len(targets) == 0 || !strings.HasSuffix(fmt.Sprint(targets[0]), ":8765") {
			t.Errorf("job nowconnect: targets %v, want host:8765", targets)
		}
		st["targets"] = []string{target}
	}
	if !found {
		t.Fatalf("%s: no job_name nowconnect", promConfigFile)
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	rules, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkRules asks Prometheus for its rules: all of wantAlerts loaded, every rule evaluated
// with health "ok", the agent alerts inactive.
func checkRules(base string) error {
	code, body, err := httpGet(base + "/api/v1/rules")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("HTTP %d", code)
	}
	var r struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
					State     string `json:"state"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			seen[rule.Name] = true
			if rule.Health != "ok" {
				return fmt.Errorf("rule %s: health %q %s", rule.Name, rule.Health, rule.LastError)
			}
			if (rule.Name == "NowConnectAgentDisconnected" || rule.Name == "NowConnectAgentMetricsAbsent") && rule.State != "inactive" {
				return fmt.Errorf("rule %s: state %q with the agent connected", rule.Name, rule.State)
			}
		}
	}
	for _, a := range wantAlerts {
		if !seen[a] {
			return fmt.Errorf("alert %s not loaded", a)
		}
	}
	return nil
}
