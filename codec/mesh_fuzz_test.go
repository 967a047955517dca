package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// The seed corpora of FuzzParseMeshFrame and FuzzMeshStream are written by
// TestSeedCorpus (fuzz_test.go) from meshFrameSeeds and meshStreamSeeds.

var meshErrs = append([]error{ErrBadHeader}, tunnelErrs...)

func isMeshErr(err error) bool {
	for _, e := range meshErrs {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func FuzzParseMeshFrame(f *testing.F) {
	s255 := strings.Repeat("x", 255)
	f.Add(meshBytes(MeshFrameData, 1, 1, 1, s255, s255, pattern(MaxPayload)))
	f.Add(meshBytes(MeshFrameData, 1, 1, 1, s255, s255, pattern(MaxPayload+1)))
	open := mustAppend(AppendMeshOpen(nil, 3, 9, "agent", "ldap", "192.0.2.1:1"))
	for k := range open {
		f.Add(open[:k])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, err := ParseMeshFrame(b)
		if err != nil {
			if !isMeshErr(err) {
				t.Fatalf("ParseMeshFrame: error %v is no sentinel", err)
			}
			return
		}
		if len(b) > MaxMeshFrameLen || !h.Type.Valid() || MeshFrameType(b[0]) != h.Type {
			t.Fatalf("ParseMeshFrame accepted %d bytes of type %v", len(b), h.Type)
		}
		if !h.Type.Link() {
			if h.CID != binary.BigEndian.Uint32(b[1:]) || h.Seq != binary.BigEndian.Uint64(b[5:]) ||
				h.Epoch != binary.BigEndian.Uint64(b[13:]) || len(p) != len(b)-MeshHeaderLen(string(h.Agent), string(h.Connector)) {
				t.Fatalf("ParseMeshFrame = %+v, %d payload bytes; input %x", h, len(p), b)
			}
		} else if !bytes.Equal(p, b[1:]) {
			t.Fatalf("link frame payload %x, input %x", p, b)
		}
		fr, err := decodeMeshFrame(b) // panics if a payload parser fails
		if err != nil {
			t.Fatalf("decode after ParseMeshFrame accepted: %v", err)
		}
		// Every mesh frame has one encoding: what parses re-encodes to the
		// same bytes. A later version's M_HELLO re-encodes to its
		// version 1 fields, which begin it, but for the version byte and
		// the flags this build does not know.
		later := fr.Type == MeshFrameHello && fr.Hello.Version != MeshVersion
		if later {
			fr.Hello.Version = MeshVersion
		}
		re, err := appendMeshFrame(nil, fr)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", fr, err)
		}
		want := b
		if later {
			want = bytes.Clone(b[:len(re)])
			want[1] = MeshVersion
			want[len(re)-1] &= meshFlagActive
		}
		if !bytes.Equal(re, want) {
			t.Fatalf("re-encoded %v:\n got %x\nwant %x", h.Type, re, want)
		}
	})
}

// meshTypes lists the mesh frame types in the order of meshStreamFrames'
// type selector.
var meshTypes = []MeshFrameType{
	MeshFrameHello, MeshFrameOpen, MeshFrameOpenAck, MeshFrameOpenErr, MeshFrameData,
	MeshFrameFin, MeshFrameRst, MeshFrameWindow, MeshFramePing, MeshFramePong,
}

// meshDataLens are the M_DATA sizes a length selector ≥ 128 picks: with a
// 1-byte agent and connector (a header of 25 bytes), the edges of the
// WebSocket length classes, and MaxPayload.
var meshDataLens = []int{1, 100, 101, 102, 1000, 16 << 10, 65509, 65510, 65511, MaxPayload}

func (r *seedReader) meshDataLen() int {
	sel := r.byte()
	if sel < 128 {
		return int(sel) + 1
	}
	return meshDataLens[int(sel)%len(meshDataLens)]
}

