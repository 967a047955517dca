package loadtest

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// refQuantile is the nearest-rank quantile of sorted values.
func refQuantile(sorted []int64, q float64) int64 {
	if q <= 0 {
		return sorted[0]
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

func TestHistogramQuantilesMatchSortedReference(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	dists := map[string]func() int64{
		"small-uniform": func() int64 { return rng.Int64N(1000) },
		"log-uniform":   func() int64 { return int64(math.Exp(rng.Float64() * math.Log(30e9))) },
		"lognormal-ms":  func() int64 { return int64(math.Exp(rng.NormFloat64()*0.8 + math.Log(1e6))) },
		"bimodal": func() int64 {
			if rng.IntN(100) < 3 {
				return 200e6 + rng.Int64N(50e6)
			}
			return 300e3 + rng.Int64N(100e3)
		},
	}
	qs := []float64{0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1}
	for name, gen := range dists {
		const n = 100_000
		var h Histogram
		vals := make([]int64, n)
		var sum int64
		for i := range vals {
			v := gen()
			vals[i] = v
			sum += v
			h.Record(time.Duration(v))
		}
		slices.Sort(vals)
		if h.Count() != n {
			t.Fatalf("%s: count %d", name, h.Count())
		}
		if h.Min() != time.Duration(vals[0]) || h.Max() != time.Duration(vals[n-1]) {
			t.Fatalf("%s: min/max %v/%v, want %v/%v", name, h.Min(), h.Max(), vals[0], vals[n-1])
		}
		if want := time.Duration(sum / n); h.Mean() != want {
			t.Fatalf("%s: mean %v, want %v", name, h.Mean(), want)
		}
		for _, q := range qs {
			want := refQuantile(vals, q)
			got := int64(h.Quantile(q))
			if rel := math.Abs(float64(got-want)) / math.Max(float64(want), 1); rel > 0.01 || (want == 0 && got != 0) {
				t.Errorf("%s: q%v = %d, reference %d (relative error %.4f > 1%%)", name, q, got, want, rel)
			}
		}
	}
}

// Every value maps to a bucket whose range holds it, with width ≤ 1/128 of its lower
// bound, and buckets are ordered.
func TestHistogramBuckets(t *testing.T) {
	t.Parallel()
	prev := -1
	check := func(v int64) {
		i := bucketOf(v)
		if i < prev {
			t.Fatalf("bucketOf(%d) = %d < bucketOf of a smaller value (%d)", v, i, prev)
		}
		prev = i
		lo, w := bucketRange(i)
		if v < lo || v >= lo+w {
			t.Fatalf("value %d in bucket %d = [%d, %d)", v, i, lo, lo+w)
		}
		if lo >= subCount && float64(w)/float64(lo) > 1.0/subCount {
			t.Fatalf("bucket %d too wide: %d at %d", i, w, lo)
		}
	}
	for v := int64(0); v < 1<<16; v++ {
		check(v)
	}
	for v := int64(1 << 16); v < 1<<maxExp; v = v*17/16 + 1 {
		check(v)
	}
	if i := bucketOf(math.MaxInt64); i != numBuckets-1 {
		t.Fatalf("huge value bucket %d", i)
	}
}

// Not parallel: AllocsPerRun refuses to run in a parallel test.
func TestHistogramRecordAllocatesNothingAndIsConcurrent(t *testing.T) {
	var h Histogram
	d := 1500 * time.Microsecond
	if n := testing.AllocsPerRun(1000, func() { h.Record(d) }); n != 0 {
		t.Fatalf("Record allocates %v per call", n)
	}
	var g Histogram
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 5000 {
				g.Record(time.Duration(w*5000 + i))
			}
		})
	}
	wg.Wait()
	if g.Count() != 40000 || g.Min() != 0 || g.Max() != 39999 {
		t.Fatalf("count %d min %v max %v", g.Count(), g.Min(), g.Max())
	}
	var m Histogram
	m.Merge(&g)
	m.Merge(&h)
	if m.Count() != g.Count()+h.Count() || m.Max() != d || m.Min() != 0 {
		t.Fatalf("merge: count %d max %v", m.Count(), m.Max())
	}
	if p := m.Quantile(0.5); p < 19000 || p > 21000 {
		t.Fatalf("merged p50 %v", p)
	}
}

func TestParseMetrics(t *testing.T) {
	t.Parallel()
	text := `# HELP nowconnect_tcp_bytes_total bytes
# TYPE nowconnect_tcp_bytes_total counter
nowconnect_tcp_bytes_total{direction="c2a",connector="fwd1"} 120
nowconnect_tcp_bytes_total{connector="fwd1",direction="a2c"} 4.5e3
nowconnect_tcp_connections_total{connector="we\"ird, {name}"} 7 1700000000000
nowconnect_tcp_fin_total 3
nowconnect_other_total{connector="fwd1"} 99
go_goroutines 12
`
	m, err := parseMetrics(strings.NewReader(text), metricPrefix)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		`nowconnect_tcp_bytes_total{connector="fwd1",direction="c2a"}`:  120,
		`nowconnect_tcp_bytes_total{connector="fwd1",direction="a2c"}`:  4500,
		`nowconnect_tcp_connections_total{connector="we\"ird, {name}"}`: 7,
		`nowconnect_tcp_fin_total`:                                      3,
	}
	if len(m) != len(want) {
		t.Fatalf("got %v", m)
	}
	for k, v := range want {
		if m[k] != v {
			t.Fatalf("%s = %v, want %v (all: %v)", k, m[k], v, m)
		}
	}
	after := map[string]float64{}
	for k, v := range m {
		after[k] = v * 2
	}
	g := gatewayDeltas("u", m, after, nil)
	if g.BytesC2A != 120 || g.BytesA2C != 4500 || g.Connections != 7 || g.FIN != 3 {
		t.Fatalf("deltas %+v", g)
	}
}

func TestExpandTemplates(t *testing.T) {
	t.Parallel()
	v := templateVars{base: "dc=x", uid: "a*b", i: 7, g: 3, escapeUID: true}
	got, err := expand("(&(uid={uid})(n={i})(p={i:04})(g={g:02}),{base}", v)
	if err != nil || got != `(&(uid=a\2ab)(n=7)(p=0007)(g=03),dc=x` {
		t.Fatalf("got %q %v", got, err)
	}
	for _, bad := range []string{"{nope}", "{i:x}", "{uid"} {
		if _, err := expand(bad, v); err == nil {
			t.Fatalf("%q: no error", bad)
		}
	}
}
