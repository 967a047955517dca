package codec

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// frame is the decoded content of any tunnel frame. Only the fields of its
// Type are set; it is what the table, fuzz and stream tests compare.
type frame struct {
	Type FrameType
	CID  uint32

	Hello      Hello    // HELLO
	Ack        HelloAck // HELLO_ACK
	Window     uint32   // WINDOW increment
	Connector  string   // OPEN
	ClientAddr string   // OPEN
	Reason     Reason   // OPEN_ERR, RST
	Msg        string   // OPEN_ERR, RST
	Opaque     uint64   // PING, PONG
	Data       []byte   // DATA
}

// appendFrame encodes f with the Append* function of its type.
func appendFrame(dst []byte, f frame) ([]byte, error) {
	switch f.Type {
	case FrameHello:
		return AppendHello(dst, f.Hello)
	case FrameHelloAck:
		return AppendHelloAck(dst, f.Ack), nil
	case FrameOpen:
		return AppendOpen(dst, f.CID, f.Connector, f.ClientAddr)
	case FrameOpenAck, FrameFin, FrameGoAway:
		return AppendEmpty(dst, f.Type, f.CID), nil
	case FrameOpenErr, FrameRst:
		return AppendReason(dst, f.Type, f.CID, f.Reason, f.Msg), nil
	case FrameData:
		return append(AppendHeader(dst, FrameData, f.CID), f.Data...), nil
	case FrameWindow:
		return AppendWindow(dst, f.CID, f.Window), nil
	case FramePing, FramePong:
		return AppendPing(dst, f.Type, f.Opaque), nil
	}
	return dst, ErrUnknownType
}

// decodeFrame parses a whole frame with ParseFrame and then its payload with
// the Parse* function of its type. The result does not alias b.
func decodeFrame(b []byte) (frame, error) {
	h, p, err := ParseFrame(b)
	if err != nil {
		return frame{}, err
	}
	if len(b) > HeaderLen && &p[0] != &b[HeaderLen] {
		panic("ParseFrame payload does not alias its input")
	}
	f := frame{Type: h.Type, CID: h.CID}
	switch h.Type {
	case FrameHello:
		if f.Hello, err = ParseHello(p); err != nil {
			return frame{}, err
		}
		if len(f.Hello.Connectors) == 0 {
			f.Hello.Connectors = nil
		}
	case FrameHelloAck:
		if f.Ack, err = ParseHelloAck(p); err != nil {
			return frame{}, err
		}
	case FrameOpen:
		c, a, err := ParseOpen(p)
		if err != nil {
			return frame{}, err
		}
		f.Connector, f.ClientAddr = string(c), string(a)
	case FrameOpenErr, FrameRst:
		r, msg, err := ParseReason(p)
		if err != nil {
			return frame{}, err
		}
		f.Reason, f.Msg = r, string(msg)
	case FrameData:
		f.Data = bytes.Clone(p)
	case FrameWindow:
		if f.Window, err = ParseWindow(p); err != nil {
			return frame{}, err
		}
	case FramePing, FramePong:
		if f.Opaque, err = ParsePing(p); err != nil {
			return frame{}, err
		}
	}
	return f, nil
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// pattern returns n bytes that differ from their neighbours, so that an
// off-by-one copy shows.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func connectors(n int) []string {
	cs := make([]string, n)
	for i := range cs {
		cs[i] = "c" + strings.Repeat("x", i%5) + string(rune('a'+i%26))
	}
	return cs
}

