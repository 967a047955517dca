package wanlink_test

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/internal/wanlink"
)

// BenchmarkThroughput moves 256 KiB per op through one connection at
// Delay 0 (client → link → sink), against the same transfer without the
// link ("direct"); Gbit/s counts the bytes the sink received.
func BenchmarkThroughput(b *testing.B) {
	for _, via := range []string{"direct", "link"} {
		b.Run(via, func(b *testing.B) {
			var got atomic.Int64
			sink := serve(b, func(c *net.TCPConn) {
				buf := make([]byte, 256<<10)
				for {
					n, err := c.Read(buf)
					got.Add(int64(n))
					if err != nil {
						return
					}
				}
			})
			addr := sink.addr()
			if via == "link" {
				addr = startLink(b, wanlink.Config{Target: addr}).Addr()
			}
			c := dial(b, addr)
			buf := make([]byte, 256<<10)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			want := int64(b.N) * int64(len(buf))
			testenv.WaitFor(b, 30*time.Second, "the sink got everything", func() bool { return got.Load() == want })
			b.ReportMetric(float64(want)*8/time.Since(start).Seconds()/1e9, "Gbit/s")
		})
	}
}

// BenchmarkRoundTrip is one-byte echo round trips at Delay 0 and 1 ms;
// "excess-µs" is the round trip minus 2×Delay (what the link adds).
func BenchmarkRoundTrip(b *testing.B) {
	echoSrv := serve(b, echo)
	for _, d := range []time.Duration{0, time.Millisecond} {
		b.Run(d.String(), func(b *testing.B) {
			l := startLink(b, wanlink.Config{Target: echoSrv.addr(), Delay: d})
			c := dial(b, l.Addr())
			roundTrip(b, c) // the dial
			var one [1]byte
			start := time.Now()
			for b.Loop() {
				if _, err := c.Write(one[:]); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one[:]); err != nil {
					b.Fatal(err)
				}
			}
			per := time.Since(start) / time.Duration(b.N)
			b.ReportMetric(float64(per-2*d)/1e3, "excess-µs")
		})
	}
}
