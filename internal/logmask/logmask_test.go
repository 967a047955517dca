package logmask

import (
	"net/netip"
	"testing"
)

func TestAddr(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{in: "192.0.2.77:40000", want: "192.0.2.0/24"},
		{in: "10.1.2.3:1", want: "10.1.2.0/24"},
		{in: "[::ffff:198.51.100.9]:389", want: "198.51.100.0/24"},
		{in: "[2001:db8:1:2:3:4:5:6]:636", want: "2001:db8:1::/48"},
		{in: "[::1]:22", want: "::/48"},
		{in: "[fe80::1%eth0]:22", want: "fe80::/48"},
	}
	for _, tc := range tests {
		if got := Addr(netip.MustParseAddrPort(tc.in)); got != tc.want {
			t.Errorf("Addr(%s) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := Addr(netip.AddrPort{}); got != "invalid Prefix" {
		t.Errorf("Addr(zero) = %q", got)
	}
}