func TestRoundTrip(t *testing.T) {
	long := strings.Repeat("r", MaxReasonLen+100)
	tests := []struct {
		name string
		in   frame
		// want is the decoded frame when it differs from in.
		want *frame
		// wire pins the encoding to the layout in the package doc.
		wire string
	}{
		{
			name: "HELLO no connectors",
			in: frame{
				Type:  FrameHello,
				Hello: Hello{Version: Version1, Window: 256 << 10, AgentID: "a1"},
			},
			wire: "01 00000000 01 00040000 02 6131 00",
		},
		{
			name: "HELLO version 2",
			in: frame{
				Type: FrameHello,
				Hello: Hello{Version: 2, Window: 256 << 10, AgentID: "a1", Connectors: []string{"c"},
					MaxWindow: 16 << 20, TunnelWindow: 64 << 20, Instance: 0x0102030405060708},
			},
			wire: "01 00000000 02 00040000 02 6131 01 0163 01000000 04000000 0102030405060708",
		},
		{
			name: "HELLO version 2 without tunnel window",
			in: frame{
				Type:  FrameHello,
				Hello: Hello{Version: 2, Window: 4096, AgentID: "a", MaxWindow: 4096},
			},
		},
		{
			name: "HELLO two connectors",
			in: frame{
				Type: FrameHello,
				Hello: Hello{
					Version: 1, Window: 1, AgentID: "agent-7",
					Connectors: []string{"ssh", "rdp"},
				},
			},
			wire: "01 00000000 01 00000001 07 6167656e742d37 02 03 737368 03 726470",
		},
		{
			name: "HELLO MaxConnectors of 255 bytes",
			in: frame{
				Type: FrameHello,
				Hello: Hello{
					Version: 1, Window: MaxWindow, AgentID: strings.Repeat("i", 255),
					Connectors: func() []string {
						cs := connectors(MaxConnectors)
						cs[0] = strings.Repeat("z", 255)
						return cs
					}(),
				},
			},
		},
		{
			name: "HELLO_ACK",
			in:   frame{Type: FrameHelloAck, Ack: HelloAck{Version: 1, Window: 0x00010000}},
			wire: "02 00000000 01 00010000",
		},
		{
			name: "HELLO_ACK version 2",
			in:   frame{Type: FrameHelloAck, Ack: HelloAck{Version: 2, Window: 0x00040000, MaxWindow: 1 << 24, TunnelWindow: 1 << 26}},
			wire: "02 00000000 02 00040000 01000000 04000000",
		},
		{
			name: "HELLO_ACK max window",
			in:   frame{Type: FrameHelloAck, Ack: HelloAck{Version: 255, Window: MaxWindow, MaxWindow: MaxWindow}},
		},
		{
			name: "WINDOW on cid 0 (tunnel-level)",
			in:   frame{Type: FrameWindow, CID: 0, Window: 64 << 20},
			wire: "09 00000000 04000000",
		},
		{
			name: "OPEN",
			in:   frame{Type: FrameOpen, CID: 1, Connector: "ssh", ClientAddr: "10.0.0.1:5"},
			wire: "03 00000001 03 737368 0a 31302e302e302e313a35",
		},
		{
			name: "OPEN empty client address",
			in:   frame{Type: FrameOpen, CID: 0xffffffff, Connector: "c"},
			wire: "03 ffffffff 01 63 00",
		},
		{
			name: "OPEN 255-byte strings",
			in: frame{
				Type: FrameOpen, CID: 9,
				Connector: strings.Repeat("c", 255), ClientAddr: strings.Repeat("a", 255),
			},
		},
		{
			name: "OPEN_ACK",
			in:   frame{Type: FrameOpenAck, CID: 0x01020304},
			wire: "04 01020304",
		},
		{
			name: "OPEN_ERR",
			in:   frame{Type: FrameOpenErr, CID: 2, Reason: ReasonDialFailed, Msg: "refused"},
			wire: "05 00000002 01 72656675736564",
		},
		{
			name: "OPEN_ERR no message",
			in:   frame{Type: FrameOpenErr, CID: 2, Reason: ReasonUnknownConnector},
			wire: "05 00000002 03",
		},
		{
			name: "OPEN_ERR long message truncated",
			in:   frame{Type: FrameOpenErr, CID: 2, Reason: ReasonDialTimeout, Msg: long},
			want: &frame{Type: FrameOpenErr, CID: 2, Reason: ReasonDialTimeout, Msg: long[:MaxReasonLen]},
		},
		{
			name: "RST",
			in:   frame{Type: FrameRst, CID: 3, Reason: ReasonIdle, Msg: "idle"},
			wire: "08 00000003 0a 69646c65",
		},
		{
			name: "RST message of MaxReasonLen",
			in:   frame{Type: FrameRst, CID: 3, Reason: ReasonProtocol, Msg: long[:MaxReasonLen]},
		},
		{
			name: "RST long message truncated",
			in:   frame{Type: FrameRst, CID: 3, Reason: ReasonOverload, Msg: long},
			want: &frame{Type: FrameRst, CID: 3, Reason: ReasonOverload, Msg: long[:MaxReasonLen]},
		},
		{
			name: "WINDOW",
			in:   frame{Type: FrameWindow, CID: 0x01020304, Window: 0x10000},
			wire: "09 01020304 00010000",
		},
		{
			name: "WINDOW 1",
			in:   frame{Type: FrameWindow, CID: 5, Window: 1},
		},
		{
			name: "WINDOW MaxWindow",
			in:   frame{Type: FrameWindow, CID: 5, Window: MaxWindow},
			wire: "09 00000005 40000000",
		},
		{
			name: "PING",
			in:   frame{Type: FramePing, Opaque: 0x0102030405060708},
			wire: "0a 00000000 0102030405060708",
		},
		{
			name: "PONG",
			in:   frame{Type: FramePong, Opaque: ^uint64(0)},
			wire: "0b 00000000 ffffffffffffffff",
		},
		{
			name: "DATA one byte",
			in:   frame{Type: FrameData, CID: 7, Data: []byte{0x42}},
			wire: "06 00000007 42",
		},
		{
			name: "DATA 16 KiB",
			in:   frame{Type: FrameData, CID: 7, Data: pattern(16 << 10)},
		},
		{
			name: "DATA MaxPayload",
			in:   frame{Type: FrameData, CID: 7, Data: pattern(MaxPayload)},
		},
		{
			name: "FIN",
			in:   frame{Type: FrameFin, CID: 1},
			wire: "07 00000001",
		},
		{
			name: "GOAWAY",
			in:   frame{Type: FrameGoAway},
			wire: "0c 00000000",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.in
			if tt.want != nil {
				want = *tt.want
			}
			b, err := appendFrame(nil, tt.in)
			if err != nil {
				t.Fatalf("append: %v", err)
			}
			if tt.wire != "" {
				if w := mustHex(tt.wire); !bytes.Equal(b, w) {
					t.Fatalf("wire:\n got %x\nwant %x", b, w)
				}
			}
			if len(b) > MaxFrameLen {
				t.Fatalf("encoded %d bytes > MaxFrameLen", len(b))
			}

			h, p, err := ParseFrame(b)
			if err != nil {
				t.Fatalf("ParseFrame: %v", err)
			}
			if h != (Header{Type: want.Type, CID: want.CID}) {
				t.Fatalf("header = %+v, want type %v cid %d", h, want.Type, want.CID)
			}
			if len(p) != len(b)-HeaderLen {
				t.Fatalf("payload %d bytes, want %d", len(p), len(b)-HeaderLen)
			}
			got, err := decodeFrame(b)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded\n %+v\nwant\n %+v", got, want)
			}

			// Appending after existing bytes keeps them and encodes the same.
			prefix := []byte("prefix")
			b2, err := appendFrame(prefix, tt.in)
			if err != nil {
				t.Fatalf("append after prefix: %v", err)
			}
			if !bytes.Equal(b2[:len(prefix)], []byte("prefix")) || !bytes.Equal(b2[len(prefix):], b) {
				t.Fatalf("append after prefix = %x, want prefix + %x", b2, b)
			}
		})
	}
}