func (r *seedReader) u64() uint64 { return uint64(r.u32())<<32 | uint64(r.u32()) }

// meshStreamFrames derives valid mesh frames from seed: a type selector,
// then the fields of that type (see the seedReader methods). The same seed
// always gives the same frames, and every seed gives at least one.
func meshStreamFrames(seed []byte) []meshFrame {
	r := &seedReader{b: seed}
	var out []meshFrame
	total := 0
	for len(out) == 0 || (r.more() && len(out) < maxStreamFrames && total < maxStreamBytes) {
		f := meshFrame{Type: meshTypes[int(r.byte())%len(meshTypes)]}
		stream := func() {
			f.CID, f.Seq, f.Epoch = r.cid(), max(uint64(r.u32()), 1), max(r.u64(), 1)
			f.Agent, f.Connector = r.str(1), r.str(1)
		}
		switch f.Type {
		case MeshFrameHello:
			f.Hello = MeshHello{Version: MeshVersion, Replica: r.str(1), Window: r.window()}
			f.Hello.MaxWindow = max(f.Hello.Window, r.window())
			f.Hello.LinkWindow = max(f.Hello.MaxWindow, r.window())
			f.Hello.Active = r.byte()%2 == 1
		case MeshFramePing, MeshFramePong:
			f.Opaque = r.u64()
		case MeshFrameOpen:
			stream()
			f.Seq, f.Client = 1, r.str(0)
		case MeshFrameOpenAck, MeshFrameFin:
			stream()
		case MeshFrameOpenErr, MeshFrameRst:
			stream()
			f.Reason = Reason(r.byte())
			f.Msg = string(r.fill(int(r.byte()) % (MaxReasonLen + 1)))
		case MeshFrameData:
			stream()
			f.Data = r.fill(r.meshDataLen())
		case MeshFrameWindow:
			if r.byte()%2 == 0 {
				stream()
			} // else link-level: cid 0, zeros, empty strings
			f.Window = r.window()
		}
		out = append(out, f)
		total += MeshHeaderMax + len(f.Data)
	}
	return out
}

// meshWSEncode frames each mesh frame as one binary WebSocket message,
// masked (from the dialing hub) or not (from the accepting hub).
func meshWSEncode(t *testing.T, frames []meshFrame, masked bool, key uint32) []byte {
	var stream []byte
	for i, f := range frames {
		mf, err := appendMeshFrame(nil, f)
		if err != nil {
			t.Fatalf("encode %+v: %v", f, err)
		}
		h := BinaryHeader(len(mf))
		if masked {
			h.Masked = true
			binary.LittleEndian.PutUint32(h.Mask[:], key*uint32(2*i+1))
			ws.Cipher(mf, h.Mask, 0)
		}
		stream = AppendWSHeader(stream, h)
		stream = append(stream, mf...)
	}
	return stream
}

// meshStreamReader is the smallest incremental reader of a mesh link: it
// gathers bytes, parses a WebSocket header, waits for the whole message
// (at most MaxMeshFrameLen), unmasks it and parses the mesh frame.
type meshStreamReader struct {
	masked bool // whether every message must be masked
	buf    []byte
	frames []meshFrame
}

func (r *meshStreamReader) feed(p []byte) error {
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
		if h.Length > MaxMeshFrameLen {
			return fmt.Errorf("message of %d bytes: %w", h.Length, ErrFrameTooLarge)
		}
		if int64(len(r.buf)-off-n) < h.Length {
			return nil
		}
		msg := r.buf[off+n : off+n+int(h.Length)]
		if h.Masked {
			ws.Cipher(msg, h.Mask, 0)
		}
		f, err := decodeMeshFrame(msg)
		if err != nil {
			return err
		}
		r.frames = append(r.frames, f)
		off += n + int(h.Length)
	}
}

