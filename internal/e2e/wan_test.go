package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/internal/wanlink"
)

// Tests over an emulated WAN (internal/wanlink between agent and hub):
// windows grow while a stream is limited by credit, never for a stalled
// one, and protocol 1 peers keep fixed windows and still work.

// startWANAgent runs an in-process agent whose tunnels cross a link with
// the given one-way delay.
func startWANAgent(t *testing.T, th *testHub, delay time.Duration, id string, targets map[string]string, mod ...func(*agent.Config)) (*testAgent, *wanlink.Link) {
	t.Helper()
	link, err := wanlink.Start(wanlink.Config{Target: th.Control, Delay: delay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = link.Close() })
	mod = append(mod, func(c *agent.Config) { c.URLs = []string{"ws://" + link.Addr() + "/tunnel"} })
	return startAgent(t, th, id, targets, mod...), link
}

// TestWindowsGrowOverWAN: over a 50 ms round trip a bulk download and a
// bulk upload grow their windows (on the hub and on the agent), byte-exact.
func TestWindowsGrowOverWAN(t *testing.T) {
	tgt := startServer(t, exchangeTarget)
	th := startHub(t, []string{"bulk"})
	aset := metrics.NewSet()
	startWANAgent(t, th, 25*time.Millisecond, "a1", map[string]string{"bulk": tgt.Addr()}, withAgentMetrics(aset))
	const size = 24 << 20
	if err := exchange(th.Addr["bulk"], 1, size, size); err != nil {
		t.Fatal(err)
	}
	hubGrowths := testenv.Metric(t, th.Metrics().WritePrometheus, `nowconnect_stream_window_growths_total`)
	agentGrowths := testenv.Metric(t, aset.WritePrometheus, `nowconnect_agent_stream_window_growths_total`)
	t.Logf("window doublings: hub %v (agent→client), agent %v (client→agent)", hubGrowths, agentGrowths)
	if hubGrowths == 0 {
		t.Error("the hub never grew a window of a credit-limited download over 50 ms")
	}
	if agentGrowths == 0 {
		t.Error("the agent never grew a window of a credit-limited upload over 50 ms")
	}
	// Growth stops at max_stream_window: 16 MiB = 256 KiB × 2^6.
	if hubGrowths > 6 || agentGrowths > 6 {
		t.Errorf("one stream doubled its window %v/%v times: past max_stream_window", hubGrowths, agentGrowths)
	}
}

// TestProtocolV1Interop: a hub that speaks only protocol 1 with a new
// agent, and a new hub with an agent that speaks only protocol 1, both
// carry streams byte-exact with fixed windows (no growth even over a WAN).
func TestProtocolV1Interop(t *testing.T) {
	tgt := startServer(t, exchangeTarget)
	for _, tc := range []struct {
		name      string
		hubProto  int
		agentProt int
	}{
		{"v1 hub, v2 agent", codec.Version1, codec.Version},
		{"v2 hub, v1 agent", codec.Version, codec.Version1},
		{"v2 both", codec.Version, codec.Version},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := startHub(t, []string{"svc"}, func(c *hub.Config) { c.MaxProtocol = tc.hubProto })
			aset := metrics.NewSet()
			startWANAgent(t, th, 10*time.Millisecond, "a1", map[string]string{"svc": tgt.Addr()}, withAgentMetrics(aset),
				func(c *agent.Config) { c.MaxProtocol = tc.agentProt })
			want := fmt.Sprintf(`"protocol":%d`, min(tc.hubProto, tc.agentProt))
			testenv.WaitFor(t, 5*time.Second, "agent_connected with "+want, func() bool {
				return strings.Contains(th.Logs.String(), want)
			})
			for i := range 3 {
				if err := exchange(th.Addr["svc"], uint64(i), 3<<20, 5<<20); err != nil {
					t.Fatalf("exchange %d: %v", i, err)
				}
			}
			growths := testenv.Metric(t, th.Metrics().WritePrometheus, `nowconnect_stream_window_growths_total`) +
				testenv.Metric(t, aset.WritePrometheus, `nowconnect_agent_stream_window_growths_total`)
			if v1 := tc.hubProto == codec.Version1 || tc.agentProt == codec.Version1; v1 && growths != 0 {
				t.Errorf("protocol 1 grew windows %v times", growths)
			}
		})
	}
}

