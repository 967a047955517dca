package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// Result is the outcome of one run. Durations are in nanoseconds in JSON.
type Result struct {
	Config      ConfigSummary    `json:"config"`
	Started     time.Time        `json:"started"`
	Window      time.Duration    `json:"window_ns"`    // measured time (after warmup)
	RateSpan    time.Duration    `json:"rate_span_ns"` // span of the ops' actual starts: the rates' denominator
	Interrupted bool             `json:"interrupted"`
	WarmupOps   uint64           `json:"warmup_ops"`
	Totals      Totals           `json:"totals"`
	Latency     Latency          `json:"latency"` // successful ops (benign included)
	Scenarios   []ScenarioResult `json:"scenarios"`
	Errors      []ErrorCount     `json:"errors"`
	Gateway     *Gateway         `json:"gateway,omitempty"`
	Checks      []Check          `json:"checks"`
	Passed      bool             `json:"passed"`
}

// ConfigSummary is the run's configuration as reported (no password).
type ConfigSummary struct {
	URL          string        `json:"url"`
	BaseDN       string        `json:"base_dn"`
	BindDN       string        `json:"bind_dn"`
	Scenario     Scenario      `json:"scenario"`
	Mix          string        `json:"mix,omitempty"`
	Concurrency  int           `json:"concurrency"`
	Rate         float64       `json:"offered_rate"` // 0 = closed loop
	Duration     time.Duration `json:"duration_ns"`
	Warmup       time.Duration `json:"warmup_ns"`
	OpTimeout    time.Duration `json:"op_timeout_ns"`
	Reconnect    bool          `json:"reconnect"`
	Filter       string        `json:"filter"`
	UserCount    int           `json:"user_count"`
	UserOffset   int           `json:"user_offset"`
	GroupCount   int           `json:"group_count,omitempty"`
	SLOP99       time.Duration `json:"slo_p99_ns,omitempty"`
	MaxErrorRate float64       `json:"max_error_rate"` // negative = no budget
}

// Totals counts ops. Ops = Succeeded + Errors; Benign ops are part of Succeeded.
type Totals struct {
	Ops       uint64  `json:"ops"`
	Succeeded uint64  `json:"succeeded"`
	Errors    uint64  `json:"errors"`
	ErrorRate float64 `json:"error_rate"`
	Benign    uint64  `json:"benign"`
	Benign20  uint64  `json:"benign_20_type_or_value_exists"`
	Benign16  uint64  `json:"benign_16_no_such_attribute"`
	Rate      float64 `json:"achieved_rate"` // ops/s: Ops over Result.RateSpan
}

// Latency summarises a histogram (≤0.4% relative error; Min, Max, Mean exact).
type Latency struct {
	Count uint64        `json:"count"`
	Min   time.Duration `json:"min_ns"`
	Mean  time.Duration `json:"mean_ns"`
	P50   time.Duration `json:"p50_ns"`
	P95   time.Duration `json:"p95_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p999_ns"`
	Max   time.Duration `json:"max_ns"`
}

// ScenarioResult is the breakdown of one op kind.
type ScenarioResult struct {
	Scenario Scenario `json:"scenario"`
	Totals   Totals   `json:"totals"`
	Latency  Latency  `json:"latency"`
}

// ErrorCount is one error class: an LDAP result code ("LDAP 49 invalidCredentials"), a
// network class ("network: connection reset") or a client-side class.
type ErrorCount struct {
	Class    string   `json:"class"`
	Scenario Scenario `json:"scenario,omitempty"`
	Step     string   `json:"step"`
	Count    uint64   `json:"count"`
	Sample   string   `json:"sample"`
}

// Gateway holds the deltas of the hub's nowconnect_tcp_* counters over the run.
type Gateway struct {
	MetricsURL  string        `json:"metrics_url"`
	Error       string        `json:"error,omitempty"`
	BytesC2A    float64       `json:"bytes_c2a"`
	BytesA2C    float64       `json:"bytes_a2c"`
	Connections float64       `json:"connections"`
	FIN         float64       `json:"fin"`
	RST         float64       `json:"rst"`
	Series      []SeriesDelta `json:"series"`
}

