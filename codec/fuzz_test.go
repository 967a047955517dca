package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/gobwas/ws"
)

// The seed corpus under testdata/fuzz is written by TestSeedCorpus from the
// tables at the end of this file:
//
//	go test ./codec -run '^TestSeedCorpus$' -update-corpus
//
// Inputs that go test -fuzz finds land in the same folders under hashed
// names and are kept as they are.
var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpus under testdata/fuzz")

var tunnelErrs = []error{ErrShortFrame, ErrFrameTooLarge, ErrUnknownType, ErrBadPayload, ErrBadCID, ErrStringTooLong, ErrBadWindow}

func isTunnelErr(err error) bool {
	for _, e := range tunnelErrs {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func FuzzParseFrame(f *testing.F) {
	f.Add(frameBytes(FrameData, 1, pattern(MaxPayload)))
	f.Add(frameBytes(FrameData, 1, pattern(MaxPayload+1)))
	hello, _ := AppendHello(nil, Hello{Version: Version, Window: 1 << 20, AgentID: "agent", Connectors: []string{"ssh", "rdp"}})
	for k := range hello {
		f.Add(hello[:k])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, err := ParseFrame(b)
		if err != nil {
			if !isTunnelErr(err) {
				t.Fatalf("ParseFrame: error %v is no sentinel", err)
			}
			return
		}
		if len(b) < HeaderLen || len(b) > MaxFrameLen || !h.Type.Valid() {
			t.Fatalf("ParseFrame accepted %d bytes of type %v", len(b), h.Type)
		}
		if h.CID != binary.BigEndian.Uint32(b[1:]) || !bytes.Equal(p, b[HeaderLen:]) {
			t.Fatalf("ParseFrame = %+v, %x; input %x", h, p, b)
		}
		fr, err := decodeFrame(b)
		if err != nil {
			if !isTunnelErr(err) {
				t.Fatalf("decode %v: error %v is no sentinel", h.Type, err)
			}
			return
		}
		// Every frame type has one encoding: what parses must re-encode
		// to the same bytes.
		re, err := appendFrame(nil, fr)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", fr, err)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("re-encoded %v:\n got %x\nwant %x", h.Type, re, b)
		}
	})
}

func FuzzParseWSHeader(f *testing.F) {
	for _, h := range wsHeaders() {
		if wsValid(h) {
			f.Add(AppendWSHeader(nil, h))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseWSHeader(b)
		switch {
		case errors.Is(err, ErrShortHeader):
			if n != 0 || len(b) >= MaxWSHeaderLen {
				t.Fatalf("ErrShortHeader with n=%d for %d bytes", n, len(b))
			}
			return
		case errors.Is(err, ErrWSProtocol):
			return
		case err != nil:
			t.Fatalf("error %v is no sentinel", err)
		}
		if n > len(b) || n != WSHeaderLen(h) || !wsValid(h) {
			t.Fatalf("ParseWSHeader(%x) = %+v, n=%d, WSHeaderLen %d", b, h, n, WSHeaderLen(h))
		}
		var out [MaxWSHeaderLen]byte
		if m := PutWSHeader(out[:], h); !bytes.Equal(out[:m], b[:n]) {
			t.Fatalf("re-encoded %x, want %x", out[:m], b[:n])
		}
		ref, err := ws.ReadHeader(bytes.NewReader(b))
		if err != nil || ref != h {
			t.Fatalf("ws.ReadHeader = %+v, %v; ParseWSHeader = %+v", ref, err, h)
		}
		for k := 0; k < n; k++ {
			if _, _, err := ParseWSHeader(b[:k]); !errors.Is(err, ErrShortHeader) {
				t.Fatalf("prefix %d of %x: %v, want ErrShortHeader", k, b[:n], err)
			}
		}
	})
}

// seedReader hands out the bytes of a fuzz seed, then zeros.
type seedReader struct {
	b []byte
	i int
}

func (r *seedReader) more() bool { return r.i < len(r.b) }

func (r *seedReader) byte() byte {
	if r.i >= len(r.b) {
		return 0
	}
	r.i++
	return r.b[r.i-1]
}

func (r *seedReader) u32() uint32 {
	return uint32(r.byte())<<24 | uint32(r.byte())<<16 | uint32(r.byte())<<8 | uint32(r.byte())
}

func (r *seedReader) cid() uint32 { return max(r.u32(), 1) }