func TestHeader(t *testing.T) {
	for _, cid := range []uint32{0, 1, 0x01020304, 0xffffffff} {
		var put [HeaderLen]byte
		PutHeader(put[:], FrameWindow, cid)
		app := AppendHeader(nil, FrameWindow, cid)
		if !bytes.Equal(put[:], app) {
			t.Fatalf("PutHeader %x != AppendHeader %x", put, app)
		}
		want := []byte{byte(FrameWindow), byte(cid >> 24), byte(cid >> 16), byte(cid >> 8), byte(cid)}
		if !bytes.Equal(app, want) {
			t.Fatalf("AppendHeader(%#x) = %x, want %x", cid, app, want)
		}
	}
}

// frameBytes builds a frame by hand so malformed frames can be written.
func frameBytes(t FrameType, cid uint32, payload ...[]byte) []byte {
	b := AppendHeader(nil, t, cid)
	for _, p := range payload {
		b = append(b, p...)
	}
	return b
}

func u32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

func str(s string) []byte { return append([]byte{byte(len(s))}, s...) }

func TestMalformed(t *testing.T) {
	helloHead := func(window uint32) []byte { return append([]byte{Version1}, u32(window)...) }
	v2 := func(window, maxWindow, tunnel uint32) []byte {
		return cat(u32(maxWindow), u32(tunnel), make([]byte, 8))
	}
	tooMany := []byte{MaxConnectors + 1}
	for i := 0; i < MaxConnectors+1; i++ {
		tooMany = append(tooMany, str("c")...)
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		// Whole-frame checks in ParseFrame.
		{name: "empty", in: nil, want: ErrShortFrame},
		{name: "one byte", in: []byte{byte(FrameFin)}, want: ErrShortFrame},
		{name: "header minus one", in: frameBytes(FrameFin, 1)[:HeaderLen-1], want: ErrShortFrame},
		{name: "DATA over MaxFrameLen", in: frameBytes(FrameData, 1, make([]byte, MaxPayload+1)), want: ErrFrameTooLarge},
		{name: "unknown type over MaxFrameLen", in: frameBytes(0xee, 1, make([]byte, MaxPayload+1)), want: ErrFrameTooLarge},
		{name: "type 0", in: frameBytes(0, 1), want: ErrUnknownType},
		{name: "type 0x0d", in: frameBytes(FrameGoAway+1, 0), want: ErrUnknownType},
		{name: "type 0xff", in: frameBytes(0xff, 1, []byte("x")), want: ErrUnknownType},
		{name: "OPEN cid 0", in: frameBytes(FrameOpen, 0, str("c"), str("a")), want: ErrBadCID},
		{name: "OPEN_ACK cid 0", in: frameBytes(FrameOpenAck, 0), want: ErrBadCID},
		{name: "OPEN_ERR cid 0", in: frameBytes(FrameOpenErr, 0, []byte{1}), want: ErrBadCID},
		{name: "DATA cid 0", in: frameBytes(FrameData, 0, []byte("x")), want: ErrBadCID},
		{name: "FIN cid 0", in: frameBytes(FrameFin, 0), want: ErrBadCID},
		{name: "RST cid 0", in: frameBytes(FrameRst, 0, []byte{1}), want: ErrBadCID},
		{name: "HELLO cid 1", in: frameBytes(FrameHello, 1, helloHead(1), str("a"), []byte{0}), want: ErrBadCID},
		{name: "HELLO_ACK cid 1", in: frameBytes(FrameHelloAck, 1, helloHead(1)), want: ErrBadCID},
		{name: "PING cid 1", in: frameBytes(FramePing, 1, make([]byte, 8)), want: ErrBadCID},
		{name: "PONG cid max", in: frameBytes(FramePong, 0xffffffff, make([]byte, 8)), want: ErrBadCID},
		{name: "GOAWAY cid 1", in: frameBytes(FrameGoAway, 1), want: ErrBadCID},
		{name: "payload on GOAWAY", in: frameBytes(FrameGoAway, 0, []byte{0}), want: ErrBadPayload},
		{name: "empty DATA", in: frameBytes(FrameData, 1), want: ErrBadPayload},
		{name: "payload on FIN", in: frameBytes(FrameFin, 1, []byte{0}), want: ErrBadPayload},
		{name: "payload on OPEN_ACK", in: frameBytes(FrameOpenAck, 1, []byte{0}), want: ErrBadPayload},
		{name: "WINDOW 3 bytes", in: frameBytes(FrameWindow, 1, []byte{0, 0, 1}), want: ErrBadPayload},
		{name: "WINDOW 5 bytes", in: frameBytes(FrameWindow, 1, u32(1), []byte{0}), want: ErrBadPayload},
		{name: "PING 7 bytes", in: frameBytes(FramePing, 0, make([]byte, 7)), want: ErrBadPayload},
		{name: "PONG 9 bytes", in: frameBytes(FramePong, 0, make([]byte, 9)), want: ErrBadPayload},
		{name: "RST empty", in: frameBytes(FrameRst, 1), want: ErrBadPayload},
		{name: "OPEN_ERR empty", in: frameBytes(FrameOpenErr, 1), want: ErrBadPayload},
		{name: "RST message over MaxReasonLen", in: frameBytes(FrameRst, 1, []byte{1}, make([]byte, MaxReasonLen+1)), want: ErrBadPayload},
		{name: "OPEN_ERR message over MaxReasonLen", in: frameBytes(FrameOpenErr, 1, []byte{1}, make([]byte, MaxReasonLen+1)), want: ErrBadPayload},

		// Payload checks in the Parse* functions.
		{name: "WINDOW 0", in: frameBytes(FrameWindow, 1, u32(0)), want: ErrBadWindow},
		{name: "WINDOW MaxWindow+1", in: frameBytes(FrameWindow, 1, u32(MaxWindow+1)), want: ErrBadWindow},
		{name: "WINDOW max uint32", in: frameBytes(FrameWindow, 1, u32(0xffffffff)), want: ErrBadWindow},
		{name: "OPEN empty payload", in: frameBytes(FrameOpen, 1), want: ErrBadPayload},
		{name: "OPEN connector overruns", in: frameBytes(FrameOpen, 1, []byte{4, 'a', 'b', 'c'}), want: ErrBadPayload},
		{name: "OPEN connector ends payload", in: frameBytes(FrameOpen, 1, str("ssh")), want: ErrBadPayload},
		{name: "OPEN client address overruns", in: frameBytes(FrameOpen, 1, str("ssh"), []byte{10, '1', '2'}), want: ErrBadPayload},
		{name: "OPEN empty connector", in: frameBytes(FrameOpen, 1, str(""), str("addr")), want: ErrBadPayload},
		{name: "OPEN trailing byte", in: frameBytes(FrameOpen, 1, str("ssh"), str("a"), []byte{0}), want: ErrBadPayload},
		{name: "HELLO_ACK empty", in: frameBytes(FrameHelloAck, 0), want: ErrBadPayload},
		{name: "HELLO_ACK 4 bytes", in: frameBytes(FrameHelloAck, 0, helloHead(1)[:4]), want: ErrBadPayload},
		{name: "HELLO_ACK trailing byte", in: frameBytes(FrameHelloAck, 0, helloHead(1), []byte{0}), want: ErrBadPayload},
		{name: "HELLO_ACK window 0", in: frameBytes(FrameHelloAck, 0, helloHead(0)), want: ErrBadWindow},
		{name: "HELLO_ACK window MaxWindow+1", in: frameBytes(FrameHelloAck, 0, helloHead(MaxWindow+1)), want: ErrBadWindow},
		{name: "HELLO empty", in: frameBytes(FrameHello, 0), want: ErrBadPayload},
		{name: "HELLO v2 without its fields", in: frameBytes(FrameHello, 0, []byte{2}, u32(4096), str("a"), []byte{0}), want: ErrBadPayload},
		{name: "HELLO v2 short fields", in: frameBytes(FrameHello, 0, []byte{2}, u32(4096), str("a"), []byte{0}, v2(0, 4096, 0)[:15]), want: ErrBadPayload},
		{name: "HELLO v2 trailing byte", in: frameBytes(FrameHello, 0, []byte{2}, u32(4096), str("a"), []byte{0}, v2(0, 4096, 0), []byte{0}), want: ErrBadPayload},
		{name: "HELLO v2 max below window", in: frameBytes(FrameHello, 0, []byte{2}, u32(8192), str("a"), []byte{0}, v2(0, 4096, 0)), want: ErrBadWindow},
		{name: "HELLO v2 tunnel below max", in: frameBytes(FrameHello, 0, []byte{2}, u32(4096), str("a"), []byte{0}, v2(0, 8192, 4096)), want: ErrBadWindow},
		{name: "HELLO v2 max over MaxWindow", in: frameBytes(FrameHello, 0, []byte{2}, u32(4096), str("a"), []byte{0}, v2(0, MaxWindow+1, 0)), want: ErrBadWindow},
		{name: "HELLO_ACK v2 in v1 length", in: frameBytes(FrameHelloAck, 0, []byte{2}, u32(4096)), want: ErrBadPayload},
		{name: "HELLO_ACK v2 max below window", in: frameBytes(FrameHelloAck, 0, []byte{2}, u32(8192), u32(4096), u32(0)), want: ErrBadWindow},
		{name: "HELLO 4 bytes", in: frameBytes(FrameHello, 0, helloHead(1)[:4]), want: ErrBadPayload},
		{name: "HELLO window 0", in: frameBytes(FrameHello, 0, helloHead(0), str("a"), []byte{0}), want: ErrBadWindow},
		{name: "HELLO window MaxWindow+1", in: frameBytes(FrameHello, 0, helloHead(MaxWindow+1), str("a"), []byte{0}), want: ErrBadWindow},
		{name: "HELLO no agent id", in: frameBytes(FrameHello, 0, helloHead(1)), want: ErrBadPayload},
		{name: "HELLO agent id overruns", in: frameBytes(FrameHello, 0, helloHead(1), []byte{9, 'a'}), want: ErrBadPayload},
		{name: "HELLO empty agent id", in: frameBytes(FrameHello, 0, helloHead(1), str(""), []byte{0}), want: ErrBadPayload},
		{name: "HELLO no connector count", in: frameBytes(FrameHello, 0, helloHead(1), str("a")), want: ErrBadPayload},
		{name: "HELLO more connectors than sent", in: frameBytes(FrameHello, 0, helloHead(1), str("a"), []byte{2}, str("c")), want: ErrBadPayload},
		{name: "HELLO connector overruns", in: frameBytes(FrameHello, 0, helloHead(1), str("a"), []byte{1, 5, 'c'}), want: ErrBadPayload},
		{name: "HELLO empty connector", in: frameBytes(FrameHello, 0, helloHead(1), str("a"), []byte{1}, str("")), want: ErrBadPayload},
		{name: "HELLO trailing byte", in: frameBytes(FrameHello, 0, helloHead(1), str("a"), []byte{1}, str("c"), []byte{0}), want: ErrBadPayload},
		{name: "HELLO trailing byte no connectors", in: frameBytes(FrameHello, 0, helloHead(1), str("a"), []byte{0, 0}), want: ErrBadPayload},
		{name: "HELLO over MaxConnectors", in: frameBytes(FrameHello, 0, helloHead(1), str("a"), tooMany), want: ErrBadPayload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := decodeFrame(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v (decoded %+v)", err, tt.want, f)
			}
		})
	}
}

