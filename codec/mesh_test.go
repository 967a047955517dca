package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// meshFrame is the decoded content of any mesh frame. Only the fields of its
// Type are set; it is what the table, fuzz and stream tests compare.
type meshFrame struct {
	Type MeshFrameType

	// Stream header (every type but M_HELLO, M_PING, M_PONG).
	CID       uint32
	Seq       uint64
	Epoch     uint64
	Agent     string
	Connector string

	Hello  MeshHello // M_HELLO
	Client string    // M_OPEN
	Reason Reason    // M_OPEN_ERR, M_RST
	Msg    string    // M_OPEN_ERR, M_RST
	Window uint32    // M_WINDOW increment
	Opaque uint64    // M_PING, M_PONG
	Data   []byte    // M_DATA
}

// appendMeshFrame encodes f with the Append* function of its type.
func appendMeshFrame(dst []byte, f meshFrame) ([]byte, error) {
	switch f.Type {
	case MeshFrameHello:
		return AppendMeshHello(dst, f.Hello)
	case MeshFramePing, MeshFramePong:
		return AppendMeshPing(dst, f.Type, f.Opaque)
	case MeshFrameOpen:
		if f.Seq != 1 {
			return dst, ErrBadHeader // AppendMeshOpen always sends seq 1
		}
		return AppendMeshOpen(dst, f.CID, f.Epoch, f.Agent, f.Connector, f.Client)
	case MeshFrameOpenAck, MeshFrameFin:
		return AppendMeshHeader(dst, f.Type, f.CID, f.Seq, f.Epoch, f.Agent, f.Connector)
	case MeshFrameOpenErr, MeshFrameRst:
		return AppendMeshReason(dst, f.Type, f.CID, f.Seq, f.Epoch, f.Agent, f.Connector, f.Reason, f.Msg)
	case MeshFrameData:
		return AppendMeshData(dst, f.CID, f.Seq, f.Epoch, f.Agent, f.Connector, f.Data)
	case MeshFrameWindow:
		return AppendMeshWindow(dst, f.CID, f.Seq, f.Epoch, f.Agent, f.Connector, f.Window)
	}
	return dst, ErrUnknownType
}

// decodeMeshFrame parses a whole frame with ParseMeshFrame and then its
// payload with the Parse* function of its type, which must not fail on a
// frame ParseMeshFrame accepted. The result does not alias b.
func decodeMeshFrame(b []byte) (meshFrame, error) {
	h, p, err := ParseMeshFrame(b)
	if err != nil {
		return meshFrame{}, err
	}
	if len(p) > 0 && &p[len(p)-1] != &b[len(b)-1] {
		panic("ParseMeshFrame payload does not alias the end of its input")
	}
	f := meshFrame{Type: h.Type, CID: h.CID, Seq: h.Seq, Epoch: h.Epoch, Agent: string(h.Agent), Connector: string(h.Connector)}
	switch h.Type {
	case MeshFrameHello:
		f.Hello, err = ParseMeshHello(p)
	case MeshFramePing, MeshFramePong:
		f.Opaque, err = ParsePing(p)
	case MeshFrameOpen:
		var c []byte
		c, err = ParseMeshOpen(p)
		f.Client = string(c)
	case MeshFrameOpenErr, MeshFrameRst:
		var msg []byte
		f.Reason, msg, err = ParseReason(p)
		f.Msg = string(msg)
	case MeshFrameData:
		f.Data = bytes.Clone(p)
	case MeshFrameWindow:
		f.Window, err = ParseWindow(p)
	}
	if err != nil {
		panic("ParseMeshFrame accepted " + h.Type.String() + " whose payload does not parse: " + err.Error())
	}
	return f, nil
}

// meshBytes builds a stream frame by hand so malformed frames can be
// written: the header fields as given, then payload.
func meshBytes(t MeshFrameType, cid uint32, seq, epoch uint64, agent, connector string, payload ...[]byte) []byte {
	b := []byte{byte(t)}
	b = binary.BigEndian.AppendUint32(b, cid)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = append(b, str(agent)...)
	b = append(b, str(connector)...)
	for _, p := range payload {
		b = append(b, p...)
	}
	return b
}

// ms builds a well-formed stream frame of agent "a", connector "c".
func ms(t MeshFrameType, cid uint32, seq uint64, payload ...[]byte) []byte {
	return meshBytes(t, cid, seq, 5, "a", "c", payload...)
}