// FuzzMeshStream feeds a sequence of valid mesh frames, as WebSocket
// messages, to an incremental reader in arbitrary splits (see chunks) and
// checks that it decodes exactly those frames.
func FuzzMeshStream(f *testing.F) {
	for _, s := range meshStreamSeeds() {
		f.Add(s.args[0], s.args[1])
	}
	f.Fuzz(func(t *testing.T, seed, splits []byte) {
		want := meshStreamFrames(seed)
		h := fnv.New32a()
		h.Write(seed)
		key := h.Sum32()
		for _, masked := range []bool{false, true} {
			stream := meshWSEncode(t, want, masked, key)
			r := &meshStreamReader{masked: masked}
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
					masked, len(r.frames), len(want), describeMesh(r.frames), describeMesh(want))
			}
		}
	})
}

func describeMesh(fs []meshFrame) string {
	var b bytes.Buffer
	for _, f := range fs {
		fmt.Fprintf(&b, "%v/%d/%d/%dB ", f.Type, f.CID, f.Seq, len(f.Data))
	}
	return b.String()
}

// TestMeshCorpusCoverage checks that the FuzzParseMeshFrame corpus holds a
// valid frame of every type and an input for every sentinel, and that the
// FuzzMeshStream seeds reach every type and every WebSocket length class.
func TestMeshCorpusCoverage(t *testing.T) {
	valid := map[MeshFrameType]bool{}
	errs := map[error]bool{}
	for _, s := range meshFrameSeeds() {
		_, _, err := ParseMeshFrame(s.args[0])
		if err != nil {
			for _, e := range meshErrs {
				if errors.Is(err, e) {
					errs[e] = true
				}
			}
			continue
		}
		f, _ := decodeMeshFrame(s.args[0])
		valid[f.Type] = true
	}
	for _, mt := range meshTypes {
		if !valid[mt] {
			t.Errorf("FuzzParseMeshFrame corpus has no valid %v frame", mt)
		}
	}
	for _, e := range meshErrs {
		if !errs[e] && e != ErrStringTooLong { // a parser never sees a string over 255 bytes
			t.Errorf("FuzzParseMeshFrame corpus has no input that gives %v", e)
		}
	}

	types := map[MeshFrameType]bool{}
	classes := map[int]bool{}
	link := false
	for _, s := range meshStreamSeeds() {
		for _, f := range meshStreamFrames(s.args[0]) {
			types[f.Type] = true
			link = link || (f.Type == MeshFrameWindow && f.CID == 0)
			b, err := appendMeshFrame(nil, f)
			if err != nil {
				t.Fatalf("seed %s: encode %+v: %v", s.name, f, err)
			}
			classes[WSHeaderLen(BinaryHeader(len(b)))] = true
		}
	}
	for _, mt := range meshTypes {
		if !types[mt] {
			t.Errorf("no mesh stream seed makes a %v frame", mt)
		}
	}
	if !link {
		t.Errorf("no mesh stream seed makes a link-level M_WINDOW")
	}
	for _, n := range []int{2, 4, 10} {
		if !classes[n] {
			t.Errorf("no mesh stream seed makes a WebSocket header of %d bytes", n)
		}
	}
}