// heapOf returns the smallest of three readings of a process's live heap
// (go_memstats_heap_alloc_bytes on its /metrics): the smallest is the one
// least inflated by garbage not yet collected.
func heapOf(t *testing.T, url string) int64 {
	t.Helper()
	var best int64 = -1
	for range 3 {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		write := func(w io.Writer) { _, _ = w.Write(b) }
		v := int64(testenv.Metric(t, write, "go_memstats_heap_alloc_bytes"))
		if best < 0 || v < best {
			best = v
		}
	}
	return best
}

// TestStalledClientsOverWAN: at a 50 ms round trip, clients that never
// read while their targets send cost the hub and the agent (real
// processes) at most a window each: a stalled stream's window never grows.
//
// The clients keep their kernel receive buffers small and the hub its send
// buffers: bytes a kernel takes count as consumed (the hub cannot tell a
// kernel buffer from a reader), so with megabytes of kernel buffers a
// stream would first move at full speed, and rightly grow, before stalling
// with the window it then had.
func TestStalledClientsOverWAN(t *testing.T) {
	bin := testenv.Binary(t)
	const stalled = 8
	const window = 256 << 10
	src := startServer(t, func(c net.Conn) { _, _ = io.CopyN(c, newPRNG(9), 256<<20) })
	control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	env := []string{"GOGC=10"} // heap readings close to the live heap
	h := testenv.StartProcess(t, bin, []string{"cloud", "--config",
		cloudConfig(t, control, listen, "\n[engine]\nsocket_send_buffer = 16384\n")}, env)
	h.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)
	link, err := wanlink.Start(wanlink.Config{Target: control, Delay: 25 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = link.Close() })
	agentMetrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(token(t, "a1", []string{"svc"})), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.StartProcess(t, bin, []string{"premise", "--cloud", "ws://" + link.Addr() + "/tunnel", "--agent-id", "a1",
		"--token-file", tok, "--connector", "svc=" + src.Addr(), "--metrics-listen", agentMetrics}, env)
	h.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)
	hubURL, agentURL := "http://"+control+"/metrics", "http://"+agentMetrics+"/metrics"
	testenv.WaitFor(t, 10*time.Second, "agent metrics", func() bool {
		_, err := http.Get(agentURL)
		return err == nil
	})
	hub0, agent0 := heapOf(t, hubURL), heapOf(t, agentURL)

	d := net.Dialer{Control: smallRcvbuf}
	for range stalled {
		c, err := d.Dial("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // never read
	}
	// The targets block once the windows and the kernel buffers are full.
	a2c := func() int64 {
		resp, err := http.Get(hubURL)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return int64(testenv.Metric(t, func(w io.Writer) { _, _ = w.Write(b) }, `nowconnect_tcp_bytes_total{direction="a2c",connector="svc"}`))
	}
	settled := waitStable(t, 30*time.Second, time.Second, "stalled streams settle", a2c)
	hubHeld, agentHeld := heapOf(t, hubURL)-hub0, heapOf(t, agentURL)-agent0
	per := func(v int64) int64 { return v / stalled }
	t.Logf("%d stalled clients: %d KiB went through; held per client: hub %d KiB, agent %d KiB (window %d KiB)",
		stalled, settled>>10, per(hubHeld)>>10, per(agentHeld)>>10, window>>10)
	// A window each, plus the noise of a heap reading (~64 KiB a client).
	if per(hubHeld) > window+64<<10 {
		t.Errorf("the hub holds %d KiB per stalled client, more than its window", per(hubHeld)>>10)
	}
	if per(agentHeld) > window+64<<10 {
		t.Errorf("the agent holds %d KiB per stalled client, more than its window", per(agentHeld)>>10)
	}
	resp, err := http.Get(hubURL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if v := testenv.Metric(t, func(w io.Writer) { _, _ = w.Write(b) }, `nowconnect_stream_window_growths_total`); v != 0 {
		t.Errorf("stalled streams grew their windows %v times", v)
	}
}