// SeriesDelta is one scraped series before and after the run.
type SeriesDelta struct {
	Series string  `json:"series"`
	Before float64 `json:"before"`
	After  float64 `json:"after"`
	Delta  float64 `json:"delta"`
}

// Check is one gate: the p99 SLO, the error budget, or "some op succeeded".
type Check struct {
	Name   string `json:"name"`
	Limit  string `json:"limit"`
	Actual string `json:"actual"`
	Passed bool   `json:"passed"`
}

func summarize(c *Config) ConfigSummary {
	s := ConfigSummary{
		URL: c.URL, BaseDN: c.BaseDN, BindDN: c.BindDN, Scenario: c.Scenario,
		Concurrency: c.Concurrency, Rate: c.Rate, Duration: c.Duration, Warmup: c.Warmup,
		OpTimeout: c.OpTimeout, Reconnect: c.Reconnect, Filter: c.Filter,
		UserCount: c.UserCount, UserOffset: c.UserOffset, SLOP99: c.SLOP99, MaxErrorRate: c.MaxErrorRate,
	}
	if c.Scenario == Mixed {
		s.Mix = FormatMix(c.Mix)
	}
	if c.usesKind(GroupWrite) {
		s.GroupCount = c.GroupCount
	}
	return s
}

// evaluate runs the gates.
func (r *Result) evaluate() {
	r.Checks = nil
	if r.Config.SLOP99 > 0 {
		r.Checks = append(r.Checks, Check{
			Name: "p99 latency", Limit: "≤ " + fmtDur(r.Config.SLOP99), Actual: fmtDur(r.Latency.P99),
			Passed: r.Latency.Count > 0 && r.Latency.P99 <= r.Config.SLOP99,
		})
	}
	if r.Config.MaxErrorRate >= 0 {
		r.Checks = append(r.Checks, Check{
			Name: "error rate", Limit: "≤ " + fmtPct(r.Config.MaxErrorRate),
			Actual: fmt.Sprintf("%s (%d of %d)", fmtPct(r.Totals.ErrorRate), r.Totals.Errors, r.Totals.Ops),
			Passed: r.Totals.ErrorRate <= r.Config.MaxErrorRate,
		})
	}
	r.Checks = append(r.Checks, Check{
		Name: "successful ops", Limit: "> 0", Actual: fmt.Sprint(r.Totals.Succeeded),
		Passed: r.Totals.Succeeded > 0,
	})
	r.Passed = true
	for _, c := range r.Checks {
		r.Passed = r.Passed && c.Passed
	}
}

// Failed returns the gates that were missed.
func (r *Result) Failed() []Check {
	var out []Check
	for _, c := range r.Checks {
		if !c.Passed {
			out = append(out, c)
		}
	}
	return out
}

// ExitCode is 0 when every gate passed, 1 otherwise.
func (r *Result) ExitCode() int {
	if r.Passed {
		return 0
	}
	return 1
}