func (r *seedReader) window() uint32 { return r.u32()%MaxWindow + 1 }

// fill returns n bytes made from one seed byte, so that a seed stays short
// however long the frames it describes.
func (r *seedReader) fill(n int) []byte {
	c := r.byte()
	b := make([]byte, n)
	for i := range b {
		b[i] = c + byte(i*7) + byte(i>>8)
	}
	return b
}

// str reads a length byte and a fill byte; the string is at least min long.
func (r *seedReader) str(min int) string { return string(r.fill(max(int(r.byte()), min))) }

// dataLens are the DATA sizes a length selector ≥ 128 picks: the edges of
// the WebSocket length classes (a tunnel frame is HeaderLen longer than its
// payload) and of MaxPayload.
var dataLens = []int{1, 2, 119, 120, 121, 122, 125, 126, 1000, 16 << 10, 65529, 65530, 65531, 65532, MaxPayload}

func (r *seedReader) dataLen() int {
	sel := r.byte()
	if sel < 128 {
		return int(sel) + 1
	}
	return dataLens[int(sel)%len(dataLens)]
}

const (
	maxStreamFrames = 16
	maxStreamBytes  = 256 << 10
)

// streamFrames derives valid tunnel frames from seed: a type byte, then the
// fields of that type (see the seedReader methods). The same seed always
// gives the same frames, and every seed gives at least one.
func streamFrames(seed []byte) []frame {
	r := &seedReader{b: seed}
	var out []frame
	total := 0
	for len(out) == 0 || (r.more() && len(out) < maxStreamFrames && total < maxStreamBytes) {
		f := frame{Type: FrameType(r.byte()%uint8(FrameGoAway) + 1)}
		switch f.Type {
		case FrameHello:
			f.Hello = Hello{Version: r.byte(), Window: r.window(), AgentID: r.str(1)}
			if f.Hello.Version >= 2 {
				f.Hello.MaxWindow = max(f.Hello.Window, r.window())
				if r.byte()%2 == 0 {
					f.Hello.TunnelWindow = max(f.Hello.MaxWindow, r.window())
				}
				f.Hello.Instance = uint64(r.cid())<<32 | uint64(r.cid())
			}
			for n := int(r.byte()) % (MaxConnectors + 1); n > 0; n-- {
				f.Hello.Connectors = append(f.Hello.Connectors, r.str(1))
			}
		case FrameHelloAck:
			f.Ack = HelloAck{Version: r.byte(), Window: r.window()}
			if f.Ack.Version >= 2 {
				f.Ack.MaxWindow = max(f.Ack.Window, r.window())
				if r.byte()%2 == 0 {
					f.Ack.TunnelWindow = max(f.Ack.MaxWindow, r.window())
				}
			}
		case FrameOpen:
			f.CID, f.Connector, f.ClientAddr = r.cid(), r.str(1), r.str(0)
		case FrameOpenAck, FrameFin:
			f.CID = r.cid()
		case FrameGoAway: // cid 0, no payload
		case FrameOpenErr, FrameRst:
			f.CID, f.Reason = r.cid(), Reason(r.byte())
			f.Msg = string(r.fill(int(r.byte()) % (MaxReasonLen + 1)))
		case FrameData:
			f.CID = r.cid()
			f.Data = r.fill(r.dataLen())
		case FrameWindow:
			f.CID, f.Window = r.cid(), r.window()
		case FramePing, FramePong:
			f.Opaque = uint64(r.u32())<<32 | uint64(r.u32())
		}
		out = append(out, f)
		total += HeaderLen + len(f.Data)
	}
	return out
}

// wsEncode frames each tunnel frame as one binary WebSocket message, masked
// (client to server) or not (server to client).
func wsEncode(t *testing.T, frames []frame, masked bool, key uint32) []byte {
	var stream []byte
	for i, f := range frames {
		tf, err := appendFrame(nil, f)
		if err != nil {
			t.Fatalf("encode %+v: %v", f, err)
		}
		h := BinaryHeader(len(tf))
		if masked {
			h.Masked = true
			binary.LittleEndian.PutUint32(h.Mask[:], key*uint32(2*i+1))
			// Mask in two pieces to use ws.Cipher's offset, and check
			// it against the XOR of RFC 6455 §5.3.
			want := bytes.Clone(tf)
			for j := range want {
				want[j] ^= h.Mask[j%4]
			}
			k := len(tf) / 3
			ws.Cipher(tf[:k], h.Mask, 0)
			ws.Cipher(tf[k:], h.Mask, k)
			if !bytes.Equal(tf, want) {
				t.Fatalf("ws.Cipher of %d bytes in pieces %d+%d differs from the RFC 6455 XOR", len(tf), k, len(tf)-k)
			}
		}
		stream = AppendWSHeader(stream, h)
		stream = append(stream, tf...)
	}
	return stream
}