// TestParseBoundaries checks the largest accepted input next to each bound
// that TestMalformed checks from the other side.
func TestParseBoundaries(t *testing.T) {
	if _, p, err := ParseFrame(frameBytes(FrameData, 1, make([]byte, MaxPayload))); err != nil || len(p) != MaxPayload {
		t.Fatalf("DATA of MaxPayload: %d bytes, %v", len(p), err)
	}
	if _, _, err := ParseFrame(frameBytes(0xee, 1, make([]byte, MaxPayload))); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("unknown type of MaxFrameLen: %v, want ErrUnknownType", err)
	}
	if _, msg, err := ParseReason(append([]byte{1}, make([]byte, MaxReasonLen)...)); err != nil || len(msg) != MaxReasonLen {
		t.Fatalf("reason of MaxReasonLen: %d bytes, %v", len(msg), err)
	}
	hello := append([]byte{Version1}, u32(1)...)
	hello = append(hello, str("a")...)
	hello = append(hello, MaxConnectors)
	for i := 0; i < MaxConnectors; i++ {
		hello = append(hello, str("c")...)
	}
	if h, err := ParseHello(hello); err != nil || len(h.Connectors) != MaxConnectors {
		t.Fatalf("HELLO with MaxConnectors: %d connectors, %v", len(h.Connectors), err)
	}
}

