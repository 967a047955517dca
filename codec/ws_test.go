package codec

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/gobwas/ws"
)

// wsLengths covers every length class of RFC 6455 and both sides of each
// boundary: 7-bit (0..125), 16-bit (126..65535) and 64-bit (65536..2^63-1).
var wsLengths = []int64{0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 32, 1 << 40, math.MaxInt64}

// wsValid reports whether h is a header ParseWSHeader must accept: no RSV
// bits, a defined opcode, and a control frame only with FIN and ≤ 125 bytes.
func wsValid(h ws.Header) bool {
	if h.Rsv != 0 || h.OpCode.IsReserved() {
		return false
	}
	return !h.OpCode.IsControl() || (h.Fin && h.Length <= 125)
}

// wsHeaders returns every combination of opcode, FIN, RSV (none and one of
// each bit), mask and length class.
func wsHeaders() []ws.Header {
	var hs []ws.Header
	for op := ws.OpCode(0); op <= 0x0f; op++ {
		for _, fin := range []bool{true, false} {
			for _, rsv := range []byte{0, 1, 2, 4, 7} {
				for _, masked := range []bool{false, true} {
					for _, n := range wsLengths {
						h := ws.Header{Fin: fin, Rsv: rsv, OpCode: op, Length: n, Masked: masked}
						if masked {
							h.Mask = [4]byte{0xde, 0xad, byte(n), byte(op)}
						}
						hs = append(hs, h)
					}
				}
			}
		}
	}
	return hs
}

func gobwasBytes(t testing.TB, h ws.Header) []byte {
	var buf bytes.Buffer
	if err := ws.WriteHeader(&buf, h); err != nil {
		t.Fatalf("ws.WriteHeader(%+v): %v", h, err)
	}
	return buf.Bytes()
}

func TestWSHeaderMatchesGobwas(t *testing.T) {
	var valid, invalid int
	for _, h := range wsHeaders() {
		want := gobwasBytes(t, h)

		var put [MaxWSHeaderLen]byte
		n := PutWSHeader(put[:], h)
		if !bytes.Equal(put[:n], want) {
			t.Fatalf("PutWSHeader(%+v) = %x, ws.WriteHeader = %x", h, put[:n], want)
		}
		if app := AppendWSHeader([]byte("x"), h); !bytes.Equal(app[1:], want) || app[0] != 'x' {
			t.Fatalf("AppendWSHeader(%+v) = %x, want x + %x", h, app, want)
		}
		if l := WSHeaderLen(h); l != len(want) {
			t.Fatalf("WSHeaderLen(%+v) = %d, want %d", h, l, len(want))
		}

		// Parse with bytes after the header, as it sits in a stream.
		in := append(bytes.Clone(want), 0xaa, 0xbb)
		got, n, err := ParseWSHeader(in)
		if !wsValid(h) {
			invalid++
			if !errors.Is(err, ErrWSProtocol) {
				t.Fatalf("ParseWSHeader(%x) for %+v: err = %v, want ErrWSProtocol", want, h, err)
			}
			continue
		}
		valid++
		if err != nil {
			t.Fatalf("ParseWSHeader(%x) for %+v: %v", want, h, err)
		}
		if n != len(want) || got != h {
			t.Fatalf("ParseWSHeader(%x) = %+v, %d; want %+v, %d", want, got, n, h, len(want))
		}
		ref, err := ws.ReadHeader(bytes.NewReader(in))
		if err != nil || ref != got {
			t.Fatalf("ws.ReadHeader(%x) = %+v, %v; ParseWSHeader = %+v", want, ref, err, got)
		}
	}
	if valid == 0 || invalid == 0 {
		t.Fatalf("%d valid and %d invalid headers: the table lost a class", valid, invalid)
	}
}

func TestWSHeaderPrefixes(t *testing.T) {
	for _, h := range wsHeaders() {
		if !wsValid(h) {
			continue
		}
		b := AppendWSHeader(nil, h)
		for k := 0; k < len(b); k++ {
			if _, n, err := ParseWSHeader(b[:k]); !errors.Is(err, ErrShortHeader) || n != 0 {
				t.Fatalf("ParseWSHeader(%x) (prefix %d of %x) = %d, %v; want ErrShortHeader", b[:k], k, b, n, err)
			}
		}
	}
}

func TestWSHeaderProtocolErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
	}{
		{name: "RSV1", in: []byte{0x80 | 0x40 | byte(ws.OpBinary), 0}},
		{name: "RSV2", in: []byte{0x80 | 0x20 | byte(ws.OpBinary), 0}},
		{name: "RSV3", in: []byte{0x80 | 0x10 | byte(ws.OpText), 5}},
		{name: "RSV on masked", in: []byte{0x80 | 0x70 | byte(ws.OpBinary), 0x80 | 1, 1, 2, 3, 4}},
		{name: "ping 126", in: []byte{0x80 | byte(ws.OpPing), 126, 0, 126}},
		{name: "close 64-bit length", in: []byte{0x80 | byte(ws.OpClose), 127, 0, 0, 0, 0, 0, 1, 0, 0}},
		{name: "pong without FIN", in: []byte{byte(ws.OpPong), 0}},
		{name: "close without FIN", in: []byte{byte(ws.OpClose), 0x80 | 2, 1, 2, 3, 4}},
		{name: "16-bit length 0", in: []byte{0x82, 126, 0, 0}},
		{name: "16-bit length 125", in: []byte{0x82, 126, 0, 125}},
		{name: "64-bit length 0", in: []byte{0x82, 127, 0, 0, 0, 0, 0, 0, 0, 0}},
		{name: "64-bit length 125", in: []byte{0x82, 127, 0, 0, 0, 0, 0, 0, 0, 125}},
		{name: "64-bit length 65535", in: []byte{0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff}},
		{name: "64-bit length MSB", in: []byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}},
		{name: "64-bit length all ones", in: []byte{0x82, 0x80 | 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}},
		{name: "opcode 3", in: []byte{0x83, 0}},
		{name: "opcode 7", in: []byte{0x87, 0}},
		{name: "opcode 0xb", in: []byte{0x8b, 0}},
		{name: "opcode 0xf", in: []byte{0x8f, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if h, n, err := ParseWSHeader(tt.in); !errors.Is(err, ErrWSProtocol) {
				t.Fatalf("ParseWSHeader(%x) = %+v, %d, %v; want ErrWSProtocol", tt.in, h, n, err)
			}
		})
	}
}

func TestWSHeaderValid(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want ws.Header
	}{
		{
			name: "continuation without FIN",
			in:   []byte{0x00, 3},
			want: ws.Header{OpCode: ws.OpContinuation, Length: 3},
		},
		{
			name: "ping 125 masked",
			in:   []byte{0x89, 0x80 | 125, 9, 8, 7, 6},
			want: ws.Header{Fin: true, OpCode: ws.OpPing, Length: 125, Masked: true, Mask: [4]byte{9, 8, 7, 6}},
		},
		{
			name: "binary 16-bit 126",
			in:   []byte{0x82, 126, 0, 126},
			want: BinaryHeader(126),
		},
		{
			name: "binary 64-bit 65536",
			in:   []byte{0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0},
			want: BinaryHeader(65536),
		},
		{
			name: "binary 64-bit max",
			in:   []byte{0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
			want: ws.Header{Fin: true, OpCode: ws.OpBinary, Length: math.MaxInt64},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, n, err := ParseWSHeader(tt.in)
			if err != nil || n != len(tt.in) || h != tt.want {
				t.Fatalf("ParseWSHeader(%x) = %+v, %d, %v; want %+v, %d", tt.in, h, n, err, tt.want, len(tt.in))
			}
		})
	}
}

func TestWSZeroAlloc(t *testing.T) {
	masked := ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 70000, Masked: true, Mask: [4]byte{1, 2, 3, 4}}
	in := AppendWSHeader(nil, masked)
	var out [MaxWSHeaderLen]byte
	buf := make([]byte, 0, 64)
	var sink int
	tests := []struct {
		name string
		f    func()
	}{
		{name: "ParseWSHeader", f: func() {
			h, n, err := ParseWSHeader(in)
			if err != nil || h.Length != 70000 {
				panic(fmt.Sprint(h, n, err))
			}
			sink = n
		}},
		{name: "ParseWSHeader short", f: func() { _, sink, _ = ParseWSHeader(in[:5]) }},
		{name: "PutWSHeader", f: func() { sink = PutWSHeader(out[:], masked) }},
		{name: "AppendWSHeader", f: func() { buf = AppendWSHeader(buf[:0], masked) }},
		{name: "WSHeaderLen", f: func() { sink = WSHeaderLen(masked) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(1000, tt.f); n != 0 {
				t.Fatalf("%v allocations per run, want 0", n)
			}
		})
	}
	_ = sink
}

func BenchmarkParseWSHeader(b *testing.B) {
	for _, h := range []ws.Header{
		BinaryHeader(100),
		{Fin: true, OpCode: ws.OpBinary, Length: 16 << 10, Masked: true, Mask: [4]byte{1, 2, 3, 4}},
		BinaryHeader(MaxFrameLen),
	} {
		in := AppendWSHeader(nil, h)
		b.Run(fmt.Sprintf("len=%d/masked=%v", h.Length, h.Masked), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if _, _, err := ParseWSHeader(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGobwasReadHeader is the baseline ParseWSHeader replaces.
func BenchmarkGobwasReadHeader(b *testing.B) {
	in := AppendWSHeader(nil, ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 16 << 10, Masked: true, Mask: [4]byte{1, 2, 3, 4}})
	r := bytes.NewReader(in)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		r.Reset(in)
		if _, err := ws.ReadHeader(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPutWSHeader(b *testing.B) {
	h := ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 16 << 10, Masked: true, Mask: [4]byte{1, 2, 3, 4}}
	var out [MaxWSHeaderLen]byte
	b.ReportAllocs()
	b.SetBytes(int64(WSHeaderLen(h)))
	for b.Loop() {
		PutWSHeader(out[:], h)
	}
}
