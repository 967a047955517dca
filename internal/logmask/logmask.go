// Package logmask hides the host part of client addresses in logs
// (log.mask_client_addr): an IPv4 address keeps its /24, an IPv6 address its
// /48, and the port is dropped. An IPv4-mapped IPv6 address counts as IPv4.
// The hub and the agent both log through it, so one rule masks both.
package logmask

import "net/netip"

// Prefix lengths kept by Addr.
const (
	IPv4Bits = 24
	IPv6Bits = 48
)

// Addr returns ap's masked form, "192.0.2.0/24" or "2001:db8:1::/48". An
// invalid ap gives "invalid Prefix" (netip's text for the zero Prefix).
func Addr(ap netip.AddrPort) string {
	return IP(ap.Addr())
}

// IP returns ip's masked form, as Addr.
func IP(ip netip.Addr) string {
	ip = ip.Unmap()
	bits := IPv4Bits
	if ip.Is6() {
		bits = IPv6Bits
	}
	p, _ := ip.Prefix(bits)
	return p.String()
}