// streamReader is the smallest incremental reader of a tunnel: it gathers
// bytes, parses a WebSocket header, waits for the whole message, unmasks it
// and parses the tunnel frame.
type streamReader struct {
	masked bool // whether every message must be masked (client to server)
	buf    []byte
	frames []frame
}

func (r *streamReader) feed(p []byte) error {
	r.buf = append(r.buf, p...)
	off := 0
	defer func() {
		if off > 0 { // keep only what no message has used yet
			r.buf = append(r.buf[:0], r.buf[off:]...)
		}
	}()
	for {
		h, n, err := ParseWSHeader(r.buf[off:])
		if errors.Is(err, ErrShortHeader) {
			return nil
		}
		if err != nil {
			return err
		}
		if !h.Fin || h.OpCode != ws.OpBinary || h.Masked != r.masked {
			return fmt.Errorf("unexpected header %+v", h)
		}
		if h.Length > MaxFrameLen {
			return fmt.Errorf("message of %d bytes: %w", h.Length, ErrFrameTooLarge)
		}
		if int64(len(r.buf)-off-n) < h.Length {
			return nil
		}
		msg := r.buf[off+n : off+n+int(h.Length)]
		if h.Masked {
			ws.Cipher(msg, h.Mask, 0)
		}
		f, err := decodeFrame(msg)
		if err != nil {
			return err
		}
		r.frames = append(r.frames, f)
		off += n + int(h.Length)
	}
}

// chunks cuts stream into the pieces that splits describes, cycling through
// it: a byte b < 128 is a piece of b bytes (0 is an empty read), b ≥ 128 a
// piece of (b-128)×512 bytes. No splits means one piece.
func chunks(stream, splits []byte) [][]byte {
	if len(splits) == 0 {
		return [][]byte{stream}
	}
	var out [][]byte
	zeros := 0
	for i := 0; len(stream) > 0; i++ {
		s := splits[i%len(splits)]
		n := int(s)
		if s >= 128 {
			n = int(s&0x7f) << 9
		}
		if n == 0 {
			if zeros++; zeros > len(splits) {
				n = len(stream) // the pattern makes no progress
			}
		} else {
			zeros = 0
		}
		n = min(n, len(stream))
		out = append(out, stream[:n])
		stream = stream[n:]
	}
	return out
}

func FuzzStream(f *testing.F) {
	for _, s := range streamSeeds() {
		f.Add(s.args[0], s.args[1])
	}
	f.Fuzz(func(t *testing.T, seed, splits []byte) {
		want := streamFrames(seed)
		h := fnv.New32a()
		h.Write(seed)
		key := h.Sum32()
		for _, masked := range []bool{false, true} {
			stream := wsEncode(t, want, masked, key)
			r := &streamReader{masked: masked}
			for _, c := range chunks(stream, splits) {
				if err := r.feed(c); err != nil {
					t.Fatalf("masked=%v: feed: %v", masked, err)
				}
			}
			if len(r.buf) != 0 {
				t.Fatalf("masked=%v: %d bytes left over", masked, len(r.buf))
			}
			if !reflect.DeepEqual(r.frames, want) {
				t.Fatalf("masked=%v: decoded %d frames, want %d:\n got %s\nwant %s",
					masked, len(r.frames), len(want), describe(r.frames), describe(want))
			}
		}
	})
}

func describe(fs []frame) string {
	var b bytes.Buffer
	for _, f := range fs {
		fmt.Fprintf(&b, "%v/%d/%dB ", f.Type, f.CID, len(f.Data))
	}
	return b.String()
}

func TestChunks(t *testing.T) {
	stream := pattern(5000)
	for _, splits := range [][]byte{nil, {1}, {0}, {0, 0, 3}, {2, 0x81}, {0xff}} {
		var got []byte
		for _, c := range chunks(stream, splits) {
			got = append(got, c...)
		}
		if !bytes.Equal(got, stream) {
			t.Fatalf("splits %x lose bytes", splits)
		}
	}
}