func TestAppendErrors(t *testing.T) {
	s256 := strings.Repeat("s", 256)
	okHello := Hello{Version: 1, Window: 1, AgentID: "a", Connectors: []string{"c"}}
	with := func(f func(*Hello)) Hello {
		h := okHello
		f(&h)
		return h
	}
	tests := []struct {
		name   string
		append func(dst []byte) ([]byte, error)
		want   error
	}{
		{
			name: "HELLO over MaxConnectors",
			append: func(dst []byte) ([]byte, error) {
				return AppendHello(dst, with(func(h *Hello) { h.Connectors = connectors(MaxConnectors + 1) }))
			},
			want: ErrBadPayload,
		},
		{
			name:   "HELLO window 0",
			append: func(dst []byte) ([]byte, error) { return AppendHello(dst, with(func(h *Hello) { h.Window = 0 })) },
			want:   ErrBadWindow,
		},
		{
			name: "HELLO window over MaxWindow",
			append: func(dst []byte) ([]byte, error) {
				return AppendHello(dst, with(func(h *Hello) { h.Window = MaxWindow + 1 }))
			},
			want: ErrBadWindow,
		},
		{
			name:   "HELLO agent id of 256 bytes",
			append: func(dst []byte) ([]byte, error) { return AppendHello(dst, with(func(h *Hello) { h.AgentID = s256 })) },
			want:   ErrStringTooLong,
		},
		{
			name: "HELLO last connector of 256 bytes",
			append: func(dst []byte) ([]byte, error) {
				return AppendHello(dst, with(func(h *Hello) { h.Connectors = []string{"a", "b", s256} }))
			},
			want: ErrStringTooLong,
		},
		{
			name:   "HELLO empty agent id",
			append: func(dst []byte) ([]byte, error) { return AppendHello(dst, with(func(h *Hello) { h.AgentID = "" })) },
			want:   ErrBadPayload,
		},
		{
			name: "HELLO empty connector",
			append: func(dst []byte) ([]byte, error) {
				return AppendHello(dst, with(func(h *Hello) { h.Connectors = []string{"a", ""} }))
			},
			want: ErrBadPayload,
		},
		{
			name:   "OPEN connector of 256 bytes",
			append: func(dst []byte) ([]byte, error) { return AppendOpen(dst, 1, s256, "addr") },
			want:   ErrStringTooLong,
		},
		{
			name:   "OPEN client address of 256 bytes",
			append: func(dst []byte) ([]byte, error) { return AppendOpen(dst, 1, "ssh", s256) },
			want:   ErrStringTooLong,
		},
		{
			name:   "OPEN empty connector",
			append: func(dst []byte) ([]byte, error) { return AppendOpen(dst, 1, "", "addr") },
			want:   ErrBadPayload,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// On error dst comes back as it was: a caller that goes on
			// appending must not send half a frame.
			dst := make([]byte, 3, 4096)
			copy(dst, "abc")
			got, err := tt.append(dst)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if string(got) != "abc" {
				t.Fatalf("dst after error = %q, want %q", got, "abc")
			}
		})
	}
}

