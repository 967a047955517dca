package check

import (
	"bytes"
	"context"
	"errors"
	"net"
	"syscall"
)

// udpCheck sends a datagram and expects an answer containing expect (conn-check's udp).
type udpCheck struct {
	addr         string
	send, expect []byte
}

func parseUDP(f *fields) prober {
	return &udpCheck{
		addr:   hostPort(f.need("host"), f.port("port", 0)),
		send:   []byte(f.need("send")),
		expect: []byte(f.need("expect")),
	}
}

func (c *udpCheck) name() string { return "udp " + c.addr }

func (c *udpCheck) run(ctx context.Context, r *report) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", c.addr)
	if err != nil {
		r.crit("dial: %s", r.failed(ctx, err))
		return
	}
	defer conn.Close()
	defer guard(ctx, conn)()
	if _, err := conn.Write(c.send); err != nil {
		r.crit("send: %s", r.failed(ctx, err))
		return
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		r.crit("no answer: port unreachable (nothing listens on %s)", plain(c.addr))
	case err != nil:
		r.crit("no answer: %s", r.failed(ctx, err))
	case !bytes.Contains(buf[:n], c.expect):
		r.crit("answer %s does not contain %q", quoteStart(buf[:n]), c.expect)
	default:
		r.ok("answered %d bytes", n)
	}
}