// helloBytes builds an M_HELLO by hand.
func helloBytes(version uint8, replica string, window, maxWindow, link uint32, flags byte, extra ...byte) []byte {
	return cat([]byte{byte(MeshFrameHello), version}, str(replica), u32(window), u32(maxWindow), u32(link), []byte{flags}, extra)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func TestMeshRoundTrip(t *testing.T) {
	long := strings.Repeat("r", MaxReasonLen+100)
	s255 := strings.Repeat("s", 255)
	// hdr is the stream header of cid 1 seq 2 epoch 7, agent "a1",
	// connector "ldap", in hex.
	const hdr = "00000001 0000000000000002 0000000000000007 02 6131 04 6c646170"
	st := func(t MeshFrameType) meshFrame {
		return meshFrame{Type: t, CID: 1, Seq: 2, Epoch: 7, Agent: "a1", Connector: "ldap"}
	}
	with := func(f meshFrame, set func(*meshFrame)) meshFrame {
		set(&f)
		return f
	}
	tests := []struct {
		name string
		in   meshFrame
		// want is the decoded frame when it differs from in.
		want *meshFrame
		// wire pins the encoding to the layout in the doc of MeshFrameType.
		wire string
	}{
		{
			name: "M_HELLO active",
			in: meshFrame{Type: MeshFrameHello, Hello: MeshHello{
				Version: MeshVersion, Replica: "hub-a", Window: 256 << 10, MaxWindow: 4 << 20, LinkWindow: 8 << 20, Active: true,
			}},
			wire: "41 01 05 6875622d61 00040000 00400000 00800000 01",
		},
		{
			name: "M_HELLO shadow, all windows equal",
			in: meshFrame{Type: MeshFrameHello, Hello: MeshHello{
				Version: MeshVersion, Replica: "b", Window: 1, MaxWindow: 1, LinkWindow: 1,
			}},
			wire: "41 01 01 62 00000001 00000001 00000001 00",
		},
		{
			name: "M_HELLO 255-byte replica, MaxWindow",
			in: meshFrame{Type: MeshFrameHello, Hello: MeshHello{
				Version: MeshVersion, Replica: s255, Window: MaxWindow, MaxWindow: MaxWindow, LinkWindow: MaxWindow, Active: true,
			}},
		},
		{
			name: "M_PING",
			in:   meshFrame{Type: MeshFramePing, Opaque: 0x0102030405060708},
			wire: "4a 0102030405060708",
		},
		{
			name: "M_PONG",
			in:   meshFrame{Type: MeshFramePong, Opaque: ^uint64(0)},
			wire: "4b ffffffffffffffff",
		},
		{
			name: "M_OPEN",
			in:   with(st(MeshFrameOpen), func(f *meshFrame) { f.Seq, f.Client = 1, "10.0.0.1:5" }),
			wire: "43 00000001 0000000000000001 0000000000000007 02 6131 04 6c646170 0a 31302e302e302e313a35",
		},
		{
			name: "M_OPEN empty client, extreme fields",
			in: meshFrame{Type: MeshFrameOpen, CID: 0xffffffff, Seq: 1, Epoch: ^uint64(0),
				Agent: s255, Connector: s255},
		},
		{
			name: "M_OPEN 255-byte client",
			in:   with(st(MeshFrameOpen), func(f *meshFrame) { f.Seq, f.Client = 1, s255 }),
		},
		{
			name: "M_OPEN_ACK",
			in:   st(MeshFrameOpenAck),
			wire: "44 " + hdr,
		},
		{
			name: "M_OPEN_ERR",
			in:   with(st(MeshFrameOpenErr), func(f *meshFrame) { f.Reason, f.Msg = ReasonNotOwner, "no" }),
			wire: "45 " + hdr + " 13 6e6f",
		},
		{
			name: "M_OPEN_ERR no message",
			in:   with(st(MeshFrameOpenErr), func(f *meshFrame) { f.Reason = ReasonUnknownConnector }),
			wire: "45 " + hdr + " 03",
		},
		{
			name: "M_OPEN_ERR long message truncated",
			in:   with(st(MeshFrameOpenErr), func(f *meshFrame) { f.Reason, f.Msg = ReasonDialFailed, long }),
			want: new(with(st(MeshFrameOpenErr), func(f *meshFrame) { f.Reason, f.Msg = ReasonDialFailed, long[:MaxReasonLen] })),
		},
		{
			name: "M_DATA one byte",
			in:   with(st(MeshFrameData), func(f *meshFrame) { f.Data = []byte{0x42} }),
			wire: "46 " + hdr + " 42",
		},
		{
			name: "M_DATA MaxPayload, longest header",
			in: meshFrame{Type: MeshFrameData, CID: 2, Seq: ^uint64(0), Epoch: 1, Agent: s255, Connector: s255,
				Data: pattern(MaxPayload)},
		},
		{
			name: "M_FIN",
			in:   st(MeshFrameFin),
			wire: "47 " + hdr,
		},
		{
			name: "M_RST stale epoch",
			in:   with(st(MeshFrameRst), func(f *meshFrame) { f.Reason, f.Msg = ReasonStaleEpoch, "e" }),
			wire: "48 " + hdr + " 14 65",
		},
		{
			name: "M_RST message of MaxReasonLen",
			in:   with(st(MeshFrameRst), func(f *meshFrame) { f.Reason, f.Msg = ReasonProtocol, long[:MaxReasonLen] }),
		},
		{
			name: "M_WINDOW",
			in:   with(st(MeshFrameWindow), func(f *meshFrame) { f.Window = 0x10000 }),
			wire: "49 " + hdr + " 00010000",
		},
		{
			name: "M_WINDOW MaxWindow",
			in:   with(st(MeshFrameWindow), func(f *meshFrame) { f.Window = MaxWindow }),
			wire: "49 " + hdr + " 40000000",
		},
		{
			name: "M_WINDOW link level",
			in:   meshFrame{Type: MeshFrameWindow, Window: 1},
			wire: "49 00000000 0000000000000000 0000000000000000 00 00 00000001",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.in
			if tt.want != nil {
				want = *tt.want
			}
			b, err := appendMeshFrame(nil, tt.in)
			if err != nil {
				t.Fatalf("append: %v", err)
			}
			if tt.wire != "" {
				if w := mustHex(tt.wire); !bytes.Equal(b, w) {
					t.Fatalf("wire:\n got %x\nwant %x", b, w)
				}
			}
			if len(b) > MaxMeshFrameLen {
				t.Fatalf("encoded %d bytes > MaxMeshFrameLen", len(b))
			}
			if !tt.in.Type.Link() {
				if n := MeshHeaderLen(tt.in.Agent, tt.in.Connector); !bytes.Equal(b[:n], mustAppend(AppendMeshHeader(nil, tt.in.Type, tt.in.CID, tt.in.Seq, tt.in.Epoch, tt.in.Agent, tt.in.Connector))) {
					t.Fatalf("the first MeshHeaderLen = %d bytes are not the header", n)
				}
			}
			got, err := decodeMeshFrame(b)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded\n %+v\nwant\n %+v", got, want)
			}

			// Appending after existing bytes keeps them and encodes the same.
			b2, err := appendMeshFrame([]byte("prefix"), tt.in)
			if err != nil {
				t.Fatalf("append after prefix: %v", err)
			}
			if string(b2[:6]) != "prefix" || !bytes.Equal(b2[6:], b) {
				t.Fatalf("append after prefix = %x, want prefix + %x", b2, b)
			}
		})
	}
}