func meshFrameSeeds() []seed {
	s255 := strings.Repeat("s", 255)
	hello := MeshHello{Version: MeshVersion, Replica: "hub-a", Window: 256 << 10, MaxWindow: 16 << 20, LinkWindow: 32 << 20, Active: true}
	return []seed{
		// One valid frame of every type.
		one("hello", mustAppend(AppendMeshHello(nil, hello))),
		one("hello_shadow_min", helloBytes(1, "b", 1, 1, 1, 0)),
		one("hello_later_version", helloBytes(2, "hub-z", 4096, 8192, 1<<20, 0xff, 1, 2, 3)),
		one("ping", mustAppend(AppendMeshPing(nil, MeshFramePing, 0x0102030405060708))),
		one("pong", mustAppend(AppendMeshPing(nil, MeshFramePong, ^uint64(0)))),
		one("open", mustAppend(AppendMeshOpen(nil, 1, 7, "agent-1", "ldap", "192.0.2.1:50000"))),
		one("open_empty_client", mustAppend(AppendMeshOpen(nil, 0xffffffff, ^uint64(0), "a", "c", ""))),
		one("open_ack", mustAppend(AppendMeshHeader(nil, MeshFrameOpenAck, 2, 1, 7, "agent-1", "ldap"))),
		one("open_err", mustAppend(AppendMeshReason(nil, MeshFrameOpenErr, 1, 1, 7, "agent-1", "ldap", ReasonNotOwner, "not the owner"))),
		one("data_1", mustAppend(AppendMeshData(nil, 1, 2, 7, "a", "c", []byte{0}))),
		one("data_1000_long_names", mustAppend(AppendMeshData(nil, 3, 1<<40, 7, s255, s255, pattern(1000)))),
		one("fin", mustAppend(AppendMeshHeader(nil, MeshFrameFin, 1, 3, 7, "agent-1", "ldap"))),
		one("rst", mustAppend(AppendMeshReason(nil, MeshFrameRst, 1, 4, 7, "agent-1", "ldap", ReasonStaleEpoch, ""))),
		one("rst_max_reason", mustAppend(AppendMeshReason(nil, MeshFrameRst, 1, 4, 7, "a", "c", ReasonProtocol, strings.Repeat("m", MaxReasonLen)))),
		one("window", mustAppend(AppendMeshWindow(nil, 1, 5, 7, "agent-1", "ldap", 64<<10))),
		one("window_max", mustAppend(AppendMeshWindow(nil, 2, 5, 7, "a", "c", MaxWindow))),
		one("window_link", mustAppend(AppendMeshWindow(nil, 0, 0, 0, "", "", 8<<20))),
		// Malformed.
		one("empty", []byte{}),
		one("type_only", []byte{byte(MeshFrameFin)}),
		one("header_short", ms(MeshFrameFin, 1, 1)[:MeshHeaderMin]),
		one("agent_overruns", cat(ms(MeshFrameFin, 1, 1)[:meshFixedLen], []byte{9, 'a'})),
		one("unknown_0x42", ms(0x42, 1, 1)),
		one("tunnel_data", frameBytes(FrameData, 1, []byte("x"))),
		one("data_payload_over_max", ms(MeshFrameData, 1, 1, pattern(MaxPayload+1))),
		one("data_cid_0", ms(MeshFrameData, 0, 1, []byte("x"))),
		one("data_empty", ms(MeshFrameData, 1, 1)),
		one("data_empty_agent", meshBytes(MeshFrameData, 1, 1, 1, "", "c", []byte("x"))),
		one("data_seq_0", meshBytes(MeshFrameData, 1, 0, 1, "a", "c", []byte("x"))),
		one("fin_epoch_0", meshBytes(MeshFrameFin, 1, 1, 0, "a", "c")),
		one("open_seq_2", ms(MeshFrameOpen, 1, 2, str(""))),
		one("open_trailing", ms(MeshFrameOpen, 1, 1, str("a"), []byte{0})),
		one("fin_payload", ms(MeshFrameFin, 1, 1, []byte{0})),
		one("rst_reason_201", ms(MeshFrameRst, 1, 1, []byte{1}, pattern(MaxReasonLen+1))),
		one("window_0", ms(MeshFrameWindow, 1, 1, u32(0))),
		one("window_short", ms(MeshFrameWindow, 1, 1, []byte{0, 1})),
		one("window_link_with_seq", meshBytes(MeshFrameWindow, 0, 1, 0, "", "", u32(1))),
		one("ping_short", []byte{byte(MeshFramePing), 1, 2}),
		one("hello_version_0", helloBytes(0, "a", 1, 1, 1, 0)),
		one("hello_v1_trailing", helloBytes(1, "a", 1, 1, 1, 0, 0)),
		one("hello_v1_flag_2", helloBytes(1, "a", 1, 1, 1, 2)),
		one("hello_link_below_max", helloBytes(1, "a", 4096, 8192, 4096, 0)),
	}
}