// TestStreamFramesCoverage checks that the generator reaches every frame
// type and every WebSocket length class, so FuzzStream can too.
func TestStreamFramesCoverage(t *testing.T) {
	types := map[FrameType]bool{}
	classes := map[int]bool{}
	for _, s := range streamSeeds() {
		for _, f := range streamFrames(s.args[0]) {
			types[f.Type] = true
			b, err := appendFrame(nil, f)
			if err != nil {
				t.Fatalf("seed %s: encode %+v: %v", s.name, f, err)
			}
			classes[WSHeaderLen(BinaryHeader(len(b)))] = true
		}
	}
	for ft := FrameHello; ft <= FrameGoAway; ft++ {
		if !types[ft] {
			t.Errorf("no stream seed makes a %v frame", ft)
		}
	}
	for _, n := range []int{2, 4, 10} {
		if !classes[n] {
			t.Errorf("no stream seed makes a WebSocket header of %d bytes", n)
		}
	}
}

// seed is one file of the committed corpus.
type seed struct {
	name string
	args [][]byte
}

func one(name string, b []byte) seed { return seed{name: name, args: [][]byte{b}} }

// marshalSeed writes the "go test fuzz v1" format of cmd/go.
func marshalSeed(args [][]byte) []byte {
	b := []byte("go test fuzz v1\n")
	for _, a := range args {
		b = fmt.Appendf(b, "[]byte(%q)\n", a)
	}
	return b
}

func TestSeedCorpus(t *testing.T) {
	corpus := map[string][]seed{
		"FuzzParseFrame":    parseFrameSeeds(),
		"FuzzParseWSHeader": wsHeaderSeeds(),
		"FuzzStream":        streamSeeds(),
		// mesh frames (mesh_fuzz_test.go)
		"FuzzParseMeshFrame": meshFrameSeeds(),
		"FuzzMeshStream":     meshStreamSeeds(),
	}
	for target, seeds := range corpus {
		dir := filepath.Join("testdata", "fuzz", target)
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range seeds {
			path := filepath.Join(dir, s.name)
			want := marshalSeed(s.args)
			if *updateCorpus {
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s is missing or stale (%v): run go test ./codec -run '^TestSeedCorpus$' -update-corpus", path, err)
			}
		}
	}

	// The FuzzParseFrame corpus holds a valid frame of every type.
	valid := map[FrameType]bool{}
	for _, s := range parseFrameSeeds() {
		if f, err := decodeFrame(s.args[0]); err == nil {
			valid[f.Type] = true
		}
	}
	for ft := FrameHello; ft <= FrameGoAway; ft++ {
		if !valid[ft] {
			t.Errorf("FuzzParseFrame corpus has no valid %v frame", ft)
		}
	}
}