// TestMeshDataWritev checks the hot path of M_DATA: a header appended into
// a fixed buffer, sized by MeshHeaderLen, then the payload written after it,
// parses as the frame AppendMeshData makes.
func TestMeshDataWritev(t *testing.T) {
	var hdr [MeshHeaderMax]byte
	data := pattern(1000)
	h, err := AppendMeshHeader(hdr[:0], MeshFrameData, 9, 3, 11, "agent-1", "ldap")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != MeshHeaderLen("agent-1", "ldap") || &h[0] != &hdr[0] {
		t.Fatalf("header of %d bytes (MeshHeaderLen %d), in the fixed buffer: %v", len(h), MeshHeaderLen("agent-1", "ldap"), &h[0] == &hdr[0])
	}
	msg := append(bytes.Clone(h), data...)
	whole, err := AppendMeshData(nil, 9, 3, 11, "agent-1", "ldap", data)
	if err != nil || !bytes.Equal(msg, whole) {
		t.Fatalf("header+payload %x\n!= AppendMeshData %x (%v)", msg, whole, err)
	}
	mh, p, err := ParseMeshFrame(msg)
	if err != nil || mh.Type != MeshFrameData || mh.CID != 9 || mh.Seq != 3 || mh.Epoch != 11 ||
		string(mh.Agent) != "agent-1" || string(mh.Connector) != "ldap" || !bytes.Equal(p, data) {
		t.Fatalf("ParseMeshFrame = %+v, %d bytes, %v", mh, len(p), err)
	}
}

