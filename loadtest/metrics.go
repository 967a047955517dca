package loadtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// metricPrefix selects the gateway counters whose deltas are reported.
const metricPrefix = "nowconnect_tcp_"

// scrapeMetrics fetches a Prometheus text exposition and returns the samples of the
// nowconnect_tcp_* series, keyed by "name{labels}" with the labels sorted.
func scrapeMetrics(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseMetrics(io.LimitReader(resp.Body, 64<<20), metricPrefix)
}

// scrapeSettled scrapes until two scrapes 100ms apart agree (the hub counts FINs and
// closes a moment after the client's last op), for at most settle; it returns the last
// scrape.
func scrapeSettled(ctx context.Context, url string, settle time.Duration) (map[string]float64, error) {
	deadline := time.Now().Add(settle)
	prev, err := scrapeMetrics(ctx, url)
	if err != nil {
		return nil, err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return prev, nil
		}
		cur, err := scrapeMetrics(ctx, url)
		if err != nil {
			return prev, nil
		}
		if maps.Equal(prev, cur) {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

// parseMetrics reads the Prometheus text format (comments and other metrics skipped).
func parseMetrics(r io.Reader, prefix string) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, prefix) {
			continue
		}
		name, labels, rest, err := splitSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %v", line, err)
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("metrics line %q: no value", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %v", line, err)
		}
		out[seriesKey(name, labels)] += v
	}
	return out, sc.Err()
}

// splitSample splits `name{a="x",b="y"} rest` into the name, the label pairs and what
// follows; label values may hold escaped quotes, commas and braces.
func splitSample(line string) (name string, labels [][2]string, rest string, err error) {
	i := strings.IndexAny(line, "{ \t")
	if i < 0 {
		return line, nil, "", nil
	}
	name = line[:i]
	if line[i] != '{' {
		return name, nil, line[i:], nil
	}
	p := i + 1
	for {
		for p < len(line) && (line[p] == ' ' || line[p] == ',') {
			p++
		}
		if p >= len(line) {
			return "", nil, "", fmt.Errorf("unterminated labels")
		}
		if line[p] == '}' {
			return name, labels, line[p+1:], nil
		}
		eq := strings.IndexByte(line[p:], '=')
		if eq < 0 || p+eq+1 >= len(line) || line[p+eq+1] != '"' {
			return "", nil, "", fmt.Errorf("bad label at %q", line[p:])
		}
		key := strings.TrimSpace(line[p : p+eq])
		p += eq + 2
		var val strings.Builder
		for {
			if p >= len(line) {
				return "", nil, "", fmt.Errorf("unterminated label value")
			}
			c := line[p]
			if c == '\\' && p+1 < len(line) {
				switch line[p+1] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(line[p+1])
				}
				p += 2
				continue
			}
			p++
			if c == '"' {
				break
			}
			val.WriteByte(c)
		}
		labels = append(labels, [2]string{key, val.String()})
	}
}

func seriesKey(name string, labels [][2]string) string {
	if len(labels) == 0 {
		return name
	}
	sort.Slice(labels, func(i, j int) bool { return labels[i][0] < labels[j][0] })
	parts := make([]string, len(labels))
	for i, l := range labels {
		parts[i] = l[0] + "=" + strconv.Quote(l[1])
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// gatewayDeltas compares two scrapes.
func gatewayDeltas(url string, before, after map[string]float64, err error) *Gateway {
	g := &Gateway{MetricsURL: url}
	if err != nil {
		g.Error = err.Error()
		return g
	}
	keys := map[string]bool{}
	for k := range before {
		keys[k] = true
	}
	for k := range after {
		keys[k] = true
	}
	for k := range keys {
		d := after[k] - before[k]
		g.Series = append(g.Series, SeriesDelta{Series: k, Before: before[k], After: after[k], Delta: d})
		name, labels, _, perr := splitSample(k + " 0")
		if perr != nil {
			continue
		}
		lab := map[string]string{}
		for _, l := range labels {
			lab[l[0]] = l[1]
		}
		switch name {
		case "nowconnect_tcp_bytes_total":
			switch lab["direction"] {
			case "c2a":
				g.BytesC2A += d
			case "a2c":
				g.BytesA2C += d
			}
		case "nowconnect_tcp_connections_total":
			g.Connections += d
		case "nowconnect_tcp_fin_total":
			g.FIN += d
		case "nowconnect_tcp_rst_total":
			g.RST += d
		}
	}
	sort.Slice(g.Series, func(i, j int) bool { return g.Series[i].Series < g.Series[j].Series })
	return g
}
