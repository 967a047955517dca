package proxyproto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// unhex decodes hex with spaces, for byte layouts copied from the spec.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The signature, as section 2.2 of the spec lists it.
const sigHex = "0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A"

func TestAppendProxy(t *testing.T) {
	tests := []struct {
		name     string
		src, dst string
		want     string // hex, built field by field from the spec's layout
	}{
		{
			name: "tcp4",
			src:  "192.0.2.7:40000", dst: "10.0.0.5:389",
			// ver|cmd 21, TCP over IPv4 11, len 12, src, dst, sport 40000, dport 389
			want: sigHex + " 21 11 000C C0000207 0A000005 9C40 0185",
		},
		{
			name: "tcp6",
			src:  "[2001:db8::1]:50000", dst: "[2001:db8::2]:636",
			want: sigHex + " 21 21 0024 20010DB8000000000000000000000001 20010DB8000000000000000000000002 C350 027C",
		},
		{
			name: "mapped v4 is v4",
			src:  "[::ffff:198.51.100.9]:1", dst: "[::ffff:127.0.0.1]:65535",
			want: sigHex + " 21 11 000C C6336409 7F000001 0001 FFFF",
		},
		{
			name: "mixed families go as IPv6",
			src:  "[2001:db8::7]:1234", dst: "127.0.0.1:389",
			want: sigHex + " 21 21 0024 20010DB8000000000000000000000007 00000000000000000000FFFF7F000001 04D2 0185",
		},
		{
			name: "zone dropped",
			src:  "[fe80::1%eth0]:5", dst: "[fe80::2%eth0]:6",
			want: sigHex + " 21 21 0024 FE800000000000000000000000000001 FE800000000000000000000000000002 0005 0006",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := AppendProxy([]byte("x"), netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst))
			if err != nil {
				t.Fatal(err)
			}
			want := append([]byte("x"), unhex(t, tc.want)...)
			if !bytes.Equal(got, want) {
				t.Fatalf("got  % X\nwant % X", got, want)
			}
		})
	}
	if _, err := AppendProxy(nil, netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:1")); !errors.Is(err, ErrInvalidAddr) {
		t.Fatalf("invalid source: %v", err)
	}
	if b, err := AppendProxy([]byte("keep"), netip.MustParseAddrPort("127.0.0.1:1"), netip.AddrPort{}); !errors.Is(err, ErrInvalidAddr) || string(b) != "keep" {
		t.Fatalf("invalid destination: %q %v", b, err)
	}
}

func TestAppendLocal(t *testing.T) {
	want := unhex(t, sigHex+" 20 00 0000")
	if got := AppendLocal(nil); !bytes.Equal(got, want) {
		t.Fatalf("got % X, want % X", got, want)
	}
}

func TestParse(t *testing.T) {
	tcp4 := unhex(t, sigHex+" 21 11 000C C0000207 0A000005 9C40 0185")
	tests := []struct {
		name    string
		in      []byte
		want    Header
		n       int
		wantErr error
	}{
		{name: "tcp4", in: tcp4, n: 28,
			want: Header{Src: netip.MustParseAddrPort("192.0.2.7:40000"), Dst: netip.MustParseAddrPort("10.0.0.5:389")}},
		{name: "tcp4 with payload after", in: append(tcp4, "LDAP"...), n: 28,
			want: Header{Src: netip.MustParseAddrPort("192.0.2.7:40000"), Dst: netip.MustParseAddrPort("10.0.0.5:389")}},
		{name: "tcp6", in: unhex(t, sigHex+" 21 21 0024 20010DB8000000000000000000000001 20010DB8000000000000000000000002 C350 027C"), n: 52,
			want: Header{Src: netip.MustParseAddrPort("[2001:db8::1]:50000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:636")}},
		{name: "tcp4 with a TLV", in: unhex(t, sigHex+" 21 11 0010 C0000207 0A000005 9C40 0185 04 0001 00"), n: 32,
			want: Header{Src: netip.MustParseAddrPort("192.0.2.7:40000"), Dst: netip.MustParseAddrPort("10.0.0.5:389")}},
		{name: "local", in: unhex(t, sigHex+" 20 00 0000"), n: 16, want: Header{Local: true}},
		{name: "local with addresses", in: unhex(t, sigHex+" 20 11 000C C0000207 0A000005 9C40 0185"), n: 28, want: Header{Local: true}},
		{name: "empty", in: nil, wantErr: ErrShort},
		{name: "signature prefix", in: []byte("\r\n\r\n"), wantErr: ErrShort},
		{name: "short address block", in: tcp4[:20], wantErr: ErrShort},
		{name: "version 1 text", in: []byte("PROXY TCP4 192.0.2.7 10.0.0.5 40000 389\r\n"), wantErr: ErrSignature},
		{name: "version 3", in: unhex(t, sigHex+" 31 11 000C"), wantErr: ErrVersion},
		{name: "command 2", in: unhex(t, sigHex+" 22 11 000C"), wantErr: ErrVersion},
		{name: "udp", in: unhex(t, sigHex+" 21 12 000C C0000207 0A000005 9C40 0185"), wantErr: ErrFamily},
		{name: "unix", in: unhex(t, sigHex+" 21 31 00D8"), wantErr: ErrFamily},
		{name: "unspec proxy", in: unhex(t, sigHex+" 21 00 0000"), wantErr: ErrFamily},
		{name: "length below family", in: unhex(t, sigHex+" 21 11 0008 C0000207 0A000005"), wantErr: ErrLength},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, n, err := Parse(tc.in)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err == nil && (h != tc.want || n != tc.n) {
				t.Fatalf("got %+v, %d; want %+v, %d", h, n, tc.want, tc.n)
			}
		})
	}
}