// TestMeshHelloLaterVersion checks the rule of the version history: a
// later version's M_HELLO, with more flags and appended fields, still gives
// this build its version 1 fields.
func TestMeshHelloLaterVersion(t *testing.T) {
	b := helloBytes(2, "hub-z", 4096, 8192, 1<<20, 0xff, 1, 2, 3)
	h, p, err := ParseMeshFrame(b)
	if err != nil || h.Type != MeshFrameHello {
		t.Fatalf("ParseMeshFrame: %+v, %v", h, err)
	}
	got, err := ParseMeshHello(p)
	want := MeshHello{Version: 2, Replica: "hub-z", Window: 4096, MaxWindow: 8192, LinkWindow: 1 << 20, Active: true}
	if err != nil || got != want {
		t.Fatalf("ParseMeshHello = %+v, %v; want %+v", got, err, want)
	}
	// Its windows are checked all the same.
	if _, _, err := ParseMeshFrame(helloBytes(2, "hub-z", 8192, 4096, 1<<20, 0, 9)); !errors.Is(err, ErrBadWindow) {
		t.Fatalf("later version with max below window: %v, want ErrBadWindow", err)
	}
}

func TestMeshMalformed(t *testing.T) {
	huge := make([]byte, MaxMeshFrameLen+1)
	huge[0] = byte(MeshFrameData)
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		// Length bounds and type.
		{name: "empty", in: nil, want: ErrShortFrame},
		{name: "over MaxMeshFrameLen", in: huge, want: ErrFrameTooLarge},
		{name: "unknown type over MaxMeshFrameLen", in: append([]byte{0xee}, huge[1:]...), want: ErrFrameTooLarge},
		{name: "DATA payload MaxPayload+1 in a short header", in: ms(MeshFrameData, 1, 1, make([]byte, MaxPayload+1)), want: ErrFrameTooLarge},
		{name: "type 0", in: []byte{0}, want: ErrUnknownType},
		{name: "type 0x42 (no HELLO_ACK)", in: ms(0x42, 1, 1), want: ErrUnknownType},
		{name: "type 0x40", in: ms(0x40, 1, 1), want: ErrUnknownType},
		{name: "type 0x4c", in: ms(0x4c, 1, 1), want: ErrUnknownType},
		{name: "tunnel DATA type", in: ms(MeshFrameType(FrameData), 1, 1, []byte("x")), want: ErrUnknownType},
		{name: "type 0xff", in: []byte{0xff, 1, 2, 3}, want: ErrUnknownType},

		// Stream header.
		{name: "type byte only", in: []byte{byte(MeshFrameFin)}, want: ErrShortFrame},
		{name: "header without connector length", in: ms(MeshFrameFin, 1, 1)[:MeshHeaderMin], want: ErrShortFrame},
		{name: "header of 22 bytes", in: meshBytes(MeshFrameWindow, 0, 0, 0, "", "")[:MeshHeaderMin-1], want: ErrShortFrame},
		{name: "agent overruns", in: cat(ms(MeshFrameFin, 1, 1)[:meshFixedLen], []byte{9, 'a'}), want: ErrShortFrame},
		{name: "connector overruns", in: cat(ms(MeshFrameFin, 1, 1)[:meshFixedLen], str("a"), []byte{3, 'c'}), want: ErrShortFrame},
		{name: "OPEN cid 0", in: ms(MeshFrameOpen, 0, 1, str("")), want: ErrBadCID},
		{name: "OPEN_ACK cid 0", in: ms(MeshFrameOpenAck, 0, 1), want: ErrBadCID},
		{name: "OPEN_ERR cid 0", in: ms(MeshFrameOpenErr, 0, 1, []byte{1}), want: ErrBadCID},
		{name: "DATA cid 0", in: ms(MeshFrameData, 0, 1, []byte("x")), want: ErrBadCID},
		{name: "FIN cid 0", in: ms(MeshFrameFin, 0, 1), want: ErrBadCID},
		{name: "RST cid 0", in: ms(MeshFrameRst, 0, 1, []byte{1}), want: ErrBadCID},
		{name: "DATA cid 0 without strings", in: meshBytes(MeshFrameData, 0, 0, 0, "", "", []byte("x")), want: ErrBadCID},
		{name: "empty agent", in: meshBytes(MeshFrameData, 1, 1, 1, "", "c", []byte("x")), want: ErrBadHeader},
		{name: "empty connector", in: meshBytes(MeshFrameFin, 1, 1, 1, "a", ""), want: ErrBadHeader},
		{name: "stream WINDOW empty strings", in: meshBytes(MeshFrameWindow, 1, 1, 1, "", "", u32(1)), want: ErrBadHeader},
		{name: "seq 0", in: meshBytes(MeshFrameData, 1, 0, 1, "a", "c", []byte("x")), want: ErrBadHeader},
		{name: "epoch 0", in: meshBytes(MeshFrameFin, 1, 1, 0, "a", "c"), want: ErrBadHeader},
		{name: "OPEN seq 2", in: ms(MeshFrameOpen, 1, 2, str("")), want: ErrBadHeader},
		{name: "link WINDOW seq 1", in: meshBytes(MeshFrameWindow, 0, 1, 0, "", "", u32(1)), want: ErrBadHeader},
		{name: "link WINDOW epoch 1", in: meshBytes(MeshFrameWindow, 0, 0, 1, "", "", u32(1)), want: ErrBadHeader},
		{name: "link WINDOW with agent", in: meshBytes(MeshFrameWindow, 0, 0, 0, "a", "", u32(1)), want: ErrBadHeader},
		{name: "link WINDOW with connector", in: meshBytes(MeshFrameWindow, 0, 0, 0, "", "c", u32(1)), want: ErrBadHeader},

		// Stream payloads.
		{name: "DATA empty", in: ms(MeshFrameData, 1, 1), want: ErrBadPayload},
		{name: "FIN with payload", in: ms(MeshFrameFin, 1, 1, []byte{0}), want: ErrBadPayload},
		{name: "OPEN_ACK with payload", in: ms(MeshFrameOpenAck, 1, 1, []byte{0}), want: ErrBadPayload},
		{name: "OPEN without client", in: ms(MeshFrameOpen, 1, 1), want: ErrBadPayload},
		{name: "OPEN client overruns", in: ms(MeshFrameOpen, 1, 1, []byte{4, '1', '2'}), want: ErrBadPayload},
		{name: "OPEN trailing byte", in: ms(MeshFrameOpen, 1, 1, str("a"), []byte{0}), want: ErrBadPayload},
		{name: "OPEN_ERR empty", in: ms(MeshFrameOpenErr, 1, 1), want: ErrBadPayload},
		{name: "RST empty", in: ms(MeshFrameRst, 1, 1), want: ErrBadPayload},
		{name: "RST message over MaxReasonLen", in: ms(MeshFrameRst, 1, 1, []byte{1}, make([]byte, MaxReasonLen+1)), want: ErrBadPayload},
		{name: "OPEN_ERR message over MaxReasonLen", in: ms(MeshFrameOpenErr, 1, 1, []byte{1}, make([]byte, MaxReasonLen+1)), want: ErrBadPayload},
		{name: "WINDOW 3 bytes", in: ms(MeshFrameWindow, 1, 1, []byte{0, 0, 1}), want: ErrBadPayload},
		{name: "WINDOW 5 bytes", in: ms(MeshFrameWindow, 1, 1, u32(1), []byte{0}), want: ErrBadPayload},
		{name: "link WINDOW empty", in: meshBytes(MeshFrameWindow, 0, 0, 0, "", ""), want: ErrBadPayload},
		{name: "WINDOW 0", in: ms(MeshFrameWindow, 1, 1, u32(0)), want: ErrBadWindow},
		{name: "WINDOW MaxWindow+1", in: ms(MeshFrameWindow, 1, 1, u32(MaxWindow+1)), want: ErrBadWindow},
		{name: "link WINDOW 0", in: meshBytes(MeshFrameWindow, 0, 0, 0, "", "", u32(0)), want: ErrBadWindow},
		{name: "link WINDOW max uint32", in: meshBytes(MeshFrameWindow, 0, 0, 0, "", "", u32(0xffffffff)), want: ErrBadWindow},

		// Link frames.
		{name: "PING type only", in: []byte{byte(MeshFramePing)}, want: ErrBadPayload},
		{name: "PING 7 bytes", in: cat([]byte{byte(MeshFramePing)}, make([]byte, 7)), want: ErrBadPayload},
		{name: "PONG 9 bytes", in: cat([]byte{byte(MeshFramePong)}, make([]byte, 9)), want: ErrBadPayload},
		{name: "HELLO type only", in: []byte{byte(MeshFrameHello)}, want: ErrBadPayload},
		{name: "HELLO version 0", in: helloBytes(0, "a", 1, 1, 1, 0), want: ErrBadPayload},
		{name: "HELLO empty replica", in: helloBytes(1, "", 1, 1, 1, 0), want: ErrBadPayload},
		{name: "HELLO replica overruns", in: []byte{byte(MeshFrameHello), 1, 9, 'a'}, want: ErrBadPayload},
		{name: "HELLO without flags", in: helloBytes(1, "a", 1, 1, 1, 0)[:1+1+2+12], want: ErrBadPayload},
		{name: "HELLO v1 trailing byte", in: helloBytes(1, "a", 1, 1, 1, 0, 0), want: ErrBadPayload},
		{name: "HELLO v1 unknown flag", in: helloBytes(1, "a", 1, 1, 1, 0x02), want: ErrBadPayload},
		{name: "HELLO window 0", in: helloBytes(1, "a", 0, 1, 1, 0), want: ErrBadWindow},
		{name: "HELLO window MaxWindow+1", in: helloBytes(1, "a", MaxWindow+1, MaxWindow+1, MaxWindow+1, 0), want: ErrBadWindow},
		{name: "HELLO max below window", in: helloBytes(1, "a", 8192, 4096, 1<<20, 0), want: ErrBadWindow},
		{name: "HELLO link below max", in: helloBytes(1, "a", 4096, 8192, 4096, 0), want: ErrBadWindow},
		{name: "HELLO link 0", in: helloBytes(1, "a", 4096, 4096, 0, 0), want: ErrBadWindow},
		{name: "HELLO link MaxWindow+1", in: helloBytes(1, "a", 4096, 4096, MaxWindow+1, 0), want: ErrBadWindow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, p, err := ParseMeshFrame(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v (parsed %+v, %d bytes)", err, tt.want, h, len(p))
			}
		})
	}
}

