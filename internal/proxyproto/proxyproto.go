// Package proxyproto encodes (and parses) the header of the PROXY protocol,
// version 2 (HAProxy's "The PROXY protocol, versions 1 & 2", section 2.2).
// The agent writes it as the first bytes of a target connection, so that a
// target that accepts it (slapd on a pldap:// listener, HAProxy, nginx, …)
// sees the real client instead of the agent. No I/O, no goroutines.
//
// Layout (integers big endian):
//
//	offset  len  field
//	0       12   signature 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A ("\r\n\r\n\0\r\nQUIT\n")
//	12      1    version and command: 0x2_ (version 2) | 0x_0 LOCAL, 0x_1 PROXY
//	13      1    family and transport: 0x11 TCP over IPv4, 0x21 TCP over IPv6,
//	             0x00 UNSPEC (with LOCAL)
//	14      2    length of the address block that follows (and of any TLVs)
//	16      12   TCP over IPv4: source addr (4), destination addr (4),
//	             source port (2), destination port (2)
//	16      36   TCP over IPv6: source addr (16), destination addr (16),
//	             source port (2), destination port (2)
//
// A PROXY header whose source and destination are of different families
// carries both as IPv6, the IPv4 one as an IPv4-mapped address (as HAProxy
// does). LOCAL (the connection is the proxy's own: the receiver keeps the
// real peer address) has an empty address block. AppendProxy and AppendLocal
// emit no TLVs; Parse skips them.
package proxyproto

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Signature opens every version 2 header.
const Signature = "\r\n\r\n\x00\r\nQUIT\n"

// Sizes.
const (
	// HeaderLen is the fixed part: signature, version/command, family,
	// length.
	HeaderLen = 16
	// LenIPv4 and LenIPv6 are the address blocks of TCP over IPv4 and IPv6.
	LenIPv4 = 12
	LenIPv6 = 36
	// MaxLen is the longest header AppendProxy writes.
	MaxLen = HeaderLen + LenIPv6
)

// Byte values of the header.
const (
	cmdLocal  = 0x20 // version 2, LOCAL
	cmdProxy  = 0x21 // version 2, PROXY
	famUnspec = 0x00
	famTCP4   = 0x11
	famTCP6   = 0x21
)

// Errors.
var (
	// ErrInvalidAddr: AppendProxy was given an address that is not valid
	// (the zero netip.AddrPort). Send AppendLocal instead.
	ErrInvalidAddr = errors.New("proxyproto: invalid address")
	// ErrShort: more bytes are needed to parse the header.
	ErrShort = errors.New("proxyproto: short header")
	// ErrSignature: the bytes do not start with Signature.
	ErrSignature = errors.New("proxyproto: no version 2 signature")
	// ErrVersion: a version other than 2, or a command other than LOCAL
	// and PROXY.
	ErrVersion = errors.New("proxyproto: unsupported version or command")
	// ErrFamily: a family or transport other than TCP over IPv4 or IPv6
	// (or UNSPEC) in a PROXY header.
	ErrFamily = errors.New("proxyproto: unsupported address family")
	// ErrLength: the address block is shorter than its family needs.
	ErrLength = errors.New("proxyproto: address block too short")
)

// Header is a parsed header.
type Header struct {
	// Local is set for the LOCAL command (Src and Dst are then zero).
	Local bool
	// Src is the client, Dst the address it connected to (as the proxy
	// saw them; IPv4 unless the header is TCP over IPv6).
	Src, Dst netip.AddrPort
}

// AppendProxy appends a PROXY header for a TCP connection from src to dst
// to b: TCP over IPv4 when both are IPv4 (IPv4-mapped IPv6 counts as IPv4),
// else TCP over IPv6. Zones are dropped. It returns ErrInvalidAddr (and b
// unchanged) if either address is invalid.
func AppendProxy(b []byte, src, dst netip.AddrPort) ([]byte, error) {
	if !src.IsValid() || !dst.IsValid() {
		return b, ErrInvalidAddr
	}
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	b = append(b, Signature...)
	if s.Is4() && d.Is4() {
		b = append(b, cmdProxy, famTCP4, 0, LenIPv4)
		s4, d4 := s.As4(), d.As4()
		b = append(b, s4[:]...)
		b = append(b, d4[:]...)
	} else {
		b = append(b, cmdProxy, famTCP6, 0, LenIPv6)
		s16, d16 := s.As16(), d.As16()
		b = append(b, s16[:]...)
		b = append(b, d16[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port()), nil
}

// AppendLocal appends a LOCAL header (family UNSPEC, no addresses) to b.
func AppendLocal(b []byte) []byte {
	b = append(b, Signature...)
	return append(b, cmdLocal, famUnspec, 0, 0)
}

// Parse parses the header at the start of b and returns it with its length
// (HeaderLen plus the address block and any TLVs, which are skipped). It
// returns ErrShort while b holds less than that.
func Parse(b []byte) (Header, int, error) {
	var h Header
	n := min(len(b), len(Signature))
	if string(b[:n]) != Signature[:n] {
		return h, 0, ErrSignature
	}
	if len(b) < HeaderLen {
		return h, 0, ErrShort
	}
	cmd, fam := b[12], b[13]
	total := HeaderLen + int(binary.BigEndian.Uint16(b[14:16]))
	switch cmd {
	case cmdLocal:
		h.Local = true
	case cmdProxy:
	default:
		return h, 0, ErrVersion
	}
	need := 0
	switch {
	case fam == famTCP4:
		need = LenIPv4
	case fam == famTCP6:
		need = LenIPv6
	case h.Local:
		// LOCAL: the receiver ignores the family and the addresses.
	default:
		return h, 0, ErrFamily
	}
	if total-HeaderLen < need {
		return h, 0, ErrLength
	}
	if len(b) < total {
		return h, 0, ErrShort
	}
	if h.Local {
		return h, total, nil
	}
	a := b[HeaderLen:]
	if fam == famTCP4 {
		h.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:10]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:12]))
	} else {
		h.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])), binary.BigEndian.Uint16(a[32:34]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])), binary.BigEndian.Uint16(a[34:36]))
	}
	return h, total, nil
}