func TestNoAllocs(t *testing.T) {
	src, dst := netip.MustParseAddrPort("[2001:db8::1]:50000"), netip.MustParseAddrPort("127.0.0.1:389")
	buf := make([]byte, 0, MaxLen)
	var hdr []byte
	if n := testing.AllocsPerRun(100, func() {
		hdr, _ = AppendProxy(buf[:0], src, dst)
		_, _, _ = Parse(hdr)
		_ = AppendLocal(buf[:0])
	}); n != 0 {
		t.Fatalf("%.1f allocations per header", n)
	}
}

func BenchmarkAppendProxy(b *testing.B) {
	src, dst := netip.MustParseAddrPort("192.0.2.7:40000"), netip.MustParseAddrPort("10.0.0.5:389")
	buf := make([]byte, 0, MaxLen)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = AppendProxy(buf[:0], src, dst)
	}
}

func BenchmarkParse(b *testing.B) {
	hdr, _ := AppendProxy(nil, netip.MustParseAddrPort("[2001:db8::1]:50000"), netip.MustParseAddrPort("[2001:db8::2]:636"))
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = Parse(hdr)
	}
}

// FuzzRoundTrip: any pair of addresses encodes to a header that parses back
// to them (IPv4 as IPv4, or both as IPv6 when the families differ), every
// split of it short of the whole is ErrShort, and arbitrary bytes never
// panic.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte{192, 0, 2, 7}, []byte{10, 0, 0, 5}, uint16(40000), uint16(389), []byte(nil))
	f.Add(bytes.Repeat([]byte{0x20}, 16), []byte{127, 0, 0, 1}, uint16(1), uint16(2), unhex(f, sigHex+" 21 11 000C"))
	f.Add(bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 16), uint16(0), uint16(65535), AppendLocal(nil))
	f.Fuzz(func(t *testing.T, s, d []byte, sp, dp uint16, junk []byte) {
		_, _, _ = Parse(junk) // must not panic
		sa, ok1 := netip.AddrFromSlice(s)
		da, ok2 := netip.AddrFromSlice(d)
		if !ok1 || !ok2 {
			return
		}
		src, dst := netip.AddrPortFrom(sa, sp), netip.AddrPortFrom(da, dp)
		hdr, err := AppendProxy(nil, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		for i := range len(hdr) {
			if _, _, err := Parse(hdr[:i]); err != ErrShort {
				t.Fatalf("prefix %d of %d: %v, want ErrShort", i, len(hdr), err)
			}
		}
		h, n, err := Parse(append(hdr, junk...))
		if err != nil || n != len(hdr) || h.Local {
			t.Fatalf("parse: %+v %d %v", h, n, err)
		}
		want := func(a netip.AddrPort, other netip.Addr) netip.AddrPort {
			ip := a.Addr().Unmap()
			if ip.Is4() && !other.Unmap().Is4() {
				ip = netip.AddrFrom16(ip.As16())
			}
			return netip.AddrPortFrom(ip, a.Port())
		}
		if ws, wd := want(src, da), want(dst, sa); h.Src != ws || h.Dst != wd {
			t.Fatalf("round trip %s → %s gave %s → %s", ws, wd, h.Src, h.Dst)
		}
	})
}