// TestMeshParseBoundaries checks the largest accepted input next to each
// bound that TestMeshMalformed checks from the other side.
func TestMeshParseBoundaries(t *testing.T) {
	s255 := strings.Repeat("x", 255)
	b := meshBytes(MeshFrameData, 1, 1, 1, s255, s255, make([]byte, MaxPayload))
	if len(b) != MaxMeshFrameLen {
		t.Fatalf("longest DATA is %d bytes, MaxMeshFrameLen %d", len(b), MaxMeshFrameLen)
	}
	if _, p, err := ParseMeshFrame(b); err != nil || len(p) != MaxPayload {
		t.Fatalf("DATA of MaxMeshFrameLen: %d bytes, %v", len(p), err)
	}
	if _, _, err := ParseMeshFrame(ms(MeshFrameRst, 1, 1, []byte{1}, make([]byte, MaxReasonLen))); err != nil {
		t.Fatalf("RST message of MaxReasonLen: %v", err)
	}
	if _, _, err := ParseMeshFrame(helloBytes(1, s255, MaxWindow, MaxWindow, MaxWindow, 1)); err != nil {
		t.Fatalf("HELLO of 255-byte replica and MaxWindow: %v", err)
	}
	if MeshHeaderLen(s255, s255) != MeshHeaderMax || MeshHeaderLen("", "") != MeshHeaderMin {
		t.Fatalf("MeshHeaderLen bounds: %d, %d", MeshHeaderLen(s255, s255), MeshHeaderLen("", ""))
	}
}

