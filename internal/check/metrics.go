package check

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// Sample is one sample of a Prometheus text exposition.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics is a parsed exposition.
type Metrics []Sample

// ParseMetrics parses the Prometheus text format (version 0.0.4): comments, then samples
// `name{label="value",...} value [timestamp]`. Any malformed line is an error naming it.
func ParseMetrics(text string) (Metrics, error) {
	var out Metrics
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w: %q", i+1, err, truncate(line, 120))
		}
		out = append(out, s)
	}
	return out, nil
}

func parseSample(line string) (Sample, error) {
	var s Sample
	i := 0
	for i < len(line) && isNameChar(line[i], i == 0) {
		i++
	}
	if i == 0 {
		return s, fmt.Errorf("no metric name")
	}
	s.Name = line[:i]
	rest := line[i:]
	if strings.HasPrefix(rest, "{") {
		labels, n, err := parseLabels(rest)
		if err != nil {
			return s, err
		}
		s.Labels, rest = labels, rest[n:]
	}
	fields := strings.Fields(rest)
	if len(fields) < 1 || len(fields) > 2 || !strings.HasPrefix(rest, " ") && !strings.HasPrefix(rest, "\t") {
		return s, fmt.Errorf("want a value (and an optional timestamp) after the name")
	}
	v, err := parseValue(fields[0])
	if err != nil {
		return s, err
	}
	s.Value = v
	if len(fields) == 2 {
		if _, err := strconv.ParseInt(fields[1], 10, 64); err != nil {
			return s, fmt.Errorf("bad timestamp %q", fields[1])
		}
	}
	return s, nil
}

func isNameChar(c byte, first bool) bool {
	return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9')
}

func parseValue(s string) (float64, error) {
	switch s {
	case "+Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	case "NaN":
		return math.NaN(), nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("bad value %q", s)
	}
	return v, nil
}

// parseLabels parses `{a="x",b="y"}` at the start of s and returns the labels and the
// length consumed.
func parseLabels(s string) (map[string]string, int, error) {
	labels := map[string]string{}
	i := 1
	for {
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if i < len(s) && s[i] == '}' {
			return labels, i + 1, nil
		}
		j := i
		for j < len(s) && isNameChar(s[j], j == i) {
			j++
		}
		if j == i || j+1 >= len(s) || s[j] != '=' || s[j+1] != '"' {
			return nil, 0, fmt.Errorf("bad label at column %d", i+1)
		}
		name := s[i:j]
		var v strings.Builder
		k := j + 2
		for ; k < len(s) && s[k] != '"'; k++ {
			if s[k] == '\\' && k+1 < len(s) {
				k++
				switch s[k] {
				case 'n':
					v.WriteByte('\n')
				default:
					v.WriteByte(s[k])
				}
				continue
			}
			v.WriteByte(s[k])
		}
		if k >= len(s) {
			return nil, 0, fmt.Errorf("unterminated label value")
		}
		if _, dup := labels[name]; dup {
			return nil, 0, fmt.Errorf("duplicate label %s", name)
		}
		labels[name] = v.String()
		i = k + 1
		if i < len(s) && s[i] == ',' {
			i++
		} else if i >= len(s) || s[i] != '}' {
			return nil, 0, fmt.Errorf("want , or } at column %d", i+1)
		}
	}
}

// Value returns the value of the series name whose labels include want, and whether such
// a series exists. More than one match is summed (e.g. agents over several label sets).
func (m Metrics) Value(name string, want map[string]string) (float64, bool) {
	var sum float64
	found := false
next:
	for _, s := range m {
		if s.Name != name {
			continue
		}
		for k, v := range want {
			if s.Labels[k] != v {
				continue next
			}
		}
		sum += s.Value
		found = true
	}
	return sum, found
}

// scrapeMetrics reads and parses base + "/metrics".
func scrapeMetrics(ctx context.Context, cl *http.Client, base string) (Metrics, error) {
	req, err := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, body, err := fetch(ctx, cl, req)
	if err != nil {
		return nil, unwrapURLError(err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	m, err := ParseMetrics(string(body))
	if err != nil {
		return nil, fmt.Errorf("not Prometheus text: %w", err)
	}
	return m, nil
}

// hubClient is the HTTP client of the checks that talk to a hub's control port.
func hubClient(conf *tls.Config) *http.Client { return newHTTPClient(conf, nil, false) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