// Builders of FuzzMeshStream seeds; each returns the bytes meshStreamFrames
// reads.
func msType(t MeshFrameType) []byte {
	for i, mt := range meshTypes {
		if mt == t {
			return []byte{byte(i)}
		}
	}
	panic(fmt.Sprintf("no selector for %v", t))
}

// msStream is a stream header: cid, seq, epoch, a 1-byte agent and
// connector.
func msStream(cid, seq uint32, epoch uint64) []byte {
	return cat(u32(cid), u32(seq), u64(epoch), []byte{1, 'a', 1, 'c'})
}

func msData(cid, seq uint32, n int, fill byte) []byte {
	sel := byte(0)
	if n <= 128 {
		sel = byte(n - 1)
	} else {
		for s := 128; s < 256; s++ {
			if meshDataLens[s%len(meshDataLens)] == n {
				sel = byte(s)
				break
			}
		}
		if sel < 128 {
			panic(fmt.Sprintf("no selector for an M_DATA of %d bytes", n))
		}
	}
	return cat(msType(MeshFrameData), msStream(cid, seq, 7), []byte{sel, fill})
}

func meshStreamSeeds() []seed {
	everyType := cat(
		msType(MeshFrameHello), []byte{5, 'h'}, u32(256<<10), u32(16<<20), u32(64<<20), []byte{1},
		msType(MeshFrameOpen), msStream(1, 1, 7), []byte{14, '1'},
		msData(1, 2, 10, 'x'),
		msType(MeshFrameOpenAck), msStream(1, 1, 7),
		msType(MeshFrameWindow), []byte{0}, msStream(1, 2, 7), u32(4096),
		msType(MeshFrameWindow), []byte{1}, u32(8<<20),
		msType(MeshFramePing), u32(1), u32(2),
		msType(MeshFramePong), u32(1), u32(2),
		msType(MeshFrameOpenErr), msStream(3, 1, 7), []byte{byte(ReasonStaleEpoch), 7, 'e'},
		msType(MeshFrameFin), msStream(1, 3, 7),
		msType(MeshFrameRst), msStream(1, 3, 7), []byte{byte(ReasonIdle), 0, 0},
	)
	boundaries := cat(
		msData(1, 1, 100, 1), // WebSocket length 125: 7-bit
		msData(1, 2, 101, 2), // 126: 16-bit
		msData(1, 3, 65510, 3),
		msData(1, 4, 65511, 4), // 65536: 64-bit
	)
	return []seed{
		{name: "empty", args: [][]byte{{}, {}}},
		{name: "every_type_whole", args: [][]byte{everyType, {}}},
		{name: "every_type_bytewise", args: [][]byte{everyType, {1}}},
		{name: "every_type_primes", args: [][]byte{everyType, {2, 3, 5, 7, 11, 13}}},
		{name: "every_type_empty_reads", args: [][]byte{everyType, {0, 1, 0, 0, 6}}},
		{name: "length_classes_split", args: [][]byte{boundaries, {0x81, 3, 125, 0}}},
		{name: "length_classes_13", args: [][]byte{boundaries, {13}}},
		{name: "max_payload", args: [][]byte{cat(msData(7, 1, MaxPayload, 9), msType(MeshFrameFin), msStream(7, 2, 7)), {0xff, 1}}},
		{name: "long_names", args: [][]byte{cat(
			msType(MeshFrameRst), u32(3), u32(9), u64(1<<52), []byte{255, 'a', 255, 'c'}, []byte{byte(ReasonOverload), MaxReasonLen, 'r'},
			msType(MeshFrameOpen), u32(5), u32(0), u64(1), []byte{255, 'a', 255, 'c', 255, 'o'},
		), {4}}},
	}
}