func TestMeshAppendErrors(t *testing.T) {
	s256 := strings.Repeat("s", 256)
	okHello := MeshHello{Version: MeshVersion, Replica: "hub-a", Window: 4096, MaxWindow: 8192, LinkWindow: 1 << 20}
	hello := func(set func(*MeshHello)) func([]byte) ([]byte, error) {
		h := okHello
		set(&h)
		return func(dst []byte) ([]byte, error) { return AppendMeshHello(dst, h) }
	}
	tests := []struct {
		name   string
		append func(dst []byte) ([]byte, error)
		want   error
	}{
		{name: "HELLO version 0", append: hello(func(h *MeshHello) { h.Version = 0 }), want: ErrBadPayload},
		{name: "HELLO version 2", append: hello(func(h *MeshHello) { h.Version = 2 }), want: ErrBadPayload},
		{name: "HELLO empty replica", append: hello(func(h *MeshHello) { h.Replica = "" }), want: ErrBadPayload},
		{name: "HELLO replica of 256 bytes", append: hello(func(h *MeshHello) { h.Replica = s256 }), want: ErrStringTooLong},
		{name: "HELLO window 0", append: hello(func(h *MeshHello) { h.Window = 0 }), want: ErrBadWindow},
		{name: "HELLO max below window", append: hello(func(h *MeshHello) { h.MaxWindow = 2048 }), want: ErrBadWindow},
		{name: "HELLO link below max", append: hello(func(h *MeshHello) { h.LinkWindow = 4096 }), want: ErrBadWindow},
		{name: "HELLO link 0", append: hello(func(h *MeshHello) { h.LinkWindow = 0 }), want: ErrBadWindow},
		{name: "HELLO link over MaxWindow", append: hello(func(h *MeshHello) { h.LinkWindow = MaxWindow + 1 }), want: ErrBadWindow},
		{
			name:   "PING of type M_DATA",
			append: func(dst []byte) ([]byte, error) { return AppendMeshPing(dst, MeshFrameData, 1) },
			want:   ErrWrongType,
		},
		{
			name:   "header of M_HELLO",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, MeshFrameHello, 1, 1, 1, "a", "c") },
			want:   ErrWrongType,
		},
		{
			name:   "header of M_PING",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, MeshFramePing, 1, 1, 1, "a", "c") },
			want:   ErrWrongType,
		},
		{
			name:   "header of unknown type",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, 0x42, 1, 1, 1, "a", "c") },
			want:   ErrWrongType,
		},
		{
			name:   "header agent of 256 bytes",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, MeshFrameFin, 1, 1, 1, s256, "c") },
			want:   ErrStringTooLong,
		},
		{
			name:   "header connector of 256 bytes",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, MeshFrameFin, 1, 1, 1, "a", s256) },
			want:   ErrStringTooLong,
		},
		{
			name:   "header cid 0",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, MeshFrameFin, 0, 1, 1, "a", "c") },
			want:   ErrBadCID,
		},
		{
			name:   "header empty agent",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, MeshFrameFin, 1, 1, 1, "", "c") },
			want:   ErrBadHeader,
		},
		{
			name:   "header seq 0",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, MeshFrameFin, 1, 0, 1, "a", "c") },
			want:   ErrBadHeader,
		},
		{
			name:   "header epoch 0",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, MeshFrameFin, 1, 1, 0, "a", "c") },
			want:   ErrBadHeader,
		},
		{
			name:   "header of M_OPEN with seq 2",
			append: func(dst []byte) ([]byte, error) { return AppendMeshHeader(dst, MeshFrameOpen, 1, 2, 1, "a", "c") },
			want:   ErrBadHeader,
		},
		{
			name:   "OPEN client of 256 bytes",
			append: func(dst []byte) ([]byte, error) { return AppendMeshOpen(dst, 1, 1, "a", "c", s256) },
			want:   ErrStringTooLong,
		},
		{
			name:   "OPEN epoch 0",
			append: func(dst []byte) ([]byte, error) { return AppendMeshOpen(dst, 1, 0, "a", "c", "") },
			want:   ErrBadHeader,
		},
		{
			name: "reason of type M_FIN",
			append: func(dst []byte) ([]byte, error) {
				return AppendMeshReason(dst, MeshFrameFin, 1, 1, 1, "a", "c", ReasonIdle, "")
			},
			want: ErrWrongType,
		},
		{
			name: "RST cid 0",
			append: func(dst []byte) ([]byte, error) {
				return AppendMeshReason(dst, MeshFrameRst, 0, 0, 0, "", "", ReasonIdle, "")
			},
			want: ErrBadCID,
		},
		{
			name:   "DATA empty",
			append: func(dst []byte) ([]byte, error) { return AppendMeshData(dst, 1, 1, 1, "a", "c", nil) },
			want:   ErrBadPayload,
		},
		{
			name: "DATA over MaxPayload",
			append: func(dst []byte) ([]byte, error) {
				return AppendMeshData(dst, 1, 1, 1, "a", "c", make([]byte, MaxPayload+1))
			},
			want: ErrFrameTooLarge,
		},
		{
			name:   "DATA empty connector",
			append: func(dst []byte) ([]byte, error) { return AppendMeshData(dst, 1, 1, 1, "a", "", []byte("x")) },
			want:   ErrBadHeader,
		},
		{
			name:   "WINDOW 0",
			append: func(dst []byte) ([]byte, error) { return AppendMeshWindow(dst, 1, 1, 1, "a", "c", 0) },
			want:   ErrBadWindow,
		},
		{
			name:   "WINDOW over MaxWindow",
			append: func(dst []byte) ([]byte, error) { return AppendMeshWindow(dst, 0, 0, 0, "", "", MaxWindow+1) },
			want:   ErrBadWindow,
		},
		{
			name:   "link WINDOW with seq",
			append: func(dst []byte) ([]byte, error) { return AppendMeshWindow(dst, 0, 1, 0, "", "", 1) },
			want:   ErrBadHeader,
		},
		{
			name:   "link WINDOW with agent",
			append: func(dst []byte) ([]byte, error) { return AppendMeshWindow(dst, 0, 0, 0, "a", "", 1) },
			want:   ErrBadHeader,
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

func TestMeshStrings(t *testing.T) {
	want := map[MeshFrameType]string{
		0x41: "M_HELLO", 0x43: "M_OPEN", 0x44: "M_OPEN_ACK", 0x45: "M_OPEN_ERR", 0x46: "M_DATA",
		0x47: "M_FIN", 0x48: "M_RST", 0x49: "M_WINDOW", 0x4a: "M_PING", 0x4b: "M_PONG",
	}
	for i := 0; i < 256; i++ {
		mt := MeshFrameType(i)
		name, ok := want[mt]
		if !ok {
			name = "UNKNOWN"
		}
		if mt.String() != name || mt.Valid() != ok {
			t.Errorf("MeshFrameType(%#x) = %q, valid %v; want %q, %v", i, mt.String(), mt.Valid(), name, ok)
		}
		link := mt == MeshFrameHello || mt == MeshFramePing || mt == MeshFramePong
		if mt.Link() != link {
			t.Errorf("MeshFrameType(%#x).Link() = %v", i, mt.Link())
		}
		// A mesh frame is never a tunnel frame, and the reverse.
		if ok && FrameType(mt).Valid() {
			t.Errorf("%v is also a tunnel frame type", mt)
		}
		if ok && FrameType(mt&0x0f).String() != strings.TrimPrefix(name, "M_") {
			t.Errorf("%v is %v with 0x40 set; want the same name", mt, FrameType(mt&0x0f))
		}
	}
}

func TestMeshZeroAlloc(t *testing.T) {
	data := mustAppend(AppendMeshData(nil, 1, 7, 42, "agent-1", "ldap", pattern(16<<10)))
	open := mustAppend(AppendMeshOpen(nil, 1, 42, "agent-1", "ldap", "192.0.2.1:50000"))
	_, openP, _ := ParseMeshFrame(open)
	hello := mustAppend(AppendMeshHello(nil, MeshHello{Version: MeshVersion, Replica: "hub-a", Window: 1 << 18, MaxWindow: 1 << 24, LinkWindow: 1 << 26, Active: true}))
	var hdr [MeshHeaderMax]byte
	buf := make([]byte, 0, MaxMeshFrameLen)
	payload := pattern(16 << 10)
	agent, connector := "agent-1", "ldap"
	var sink int
	var sinkErr error

	tests := []struct {
		name string
		f    func()
	}{
		{name: "ParseMeshFrame DATA", f: func() {
			h, p, err := ParseMeshFrame(data)
			sink, sinkErr = len(p)+len(h.Agent)+len(h.Connector), err
		}},
		{name: "ParseMeshFrame OPEN", f: func() { _, _, sinkErr = ParseMeshFrame(open) }},
		{name: "ParseMeshFrame HELLO", f: func() { _, _, sinkErr = ParseMeshFrame(hello) }},
		{name: "ParseMeshFrame error", f: func() { _, _, sinkErr = ParseMeshFrame(data[:10]) }},
		{name: "ParseMeshOpen", f: func() {
			c, err := ParseMeshOpen(openP)
			sink, sinkErr = len(c), err
		}},
		{name: "AppendMeshHeader DATA into a fixed buffer", f: func() {
			h, err := AppendMeshHeader(hdr[:0], MeshFrameData, 7, 99, 42, agent, connector)
			sink, sinkErr = len(h)+len(payload), err
		}},
		{name: "MeshHeaderLen", f: func() { sink = MeshHeaderLen(agent, connector) }},
		{name: "AppendMeshData", f: func() { buf, sinkErr = AppendMeshData(buf[:0], 7, 99, 42, agent, connector, payload) }},
		{name: "AppendMeshWindow", f: func() { buf, sinkErr = AppendMeshWindow(buf[:0], 7, 99, 42, agent, connector, 64<<10) }},
		{name: "AppendMeshWindow link", f: func() { buf, sinkErr = AppendMeshWindow(buf[:0], 0, 0, 0, "", "", 64<<10) }},
		{name: "AppendMeshOpen", f: func() { buf, sinkErr = AppendMeshOpen(buf[:0], 7, 42, agent, connector, "192.0.2.1:5") }},
		{name: "AppendMeshReason", f: func() {
			buf, sinkErr = AppendMeshReason(buf[:0], MeshFrameRst, 7, 99, 42, agent, connector, ReasonStaleEpoch, "stale")
		}},
		{name: "AppendMeshPing", f: func() { buf, sinkErr = AppendMeshPing(buf[:0], MeshFramePong, 42) }},
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

func BenchmarkParseMeshFrame(b *testing.B) {
	data := mustAppend(AppendMeshData(nil, 1, 7, 42, "agent-1", "ldap", pattern(16<<10)))
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, _, err := ParseMeshFrame(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendMeshHeader(b *testing.B) {
	var hdr [MeshHeaderMax]byte
	b.ReportAllocs()
	b.SetBytes(int64(MeshHeaderLen("agent-1", "ldap")))
	for seq := uint64(1); b.Loop(); seq++ {
		if _, err := AppendMeshHeader(hdr[:0], MeshFrameData, 7, seq, 42, "agent-1", "ldap"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendMeshWindow(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	b.SetBytes(int64(MeshHeaderLen("agent-1", "ldap") + 4))
	for seq := uint64(1); b.Loop(); seq++ {
		var err error
		if buf, err = AppendMeshWindow(buf[:0], 7, seq, 42, "agent-1", "ldap", 64<<10); err != nil {
			b.Fatal(err)
		}
	}
}
