package mesh_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// A peer hub in a process of its own, for what needs a real process (SIGSTOP): the
// test binary re-executes itself with these variables set, and TestMain runs a
// Manager instead of the tests.
const (
	peerEnvReplica = "NC_MESHPEER_REPLICA"
	peerEnvSecret  = "NC_MESHPEER_SECRET" // hex
	peerReady      = "meshpeer listening on "
)

func TestMain(m *testing.M) {
	if r := os.Getenv(peerEnvReplica); r != "" {
		os.Exit(runPeer(r))
	}
	os.Exit(m.Run())
}

// runPeer runs a hub with a listener on a random loopback port until SIGTERM.
func runPeer(replica string) int {
	secret, err := hex.DecodeString(os.Getenv(peerEnvSecret))
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshpeer:", err)
		return 2
	}
	m, err := mesh.NewManager(mesh.ManagerConfig{ReplicaID: replica, Secret: secret, Listen: "127.0.0.1:0",
		Handler: nopHandler{}, Logger: slog.New(slog.NewJSONHandler(os.Stderr, nil))})
	if err == nil {
		err = m.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshpeer:", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Printf("%s%s\n", peerReady, m.ListenAddr())
	<-sig
	m.Close()
	return 0
}

type nopHandler struct{}

func (nopHandler) LinkUp(*mesh.Link)                          {}
func (nopHandler) Frame(*mesh.Link, codec.MeshHeader, []byte) {}
func (nopHandler) LinkDown(*mesh.Link, error)                 {}

// TestFrozenPeer: a peer hub process that is SIGSTOPped (alive for TCP, silent for
// the mesh) is detected by the default liveness settings within 15 s, with
// ErrPingTimeout; once thawed it is linked again, and when killed (-9) its link drops
// on the TCP error.
func TestFrozenPeer(t *testing.T) {
	testenv.CheckGoroutines(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := testenv.StartProcess(t, exe, nil, []string{peerEnvReplica + "=hub-frozen", peerEnvSecret + "=" + hex.EncodeToString(testSecret)})
	p.WaitForOutput(t, peerReady, 30*time.Second)
	var addr string
	if _, err := fmt.Sscanf(p.Output()[strings.Index(p.Output(), peerReady)+len(peerReady):], "%s", &addr); err != nil {
		t.Fatalf("peer address: %v in %q", err, p.Output())
	}
	a := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-a", Secret: testSecret, Peers: []string{"ws://" + addr + "/mesh"}})
	a.waitLink(t, "hub-frozen")
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	t.Cleanup(func() { _ = p.Signal(syscall.SIGCONT) })
	testenv.WaitFor(t, 20*time.Second, "LinkDown of the frozen peer", func() bool { _, d := a.rec.counts(); return d == 1 })
	took := time.Since(stopped)
	t.Logf("SIGSTOPped peer detected after %v (PingInterval %v, PingTimeout %v)", took.Round(time.Millisecond), mesh.DefaultPingInterval, mesh.DefaultPingTimeout)
	if took > 15*time.Second {
		t.Errorf("detected after %v, want ≤ 15s", took)
	}
	if err := a.rec.lastDown(); !errors.Is(err, mesh.ErrPingTimeout) {
		t.Errorf("LinkDown error %v, want ErrPingTimeout", err)
	}

	// Thawed, the peer is dialed again; killed, its kernel closes the socket and the
	// link drops on the TCP error, not after PingTimeout.
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	a.waitLink(t, "hub-frozen")
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	testenv.WaitFor(t, 20*time.Second, "LinkDown of the killed peer", func() bool { _, d := a.rec.counts(); return d == 2 })
	t.Logf("killed peer detected after %v", time.Since(killed).Round(time.Millisecond))
	if err := a.rec.lastDown(); !errors.Is(err, mesh.ErrPeerClosed) && !errors.Is(err, mesh.ErrLinkIO) {
		t.Errorf("LinkDown error %v, want ErrPeerClosed or ErrLinkIO (EOF or a reset)", err)
	}
}
