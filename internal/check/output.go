package check

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Summary is a run's outcome: the worst status wins (CRITICAL > WARNING > UNKNOWN > OK);
// a run without checks is UNKNOWN.
type Summary struct {
	Status  Status
	Counts  [4]int // by Status
	Results []Result
}

// Summarize sums up results.
func Summarize(results []Result) Summary {
	s := Summary{Results: results}
	if len(results) == 0 {
		s.Status = Unknown
	}
	for _, r := range results {
		s.Counts[r.Status]++
		s.Status = Worse(s.Status, r.Status)
	}
	return s
}

// ExitCode is the Nagios plugin exit code of the run.
func (s Summary) ExitCode() int { return int(s.Status) }

// headline is "N checks: a OK, b WARNING, c CRITICAL, d UNKNOWN".
func (s Summary) headline() string {
	return fmt.Sprintf("%d checks: %d OK, %d WARNING, %d CRITICAL, %d UNKNOWN",
		len(s.Results), s.Counts[OK], s.Counts[Warning], s.Counts[Critical], s.Counts[Unknown])
}

// bySeverity returns the results worst first, in file order within a status.
func (s Summary) bySeverity() []Result {
	out := append([]Result(nil), s.Results...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Status.severity() > out[j].Status.severity() })
	return out
}

// WriteNagios writes the Nagios plugin output:
//
//	NOWCONNECT CHECK <STATUS> - N checks: a OK, b WARNING, c CRITICAL, d UNKNOWN | perfdata
//	<STATUS> <name>: <detail>        (one line per check, worst first)
//
// The perfdata of every check is on the first line, per the plugin guidelines.
func WriteNagios(w io.Writer, s Summary) error {
	var b strings.Builder
	b.WriteString("NOWCONNECT CHECK " + s.Status.String() + " - " + s.headline())
	sep := " | "
	for _, r := range s.Results {
		for _, p := range r.Perf {
			b.WriteString(sep + p.String())
			sep = " "
		}
	}
	b.WriteByte('\n')
	for _, r := range s.bySeverity() {
		// '|' would start perfdata in a plugin's long output.
		fmt.Fprintf(&b, "%s %s: %s\n", r.Status, noPipe(r.Name), noPipe(r.Detail))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func noPipe(s string) string { return strings.ReplaceAll(s, "|", "/") }

// String renders the datum as the plugin guidelines write it:
// 'label'=value[UOM];[warn];[crit];[min];[max], trailing empty fields left out.
func (p Perf) String() string {
	label := strings.ReplaceAll(strings.ReplaceAll(p.Label, "=", "_"), "'", "''")
	num := func(v *float64) string {
		if v == nil {
			return ""
		}
		return perfNumber(*v)
	}
	fields := []string{perfNumber(p.Value) + p.UOM, p.Warn, p.Crit, num(p.Min), num(p.Max)}
	for len(fields) > 1 && fields[len(fields)-1] == "" {
		fields = fields[:len(fields)-1]
	}
	return "'" + label + "'=" + strings.Join(fields, ";")
}

// perfNumber writes a value without an exponent (the guidelines allow [-0-9.] only),
// rounded to microseconds for times.
func perfNumber(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "U"
	}
	return strconv.FormatFloat(math.Round(v*1e6)/1e6, 'f', -1, 64)
}

type jsonReport struct {
	Status   string         `json:"status"`
	ExitCode int            `json:"exit_code"`
	Summary  map[string]int `json:"summary"`
	Checks   []jsonCheck    `json:"checks"`
	Errors   []string       `json:"errors,omitempty"`
}

type jsonCheck struct {
	Name            string  `json:"name"`
	Type            string  `json:"type"`
	Status          string  `json:"status"`
	Detail          string  `json:"detail"`
	DurationSeconds float64 `json:"duration_seconds"`
	Perfdata        []Perf  `json:"perfdata"`
}

func (s Summary) jsonReport() jsonReport {
	out := jsonReport{
		Status:   s.Status.String(),
		ExitCode: s.ExitCode(),
		Summary:  map[string]int{"ok": s.Counts[OK], "warning": s.Counts[Warning], "critical": s.Counts[Critical], "unknown": s.Counts[Unknown]},
		Checks:   []jsonCheck{},
	}
	for _, r := range s.Results {
		perf := r.Perf
		if perf == nil {
			perf = []Perf{}
		}
		out.Checks = append(out.Checks, jsonCheck{Name: r.Name, Type: r.Type, Status: r.Status.String(), Detail: r.Detail,
			DurationSeconds: math.Round(r.Duration.Seconds()*1e6) / 1e6, Perfdata: perf})
	}
	return out
}

// WriteJSON writes {"status", "exit_code", "summary", "checks": [{"name", "type",
// "status", "detail", "duration_seconds", "perfdata"}]}, checks in file order.
func WriteJSON(w io.Writer, s Summary) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s.jsonReport())
}

// WriteTable writes a table for a terminal, worst first, then the summary line.
func WriteTable(w io.Writer, s Summary) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tNAME\tTYPE\tTIME\tDETAIL")
	for _, r := range s.bySeverity() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Status, r.Name, r.Type, msDur(r.Duration), r.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%s: %s\n", s.Status, s.headline())
	return err
}

// WriteInputErrors reports a check file (or flag) that could not be loaded, as an UNKNOWN
// run in the given format ("nagios", "json" or "table"); nothing is run.
func WriteInputErrors(w io.Writer, format string, errs []string) error {
	switch format {
	case "json":
		r := Summary{Status: Unknown}.jsonReport()
		r.Errors = errs
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case "nagios":
		first := "bad input"
		if len(errs) > 0 {
			first = errs[0]
		}
		var b strings.Builder
		fmt.Fprintf(&b, "NOWCONNECT CHECK UNKNOWN - %s\n", noPipe(first))
		for _, e := range errs[min(1, len(errs)):] {
			b.WriteString(noPipe(e) + "\n")
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	return nil // table: the errors go to stderr only
}
