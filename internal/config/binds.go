package config

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// boundAddr is one host:port the hub binds (the control port, a listener, the mesh port)
// and the key that sets it.
type boundAddr struct {
	key  string // "listen", "listeners[2].bind", "ha.mesh.listen"
	addr string // as written, already checked by checkHostPort
}

// bindHost is the host part of a bind address, classified for the overlap rules.
type bindHost struct {
	any   bool       // "", "::": every address of both families (Linux binds :: dual-stack)
	any4  bool       // "0.0.0.0": every IPv4 address
	ip    netip.Addr // a literal address (IPv4-mapped IPv6 unmapped), when valid
	name  string     // a host name, lower case, when not an IP literal
	port  int
	valid bool
}

func parseBind(addr string) bindHost {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return bindHost{}
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return bindHost{}
	}
	b := bindHost{port: p, valid: true}
	if host == "" {
		b.any = true
		return b
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		b.name = strings.ToLower(host)
		return b
	}
	ip = ip.Unmap()
	switch {
	case ip == netip.IPv6Unspecified():
		b.any = true
	case ip == netip.IPv4Unspecified():
		b.any4 = true
	}
	b.ip = ip
	return b
}

// same reports whether a and b name the same address (ports aside).
func (a bindHost) same(b bindHost) bool {
	switch {
	case a.any || b.any:
		return a.any && b.any
	case a.name != "" || b.name != "":
		return a.name == b.name
	}
	return a.ip == b.ip
}

// overlaps reports whether binding both on one port must fail: one of them is a wildcard
// that covers the other. A host name may resolve to any address, so a wildcard covers it.
func (a bindHost) overlaps(b bindHost) bool {
	covers := func(w, x bindHost) bool {
		switch {
		case w.any:
			return true
		case w.any4:
			return x.any4 || x.name != "" || (x.ip.IsValid() && x.ip.Is4())
		}
		return false
	}
	return covers(a, b) || covers(b, a)
}

// checkOverlaps reports every address bound twice, and every wildcard address (0.0.0.0,
// [::], an empty host) that overlaps another address on the same port; the later one of
// each pair is reported, naming the earlier with its place in the file. The same port on
// different specific addresses (127.0.0.1:P and 127.0.0.2:P) is fine, and so is port 0
// (the kernel picks one each time).
func checkOverlaps(r *reporter, binds []boundAddr) {
	hosts := make([]bindHost, len(binds))
	for i, b := range binds {
		hosts[i] = parseBind(b.addr)
	}
	for j := range binds {
		hj := hosts[j]
		if !hj.valid || hj.port == 0 {
			continue
		}
		for i := 0; i < j; i++ {
			hi := hosts[i]
			if !hi.valid || hi.port != hj.port {
				continue
			}
			if hi.same(hj) {
				r.add(binds[j].key, "duplicate bind %q (also %s %q%s)", binds[j].addr, binds[i].key, binds[i].addr, r.where(binds[i].key))
				break
			}
			if hi.overlaps(hj) {
				r.add(binds[j].key, "%q overlaps %s %q%s: a wildcard address takes port %d on every address, so both cannot bind",
					binds[j].addr, binds[i].key, binds[i].addr, r.where(binds[i].key), hj.port)
				break
			}
		}
	}
}