func mustAppend(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func parseFrameSeeds() []seed {
	helloHead := append([]byte{Version1}, u32(64<<10)...)
	tooMany := append(bytes.Clone(helloHead), str("a")...)
	tooMany = append(tooMany, MaxConnectors+1)
	for i := 0; i < MaxConnectors+1; i++ {
		tooMany = append(tooMany, str("c")...)
	}
	return []seed{
		// One valid frame of every type.
		one("hello_no_connectors", mustAppend(AppendHello(nil, Hello{Version: Version1, Window: 64 << 10, AgentID: "a"}))),
		one("hello_v2", mustAppend(AppendHello(nil, Hello{Version: 2, Window: 256 << 10, AgentID: "a", Connectors: []string{"c"}, MaxWindow: 16 << 20, TunnelWindow: 64 << 20, Instance: 7}))),
		one("hello_ack_v2", AppendHelloAck(nil, HelloAck{Version: 2, Window: 256 << 10, MaxWindow: 16 << 20, TunnelWindow: 64 << 20})),
		one("window_tunnel", AppendWindow(nil, 0, 16<<20)),
		one("hello_two_connectors", mustAppend(AppendHello(nil, Hello{Version: Version1, Window: MaxWindow, AgentID: "agent-1", Connectors: []string{"ssh", "rdp"}}))),
		one("hello_ack", AppendHelloAck(nil, HelloAck{Version: Version1, Window: 256 << 10})),
		one("open", mustAppend(AppendOpen(nil, 1, "ssh", "192.0.2.1:50000"))),
		one("open_empty_addr", mustAppend(AppendOpen(nil, 0xffffffff, "c", ""))),
		one("open_ack", AppendEmpty(nil, FrameOpenAck, 1)),
		one("open_err", AppendReason(nil, FrameOpenErr, 1, ReasonDialFailed, "connection refused")),
		one("data_1", frameBytes(FrameData, 1, []byte{0})),
		one("data_1000", frameBytes(FrameData, 2, pattern(1000))),
		one("fin", AppendEmpty(nil, FrameFin, 1)),
		one("rst", AppendReason(nil, FrameRst, 1, ReasonIdle, "")),
		one("rst_max_reason", AppendReason(nil, FrameRst, 1, ReasonProtocol, string(bytes.Repeat([]byte("m"), MaxReasonLen)))),
		one("window_1", AppendWindow(nil, 1, 1)),
		one("window_max", AppendWindow(nil, 1, MaxWindow)),
		one("ping", AppendPing(nil, FramePing, 0x0102030405060708)),
		one("pong", AppendPing(nil, FramePong, ^uint64(0))),
		one("goaway", AppendEmpty(nil, FrameGoAway, 0)),
		// Malformed.
		one("empty", []byte{}),
		one("short_header", []byte{byte(FrameFin), 0, 0, 1}),
		one("unknown_type", frameBytes(FrameGoAway+1, 0, make([]byte, 8))),
		one("goaway_cid_1", frameBytes(FrameGoAway, 1)),
		one("goaway_payload", frameBytes(FrameGoAway, 0, []byte{0})),
		one("data_cid_0", frameBytes(FrameData, 0, []byte("x"))),
		one("ping_cid_1", frameBytes(FramePing, 1, make([]byte, 8))),
		one("hello_cid_1", frameBytes(FrameHello, 1, helloHead, str("a"), []byte{0})),
		one("data_empty", frameBytes(FrameData, 1)),
		one("fin_payload", frameBytes(FrameFin, 1, []byte{0})),
		one("window_0", frameBytes(FrameWindow, 1, u32(0))),
		one("window_over_max", frameBytes(FrameWindow, 1, u32(MaxWindow+1))),
		one("window_short", frameBytes(FrameWindow, 1, []byte{0, 1})),
		one("rst_reason_201", frameBytes(FrameRst, 1, []byte{1}, pattern(MaxReasonLen+1))),
		one("open_connector_overruns", frameBytes(FrameOpen, 1, []byte{9, 's', 's', 'h'})),
		one("open_addr_overruns", frameBytes(FrameOpen, 1, str("ssh"), []byte{4, '1'})),
		one("open_trailing", frameBytes(FrameOpen, 1, str("ssh"), str(""), []byte{0})),
		one("hello_ack_window_0", frameBytes(FrameHelloAck, 0, []byte{Version1}, u32(0))),
		one("hello_agent_overruns", frameBytes(FrameHello, 0, helloHead, []byte{200, 'a'})),
		one("hello_trailing", frameBytes(FrameHello, 0, helloHead, str("a"), []byte{1}, str("c"), []byte{0})),
		one("hello_65_connectors", frameBytes(FrameHello, 0, tooMany)),
	}
}

func wsHeaderSeeds() []seed {
	mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	hdr := func(h ws.Header) []byte { return AppendWSHeader(nil, h) }
	masked := func(h ws.Header) ws.Header {
		h.Masked, h.Mask = true, mask
		return h
	}
	return []seed{
		one("binary_0", hdr(BinaryHeader(0))),
		one("text_125_masked", hdr(masked(ws.Header{Fin: true, OpCode: ws.OpText, Length: 125}))),
		one("binary_126", hdr(BinaryHeader(126))),
		one("binary_65535_masked", hdr(masked(BinaryHeader(65535)))),
		one("binary_65536", hdr(BinaryHeader(65536))),
		one("binary_1_40_masked", hdr(masked(BinaryHeader(1<<40)))),
		one("binary_max_int64", hdr(ws.Header{Fin: true, OpCode: ws.OpBinary, Length: math.MaxInt64})),
		one("continuation_no_fin", hdr(ws.Header{OpCode: ws.OpContinuation, Length: 1000})),
		one("ping_masked", hdr(masked(ws.Header{Fin: true, OpCode: ws.OpPing, Length: 4}))),
		one("pong_125", hdr(ws.Header{Fin: true, OpCode: ws.OpPong, Length: 125})),
		one("close_2", hdr(ws.Header{Fin: true, OpCode: ws.OpClose, Length: 2})),
		one("header_and_payload", append(hdr(masked(BinaryHeader(5))), "hello"...)),
		// Short.
		one("short_1", []byte{0x82}),
		one("short_16bit", []byte{0x82, 126, 1}),
		one("short_64bit", []byte{0x82, 127, 0, 0, 0, 0, 0, 1}),
		one("short_mask", []byte{0x82, 0x80 | 5, 1, 2, 3}),
		// Protocol errors.
		one("rsv1", []byte{0xc2, 0}),
		one("rsv3_masked", []byte{0x92, 0x80, 1, 2, 3, 4}),
		one("ping_126", []byte{0x89, 126, 0, 126}),
		one("ping_no_fin", []byte{0x09, 0}),
		one("non_minimal_16", []byte{0x82, 126, 0, 125}),
		one("non_minimal_64", []byte{0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff}),
		one("length_msb", []byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}),
		one("opcode_3", []byte{0x83, 0}),
		one("opcode_b", []byte{0x8b, 0}),
	}
}