func TestStrings(t *testing.T) {
	for ft := FrameType(0); ft < 0x10; ft++ {
		s := ft.String()
		if ft.Valid() == (s == "UNKNOWN") {
			t.Errorf("FrameType(%#x): Valid %v, String %q", uint8(ft), ft.Valid(), s)
		}
	}
	if FrameType(0xff).String() != "UNKNOWN" || FrameType(0xff).Valid() {
		t.Errorf("FrameType(0xff) = %q, valid %v", FrameType(0xff), FrameType(0xff).Valid())
	}
	seen := map[string]Reason{}
	for r := ReasonNone; int(r) < NumReasons; r++ {
		if !r.Known() {
			t.Errorf("Reason(%d) is not Known", r)
		}
		s := r.String()
		if s == "unknown" {
			t.Errorf("Reason(%d) has no name", r)
		}
		if prev, dup := seen[s]; dup {
			t.Errorf("Reason(%d) and Reason(%d) share the name %q", prev, r, s)
		}
		seen[s] = r
	}
	if r := Reason(NumReasons); r.String() != "unknown" || r.Known() {
		t.Errorf("Reason(%d) = %q, want unknown", r, r.String())
	}
}

func TestZeroAlloc(t *testing.T) {
	data := frameBytes(FrameData, 1, pattern(16<<10))
	open, _ := AppendOpen(nil, 1, "ssh", "192.0.2.1:22")
	rst := AppendReason(nil, FrameRst, 1, ReasonTargetReset, "connection reset by peer")
	window := AppendWindow(nil, 1, 64<<10)
	buf := make([]byte, 0, MaxFrameLen)
	var sink int
	var sinkErr error

	tests := []struct {
		name string
		f    func()
	}{
		{name: "AppendHeader", f: func() { buf = AppendHeader(buf[:0], FrameData, 7) }},
		{name: "PutHeader", f: func() { PutHeader(buf[:HeaderLen], FrameData, 7) }},
		{name: "ParseFrame", f: func() {
			_, p, err := ParseFrame(data)
			sink, sinkErr = len(p), err
		}},
		{name: "ParseFrame error", f: func() { _, _, sinkErr = ParseFrame(data[:3]) }},
		{name: "ParseOpen", f: func() {
			c, a, err := ParseOpen(open[HeaderLen:])
			sink, sinkErr = len(c)+len(a), err
		}},
		{name: "ParseReason", f: func() {
			_, msg, err := ParseReason(rst[HeaderLen:])
			sink, sinkErr = len(msg), err
		}},
		{name: "ParseWindow", f: func() {
			w, err := ParseWindow(window[HeaderLen:])
			sink, sinkErr = int(w), err
		}},
		{name: "ParsePing", f: func() {
			v, err := ParsePing(make([]byte, 8))
			sink, sinkErr = int(v), err
		}},
		{name: "AppendWindow", f: func() { buf = AppendWindow(buf[:0], 7, 64<<10) }},
		{name: "AppendOpen", f: func() { buf, sinkErr = AppendOpen(buf[:0], 7, "ssh", "192.0.2.1:22") }},
		{name: "AppendReason", f: func() { buf = AppendReason(buf[:0], FrameRst, 7, ReasonIdle, "idle timeout") }},
		{name: "AppendPing", f: func() { buf = AppendPing(buf[:0], FramePong, 42) }},
		{name: "AppendHelloAck", f: func() {
			buf = AppendHelloAck(buf[:0], HelloAck{Version: Version, Window: 1 << 20, MaxWindow: 16 << 20, TunnelWindow: 64 << 20})
		}},
		{name: "AppendEmpty", f: func() { buf = AppendEmpty(buf[:0], FrameFin, 7) }},
		{name: "AppendEmpty GOAWAY", f: func() { buf = AppendEmpty(buf[:0], FrameGoAway, 0) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(1000, tt.f); n != 0 {
				t.Fatalf("%v allocations per run, want 0", n)
			}
		})
	}
	_, _ = sink, sinkErr
}

func BenchmarkParseFrame(b *testing.B) {
	data := frameBytes(FrameData, 1, pattern(16<<10))
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, _, err := ParseFrame(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendWindow(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	b.SetBytes(HeaderLen + 4)
	for b.Loop() {
		buf = AppendWindow(buf[:0], 7, 64<<10)
	}
}

func BenchmarkParseOpen(b *testing.B) {
	open, _ := AppendOpen(nil, 1, "ssh", "192.0.2.1:22")
	b.ReportAllocs()
	b.SetBytes(int64(len(open)))
	for b.Loop() {
		if _, _, err := ParseOpen(open[HeaderLen:]); err != nil {
			b.Fatal(err)
		}
	}
}
