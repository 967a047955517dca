package e2e

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/nowconnect/nowconnect/hub"
)

// sinkServer counts and discards what it receives.
func sinkServer(c net.Conn) { _, _ = io.Copy(io.Discard, c) }

// sourceServer sends zeros until the client goes away.
func sourceServer(c net.Conn) {
	buf := make([]byte, 256<<10)
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// BenchmarkThroughput moves bytes through an in-process hub and agent, one
// stream, for profiling the data path (go test -bench Throughput
// -cpuprofile); bench/ measures against direct connections.
func BenchmarkThroughput(b *testing.B) {
	for _, rb := range []int{64 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("readbuf=%dKiB", rb>>10), func(b *testing.B) { benchThroughput(b, rb) })
	}
}

func benchThroughput(b *testing.B, readBuf int) {
	sink := startServer(b, sinkServer)
	src := startServer(b, sourceServer)
	th := startHub(b, []string{"sink", "src"}, func(c *hub.Config) { c.ReadBufferBytes = readBuf })
	startAgent(b, th, "a1", map[string]string{"sink": sink.Addr(), "src": src.Addr()})
	buf := make([]byte, 256<<10)
	b.Run("upload", func(b *testing.B) {
		c, err := net.Dial("tcp", th.Addr["sink"])
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.SetBytes(int64(len(buf)))
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("download", func(b *testing.B) {
		c, err := net.Dial("tcp", th.Addr["src"])
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.SetBytes(int64(len(buf)))
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// rrServer answers every 100-byte request with 1 KiB.
func rrServer(c net.Conn) {
	req := make([]byte, 100)
	resp := make([]byte, 1024)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		if _, err := c.Write(resp); err != nil {
			return
		}
	}
}

// BenchmarkRequestResponse: 50 connections, one 100 B request / 1 KiB
// response in flight each, through an in-process hub and agent.
func BenchmarkRequestResponse(b *testing.B) {
	rr := startServer(b, rrServer)
	th := startHub(b, []string{"rr"})
	startAgent(b, th, "a1", map[string]string{"rr": rr.Addr()})
	const conns = 50
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.Dial("tcp", th.Addr["rr"])
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cs[i] = c
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/conns + 1
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := make([]byte, 100)
			resp := make([]byte, 1024)
			for i := 0; i < per; i++ {
				if _, err := c.Write(req); err != nil {
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
}