// WriteJSON writes the result as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteMarkdown writes the human report.
func (r *Result) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	c := &r.Config
	verdict := "PASS"
	if !r.Passed {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "# LDAP load test: %s — %s\n\n", c.Scenario, verdict)
	if r.Interrupted {
		b.WriteString("**Interrupted**: the run was cancelled before its duration; figures cover the time until then.\n\n")
	}
	mode := "closed loop (as fast as possible)"
	if c.Rate > 0 {
		mode = fmt.Sprintf("open loop, %.4g ops/s offered (latency from intended start)", c.Rate)
	}
	conn := "persistent per worker"
	if c.Reconnect {
		conn = "new connection per op"
	}
	b.WriteString("| setting | value |\n| --- | --- |\n")
	row := func(k, v string) { fmt.Fprintf(&b, "| %s | %s |\n", k, mdEscape(v)) }
	row("target", c.URL)
	row("started", r.Started.UTC().Format(time.RFC3339))
	row("scenario", string(c.Scenario))
	if c.Mix != "" {
		row("mix", c.Mix)
	}
	row("mode", mode)
	row("concurrency", fmt.Sprintf("%d workers, %s", c.Concurrency, conn))
	row("duration", fmt.Sprintf("%s measured, ops started over %s (warmup %s, %d ops not recorded)", fmtDur(r.Window), fmtDur(r.RateSpan), c.Warmup, r.WarmupOps))
	row("users", fmt.Sprintf("%d from index %d", c.UserCount, c.UserOffset))
	if c.GroupCount > 0 {
		row("groups", fmt.Sprint(c.GroupCount))
	}
	row("bind DN", orDash(c.BindDN))
	row("base DN", c.BaseDN)
	row("filter", c.Filter)

	t := &r.Totals
	b.WriteString("\n## Throughput\n\n| ops | ops/s | succeeded | errors | error rate | benign | benign 20 (typeOrValueExists, add) | benign 16 (noSuchAttribute, delete) |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b, "| %d | %.1f | %d | %d | %s | %d | %d | %d |\n", t.Ops, t.Rate, t.Succeeded, t.Errors, fmtPct(t.ErrorRate), t.Benign, t.Benign20, t.Benign16)

	b.WriteString("\n## Latency (successful ops)\n\n| scope | ops | ops/s | errors | p50 | p95 | p99 | p99.9 | max | mean |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	lat := func(name string, t Totals, l Latency) {
		fmt.Fprintf(&b, "| %s | %d | %.1f | %d | %s | %s | %s | %s | %s | %s |\n", name, t.Ops, t.Rate, t.Errors,
			fmtDur(l.P50), fmtDur(l.P95), fmtDur(l.P99), fmtDur(l.P999), fmtDur(l.Max), fmtDur(l.Mean))
	}
	lat("all", r.Totals, r.Latency)
	if len(r.Scenarios) > 1 {
		for _, s := range r.Scenarios {
			lat(string(s.Scenario), s.Totals, s.Latency)
		}
	}

	b.WriteString("\n## Errors\n\n")
	if len(r.Errors) == 0 {
		b.WriteString("None.\n")
	} else {
		b.WriteString("| class | scenario | step | count | sample |\n| --- | --- | --- | ---: | --- |\n")
		for _, e := range r.Errors {
			fmt.Fprintf(&b, "| %s | %s | %s | %d | %s |\n", mdEscape(e.Class), orDash(string(e.Scenario)), e.Step, e.Count, mdEscape(e.Sample))
		}
	}

	if g := r.Gateway; g != nil {
		fmt.Fprintf(&b, "\n## Gateway counters (%s, after − before)\n\n", mdEscape(g.MetricsURL))
		if g.Error != "" {
			fmt.Fprintf(&b, "Scrape after the run failed: %s\n", mdEscape(g.Error))
		} else {
			b.WriteString("| counter | delta |\n| --- | ---: |\n")
			fmt.Fprintf(&b, "| bytes c2a (client→agent) | %.0f |\n| bytes a2c (agent→client) | %.0f |\n| connections | %.0f |\n| FIN | %.0f |\n| RST | %.0f |\n",
				g.BytesC2A, g.BytesA2C, g.Connections, g.FIN, g.RST)
			if len(g.Series) > 0 {
				b.WriteString("\n| series | before | after | delta |\n| --- | ---: | ---: | ---: |\n")
				for _, s := range g.Series {
					fmt.Fprintf(&b, "| `%s` | %.0f | %.0f | %.0f |\n", s.Series, s.Before, s.After, s.Delta)
				}
			}
		}
	}

	b.WriteString("\n## Gates\n\n| gate | limit | actual | result |\n| --- | --- | --- | --- |\n")
	for _, ch := range r.Checks {
		res := "pass"
		if !ch.Passed {
			res = "**FAIL**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", ch.Name, ch.Limit, ch.Actual, res)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

func fmtPct(f float64) string { return fmt.Sprintf("%.3g%%", f*100) }

// fmtDur prints a duration with 3 significant digits (1.23ms, 456µs, 2.5s).
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", int64(d))
	case d < time.Millisecond:
		return fmt.Sprintf("%.3gµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.3gms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.3gs", d.Seconds())
	}
}