// Builders of FuzzStream seeds; each returns the bytes streamFrames reads
// for one frame.
func sCID(cid uint32) []byte { return u32(cid) }

func sType(t FrameType) []byte { return []byte{byte(t) - 1} }

func sData(cid uint32, n int, fill byte) []byte {
	sel := byte(0)
	if n <= 128 {
		sel = byte(n - 1)
	} else {
		for s := 128; s < 256; s++ {
			if dataLens[s%len(dataLens)] == n {
				sel = byte(s)
				break
			}
		}
		if dataLens[int(sel)%len(dataLens)] != n || sel < 128 {
			panic(fmt.Sprintf("no selector for a DATA of %d bytes", n))
		}
	}
	return cat(sType(FrameData), sCID(cid), []byte{sel, fill})
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func streamSeeds() []seed {
	everyType := cat(
		sType(FrameHello), []byte{Version1}, u32(64<<10), []byte{5, 'a', 2, 3, 'c', 4, 'd'},
		sType(FrameHelloAck), []byte{Version1}, u32(256<<10),
		sType(FrameOpen), sCID(1), []byte{3, 's', 14, '1'},
		sData(1, 10, 'x'),
		sType(FrameOpenAck), sCID(1),
		sType(FrameWindow), sCID(1), u32(4096),
		sType(FramePing), u32(1), u32(2),
		sType(FramePong), u32(1), u32(2),
		sType(FrameOpenErr), sCID(2), []byte{byte(ReasonDialFailed), 7, 'e'},
		sType(FrameFin), sCID(1),
		sType(FrameRst), sCID(1), []byte{byte(ReasonIdle), 0, 0},
		sType(FrameGoAway),
	)
	boundaries := cat(
		sData(1, 120, 1), // WebSocket length 125: 7-bit
		sData(1, 121, 2), // 126: 16-bit
		sData(1, 65530, 3),
		sData(1, 65531, 4), // 65536: 64-bit
	)
	return []seed{
		{name: "empty", args: [][]byte{{}, {}}},
		{name: "every_type_whole", args: [][]byte{everyType, {}}},
		{name: "every_type_bytewise", args: [][]byte{everyType, {1}}},
		{name: "every_type_primes", args: [][]byte{everyType, {2, 3, 5, 7, 11, 13}}},
		{name: "every_type_empty_reads", args: [][]byte{everyType, {0, 1, 0, 0, 6}}},
		{name: "length_classes_split", args: [][]byte{boundaries, {0x81, 3, 125, 0}}},
		{name: "length_classes_13", args: [][]byte{boundaries, {13}}},
		{name: "max_payload", args: [][]byte{cat(sData(7, MaxPayload, 9), sType(FrameFin), sCID(7)), {0xff, 1}}},
		{name: "reasons_max", args: [][]byte{cat(
			sType(FrameRst), sCID(3), []byte{byte(ReasonOverload), MaxReasonLen, 'r'},
			sType(FrameOpenErr), sCID(4), []byte{byte(ReasonNotAllowed), 255, 'o'},
		), {4}}},
		{name: "hello_many_connectors", args: [][]byte{cat(
			sType(FrameHello), []byte{Version1}, u32(MaxWindow-1), []byte{255, 'i', MaxConnectors},
			bytes.Repeat([]byte{255, 'c'}, MaxConnectors),
		), {0x82, 17}}},
	}
}
