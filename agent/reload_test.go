package agent

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestReloadConnectors against the protocol 1 test hub: a new target
// applies to the next stream, an added connector serves, a removed one
// answers OPEN_ERR(unknown_connector), an invalid reload changes nothing,
// and the tunnel, which cannot be retired on protocol 1, is left up with a
// warning.
func TestReloadConnectors(t *testing.T) {
	checkLeaks(t)
	var hits [2]atomic.Int64
	target := func(i int) *targetServer {
		return newTarget(t, func(c *net.TCPConn) { hits[i].Add(1); echoHandler(c) })
	}
	t0, t1 := target(0), target(1)
	h := newTestHub(t, hubOpts{})
	logs := &testenv.SyncBuffer{}
	a := newAgent(t, testConfig([]string{h.url}, map[string]string{"a": t0.addr()}, logs))
	runAgent(t, a)
	p := h.nextPeer(t)
	if !slices.Equal(p.hello.Connectors, []string{"a"}) {
		t.Fatalf("HELLO connectors %q", p.hello.Connectors)
	}

	changes, err := a.Reload(Config{Connectors: map[string]string{"a": t1.addr(), "b": t0.addr()}, MaskClientAddr: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"connector a target " + t0.addr() + " → " + t1.addr(), "connector b added (" + t0.addr() + ")",
		"tunnels rotate to announce the connectors", "log.mask_client_addr false → true"}
	if !slices.Equal(changes, want) {
		t.Fatalf("changes\n got %q\nwant %q", changes, want)
	}
	waitFor(t, "tunnel_rotate_unsupported", func() bool {
		return strings.Contains(logs.String(), `"msg":"tunnel_rotate_unsupported"`)
	})

	open := func(cid uint32, connector string) {
		t.Helper()
		p.open(cid, connector)
		p.expect(t, codec.FrameOpenAck, cid)
		p.data(cid, []byte("x"))
		p.expect(t, codec.FrameData, cid)
		p.fin(cid)
		p.expect(t, codec.FrameFin, cid)
	}
	open(1, "a")
	if hits[1].Load() != 1 || hits[0].Load() != 0 {
		t.Fatalf("a dialed old %d, new %d times", hits[0].Load(), hits[1].Load())
	}
	open(3, "b")
	if hits[0].Load() != 1 {
		t.Fatal("the added connector did not dial its target")
	}

	// Invalid: nothing changes.
	for _, bad := range []Config{
		{},
		{Connectors: map[string]string{"a": "no-port"}},
		{Connectors: map[string]string{"a": t1.addr()}, ProxyProtocol: map[string]string{"a": "v1"}},
	} {
		if _, err := a.Reload(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("Reload(%+v) = %v, want ErrConfig", bad, err)
		}
	}
	open(5, "b")

	if changes, err := a.Reload(Config{Connectors: map[string]string{"a": t1.addr()}, MaskClientAddr: true}); err != nil ||
		!slices.Contains(changes, "connector b removed") {
		t.Fatalf("remove b: %q, %v", changes, err)
	}
	p.open(7, "b")
	p.expectReason(t, codec.FrameOpenErr, 7, codec.ReasonUnknownConnector)
	open(9, "a")
	if a.Connects() != 1 {
		t.Errorf("the protocol 1 tunnel was replaced (%d connects)", a.Connects())
	}
}

// TestSlotTransitions walks the states a tunnel slot goes through in a
// rotation (joinSlot, leaveSlot): a replacement takes over from a live
// session, which is then retired (GOAWAY queued) and ends its loop; one
// whose predecessor ended first is refused and ends its loop; a plain
// session that dropped frees the slot and its loop goes on.
func TestSlotTransitions(t *testing.T) {
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	sess := func(succeeds *session) *session {
		c, peer := testenv.TCPPair(t)
		drain(&wg, peer)
		s := newBareSession(t, c)
		s.snd.direct = nil // frames stay queued, for queuedFrames
		s.set, s.succeeds = s.a.conns.Load(), succeeds
		if succeeds != nil {
			s.a, s.settled = succeeds.a, make(chan struct{})
		}
		return s
	}
	old := sess(nil)
	a := old.a
	if err := a.joinSlot(old); err != nil || a.slots[0] != old {
		t.Fatalf("a plain session did not take its slot: %v", err)
	}
	r := sess(old)
	if err := a.joinSlot(r); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.settled:
	default:
		t.Fatal("the replacement was not settled")
	}
	if !r.promoted || !old.retired || a.slots[0] != r {
		t.Fatalf("promoted %v, retired %v, slot is the replacement: %v", r.promoted, old.retired, a.slots[0] == r)
	}
	if got := queuedFrames(t, &old.snd); !slices.Equal(got, []codec.FrameType{codec.FrameGoAway}) {
		t.Errorf("queued on the retired session: %v, want GOAWAY", got)
	}
	if got := queuedFrames(t, &r.snd); len(got) != 0 {
		t.Errorf("queued on the replacement: %v", got)
	}
	if !a.leaveSlot(old) || a.slots[0] != r {
		t.Fatal("the retired session's loop goes on, or it took the slot with it")
	}
	if late := sess(old); a.joinSlot(late) == nil {
		t.Fatal("a replacement of a session that ended took over")
	} else if !a.leaveSlot(late) {
		t.Fatal("a replacement that never took over keeps its loop")
	}
	if a.leaveSlot(r) || a.slots[0] != nil {
		t.Fatal("a promoted session that dropped did not reconnect, or kept the slot")
	}
}

// queuedFrames takes what w has queued (no writer runs) and returns the
// types of the tunnel frames in it.
func queuedFrames(t *testing.T, w *sender) []codec.FrameType {
	t.Helper()
	w.takeBatch()
	var out []codec.FrameType
	for b := w.wCtrl; len(b) > 0; {
		h, n, err := codec.ParseWSHeader(b)
		if err != nil {
			t.Fatal(err)
		}
		p := bytes.Clone(b[n : n+int(h.Length)])
		ws.Cipher(p, h.Mask, 0)
		fh, _, err := codec.ParseFrame(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fh.Type)
		b = b[n+int(h.Length):]
	}
	return out
}
