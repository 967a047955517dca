package check

import "context"

// tcpCheck connects to host:port.
type tcpCheck struct{ addr string }

func parseTCP(f *fields) prober {
	return &tcpCheck{addr: hostPort(f.need("host"), f.port("port", 0))}
}

func (c *tcpCheck) name() string { return "tcp " + c.addr }

func (c *tcpCheck) run(ctx context.Context, r *report) {
	conn, err := dialTCP(ctx, c.addr)
	if err != nil {
		r.crit("connect: %s", r.failed(ctx, err))
		return
	}
	conn.Close()
	r.ok("connected")
}
