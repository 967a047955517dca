package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// SIGHUP reloads with real processes (issue 11 item 4): listeners added
// and removed under a 64 MiB stream, an invalid file kept out, an
// allowlist and ha.mode switched, and an agent's connectors changed, which
// rotates its tunnels make-before-break (GOAWAY). Plus the same rotation
// in process, so that -race sees the agent's and the hub's reload code.

const reloadStream = 64 << 20

// gatedExchange runs one checksummed exchange of size bytes each way
// through addr (exchangeTarget at the far end) that stops half way in both
// directions, runs pause while the stream is provably in flight, then
// finishes; it fails unless every byte arrived intact.
func gatedExchange(addr string, seed uint64, size int64, pause func()) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[:8], seed)
	binary.BigEndian.PutUint64(hdr[8:], uint64(size))
	if _, err := c.Write(hdr[:]); err != nil {
		return err
	}
	half := size / 2
	up := newPRNG(seed + 1)
	resume := make(chan struct{})
	upHalf := make(chan error, 1)
	upDone := make(chan error, 1)
	go func() { // uploadLoop; its results are read below
		_, err := io.CopyN(c, up, half)
		upHalf <- err
		if err != nil {
			upDone <- err
			return
		}
		<-resume
		if _, err := io.CopyN(c, up, size-half); err != nil {
			upDone <- err
			return
		}
		upDone <- c.(*net.TCPConn).CloseWrite()
	}()
	got := sha256.New()
	if _, err := io.CopyN(got, c, half); err != nil {
		close(resume)
		return fmt.Errorf("first half of the download: %w", err)
	}
	if err := <-upHalf; err != nil {
		close(resume)
		return fmt.Errorf("first half of the upload: %w", err)
	}
	pause()
	close(resume)
	if _, err := io.CopyN(got, c, size-half); err != nil {
		return fmt.Errorf("second half of the download: %w", err)
	}
	want := sha256.New()
	_, _ = io.CopyN(want, newPRNG(seed), size)
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("download of %d bytes corrupted", size)
	}
	if err := <-upDone; err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	upSum := sha256.New()
	_, _ = io.CopyN(upSum, newPRNG(seed+1), size)
	var remote [32]byte
	if _, err := io.ReadFull(c, remote[:]); err != nil {
		return fmt.Errorf("reading the target's checksum: %w", err)
	}
	if !bytes.Equal(remote[:], upSum.Sum(nil)) {
		return fmt.Errorf("upload of %d bytes corrupted", size)
	}
	return nil
}

// refused reports whether nothing accepts on addr.
func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// closedUnserved reports whether a client of addr is closed without a
// byte (refused by the hub: no agent, cidr, unknown connector).
func closedUnserved(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	return closedAtOnce(c)
}

// writeFile writes (or rewrites) a config file.
func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reloadCloud is a cloud process whose config the test rewrites.
type reloadCloud struct {
	*testenv.Process
	control string
	path    string
	reloads int // SIGHUPs sent
}

// startReloadCloud writes body (listeners and the rest) under a fixed
// head (control port, auth) and starts the hub.
func startReloadCloud(t *testing.T, bin, body string) *reloadCloud {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "secret"), string(testSecret))
	c := &reloadCloud{control: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), path: filepath.Join(dir, "cloud.toml")}
	c.write(t, body)
	c.Process = testenv.StartProcess(t, bin, []string{"cloud", "--config", c.path}, nil)
	c.WaitForOutput(t, `"msg":"control_started"`, 15*time.Second)
	return c
}

// startReloadOneListener runs a hub process with listener l1 (returned)
// for connector svc, served by an agent process in front of an
// exchangeTarget, and waits for the agent.
func startReloadOneListener(t *testing.T) (*reloadCloud, string) {
	t.Helper()
	bin := testenv.Binary(t)
	tgt := startServer(t, exchangeTarget)
	l1 := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cloud := startReloadCloud(t, bin, listenerTOML("l1", l1, "svc", ""))
	startPremise(t, bin, cloud.control, "reload-agent", map[string]string{"svc": tgt.Addr()})
	cloud.WaitForOutput(t, `"msg":"agent_connected"`, 15*time.Second)
	return cloud, l1
}

func (c *reloadCloud) write(t *testing.T, body string) {
	t.Helper()
	writeFile(t, c.path, fmt.Sprintf("listen = %q\n%s\n[auth]\njwt_secret_file = \"secret\"\n", c.control, body))
}

// hup rewrites the config with body, sends SIGHUP and waits for the
// reload's verdict line; it returns that line.
func (c *reloadCloud) hup(t *testing.T, body string) map[string]any {
	t.Helper()
	c.write(t, body)
	return hupAndWait(t, c.Process, &c.reloads)
}

// hupAndWait signals p and waits for the outcome of reload number
// *count+1 (config_reloaded or config_reload_failed).
func hupAndWait(t *testing.T, p *testenv.Process, count *int) map[string]any {
	t.Helper()
	*count++
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	testenv.WaitFor(t, 15*time.Second, fmt.Sprintf("the verdict of reload %d", *count), func() bool {
		var verdicts []map[string]any // in the order logged
		for _, line := range strings.Split(p.Output(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && (m["msg"] == "config_reloaded" || m["msg"] == "config_reload_failed") {
				verdicts = append(verdicts, m)
			}
		}
		if len(verdicts) < *count {
			return false
		}
		rec = verdicts[*count-1]
		return true
	})
	if p.Exited() {
		t.Fatalf("the process exited on SIGHUP:\n%s", p.Output())
	}
	return rec
}

// listenerTOML is one [[listeners]] table.
func listenerTOML(name, bind, connector, extra string) string {
	return fmt.Sprintf("\n[[listeners]]\nname = %q\nbind = %q\nconnector = %q\n%s\n", name, bind, connector, extra)
}

// metricOf reads one series from a process's /metrics on addr.
func metricOf(t *testing.T, addr, series string) float64 { return agentMetric(t, addr, series) }

// noResets fails the test if the /metrics of addr count a stream reset.
func noResets(t *testing.T, who, addr string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "stream_resets_total{") && !strings.HasSuffix(line, " 0") {
			t.Errorf("%s counted a stream reset: %s", who, line)
		}
	}
}

func hasChange(rec map[string]any, sub string) bool {
	list, _ := rec["changes"].([]any)
	for _, c := range list {
		if s, _ := c.(string); strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestCloudReloadListeners: SIGHUP to a real cloud process adds a listener
// and removes another while a 64 MiB stream runs through a third. The
// stream is byte-exact, the new listener serves, the removed one refuses,
// and one successful reload is counted.
func TestCloudReloadListeners(t *testing.T) {
	bin := testenv.Binary(t)
	tgt := startServer(t, exchangeTarget)
	port := func() string { return fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) }
	l1, l2, l3 := port(), port(), port()
	cloud := startReloadCloud(t, bin, listenerTOML("l1", l1, "svc", "")+listenerTOML("l2", l2, "svc", ""))
	premise := startPremise(t, bin, cloud.control, "reload-agent", map[string]string{"svc": tgt.Addr()})
	cloud.WaitForOutput(t, `"msg":"agent_connected"`, 15*time.Second)
	success := `nowconnect_config_reloads_total{result="success"}`
	if v := metricOf(t, cloud.control, success); v != 0 {
		t.Fatalf("%s = %v before any reload", success, v)
	}
	if err := exchange(l2, 1, 1000, 1000); err != nil {
		t.Fatalf("l2 before the reload: %v", err)
	}

	// A stream through l1 (kept) and one through l2 (removed) are both in
	// flight across the reload: both finish byte-exact.
	var rec map[string]any
	var err error
	errL2 := gatedExchange(l2, 4, reloadStream, func() {
		err = gatedExchange(l1, 2, reloadStream, func() {
			rec = cloud.hup(t, listenerTOML("l1", l1, "svc", "")+listenerTOML("l3", l3, "svc", ""))
			if rec["msg"] != "config_reloaded" {
				t.Errorf("reload: %v", rec)
				return
			}
			if err := exchange(l3, 3, 100<<10, 100<<10); err != nil {
				t.Errorf("the added listener: %v", err)
			}
			if !refused(l2) {
				t.Error("the removed listener still accepts")
			}
		})
	})
	if err != nil {
		t.Fatalf("the stream through l1 across the reload: %v", err)
	}
	if errL2 != nil {
		t.Fatalf("the stream through removed listener l2 across the reload: %v", errL2)
	}
	t.Logf("config_reloaded: %v", rec["changes"])
	if !hasChange(rec, "listener l2 removed") || !hasChange(rec, "listener l3 added") {
		t.Errorf("the reload line does not say what changed: %v", rec)
	}
	if v := metricOf(t, cloud.control, success); v != 1 {
		t.Errorf("%s = %v, want 1", success, v)
	}
	if v := metricOf(t, cloud.control, `nowconnect_config_reloads_total{result="failure"}`); v != 0 {
		t.Errorf("failures counted: %v", v)
	}
	if v := metricOf(t, cloud.control, `nowconnect_config_last_reload_success_timestamp_seconds`); time.Since(time.Unix(int64(v), 0)) > time.Minute {
		t.Errorf("last success timestamp %v", v)
	}
	noResets(t, "the hub", cloud.control)
	checkLogLines(t, "cloud", cloud.Output(), false)
	checkLogLines(t, "premise", premise.Output(), false)
}

// TestCloudReloadInvalid: an invalid file on SIGHUP changes nothing: the
// hub keeps serving with the old config, logs config_reload_failed with
// the error (file, line, key) and counts a failure; then a valid file
// with a key that needs a restart applies the rest and names that key.
func TestCloudReloadInvalid(t *testing.T) {
	cloud, l1 := startReloadOneListener(t)

	var rec map[string]any
	err := gatedExchange(l1, 4, 8<<20, func() {
		rec = cloud.hup(t, listenerTOML("l1", l1, "svc", "bogus_key = 1"))
	})
	if err != nil {
		t.Fatalf("the stream across a failed reload: %v", err)
	}
	if rec["msg"] != "config_reload_failed" || !strings.Contains(fmt.Sprint(rec["errors"]), "bogus_key") {
		t.Fatalf("invalid config: %v", rec)
	}
	if err := exchange(l1, 5, 1000, 1000); err != nil {
		t.Fatalf("l1 after the failed reload: %v", err)
	}
	if v := metricOf(t, cloud.control, `nowconnect_config_reloads_total{result="failure"}`); v != 1 {
		t.Errorf("failures = %v, want 1", v)
	}
	if v := metricOf(t, cloud.control, `nowconnect_config_reloads_total{result="success"}`); v != 0 {
		t.Errorf("successes = %v, want 0", v)
	}
	if v := metricOf(t, cloud.control, `nowconnect_config_last_reload_success_timestamp_seconds`); v != 0 {
		t.Errorf("last success = %v after a failure only", v)
	}

	// Valid, with a key that cannot apply live: warned, the rest applied.
	rec = cloud.hup(t, "queue_depth_per_cid = 32\n"+listenerTOML("l1", l1, "svc", "")+"\n[log]\nlevel = \"debug\"\n")
	if rec["msg"] != "config_reloaded" || !hasChange(rec, "log.level info → debug") {
		t.Fatalf("second reload: %v", rec)
	}
	warned := false
	for _, r := range logLines(t, cloud.Output(), "config_reload_needs_restart") {
		warned = warned || r["key"] == "queue_depth_per_cid"
	}
	if !warned {
		t.Error("queue_depth_per_cid changed without a needs-restart warning")
	}
	if err := exchange(l1, 6, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "debug lines after log.level debug", func() bool {
		return strings.Contains(cloud.Output(), `"level":"DEBUG"`)
	})
	checkLogLines(t, "cloud", cloud.Output(), false)
}

// TestCloudReloadAllowAndMode: allow_cidrs and ha.mode (shadow → active,
// with the in-memory registry) switched by SIGHUP while a stream runs:
// new clients meet the new allowlist, /readyz and nowconnect_ha_mode show
// active, and the stream finishes intact.
func TestCloudReloadAllowAndMode(t *testing.T) {
	bin := testenv.Binary(t)
	tgt := startServer(t, exchangeTarget)
	l1 := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ha := func(mode string) string {
		return fmt.Sprintf("\n[ha]\nenabled = true\nmode = %q\nreplica_id = \"hub-a\"\n", mode)
	}
	cloud := startReloadCloud(t, bin, `allow_cidrs = ["127.0.0.0/8"]`+"\n"+listenerTOML("l1", l1, "svc", "")+ha("shadow"))
	startPremise(t, bin, cloud.control, "reload-agent", map[string]string{"svc": tgt.Addr()})
	cloud.WaitForOutput(t, `"msg":"agent_connected"`, 15*time.Second)
	if code, body := readyz(t, cloud.control); code != 200 || !strings.Contains(body, `"ha_mode":"shadow"`) {
		t.Fatalf("readyz before: %d %s", code, body)
	}

	var rec map[string]any
	err := gatedExchange(l1, 7, reloadStream, func() {
		rec = cloud.hup(t, `allow_cidrs = ["10.0.0.0/8"]`+"\n"+listenerTOML("l1", l1, "svc", "")+ha("active"))
		if rec["msg"] != "config_reloaded" {
			t.Errorf("reload: %v", rec)
			return
		}
		if !closedUnserved(l1) {
			t.Error("a client outside the new allowlist was served")
		}
		cloud.WaitForOutput(t, `"msg":"cidr_blocked"`, 5*time.Second)
		if code, body := readyz(t, cloud.control); code != 200 || !strings.Contains(body, `"ha_mode":"active"`) {
			t.Errorf("readyz after: %d %s", code, body)
		}
		if v := metricOf(t, cloud.control, `nowconnect_ha_mode{mode="active"}`); v != 1 {
			t.Errorf(`nowconnect_ha_mode{mode="active"} = %v`, v)
		}
	})
	if err != nil {
		t.Fatalf("the stream across the reload: %v", err)
	}
	if !hasChange(rec, "ha.mode shadow → active") || !hasChange(rec, "allow_cidrs") {
		t.Errorf("the reload line does not say what changed: %v", rec)
	}
	// Roll back (seed 003): active → shadow.
	rec = cloud.hup(t, `allow_cidrs = ["10.0.0.0/8"]`+"\n"+listenerTOML("l1", l1, "svc", "")+ha("shadow"))
	if rec["msg"] != "config_reloaded" || !hasChange(rec, "ha.mode active → shadow") {
		t.Fatalf("rollback: %v", rec)
	}
	if code, body := readyz(t, cloud.control); code != 200 || !strings.Contains(body, `"ha_mode":"shadow"`) {
		t.Errorf("readyz after the rollback: %d %s", code, body)
	}
	// ha.mode to off needs a restart: refused for that key, counted as a
	// failure, the rest still applies.
	rec = cloud.hup(t, `allow_cidrs = ["127.0.0.0/8"]`+"\n"+listenerTOML("l1", l1, "svc", "")+ha("off"))
	if rec["msg"] != "config_reload_failed" || !strings.Contains(fmt.Sprint(rec["errors"]), "needs a restart") {
		t.Fatalf("mode off: %v", rec)
	}
	if err := exchange(l1, 8, 1000, 1000); err != nil {
		t.Fatalf("the allowlist of the partly failed reload was not applied: %v", err)
	}
	noResets(t, "the hub", cloud.control)
}

// premiseTOML is an agent config with the connectors given (name=target).
func premiseTOML(control string, connectors ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "cloud_url = \"ws://%s/tunnel\"\nagent_id = \"reload-agent\"\ntoken_file = \"token\"\n", control)
	for _, c := range connectors {
		name, target, _ := strings.Cut(c, "=")
		fmt.Fprintf(&b, "\n[[connectors]]\nname = %q\ntarget = %q\n", name, target)
	}
	return b.String()
}

// TestPremiseReloadConnectors: SIGHUP to a real premise process adds a
// connector while a 64 MiB stream runs through another: the agent rotates
// both its tunnels (GOAWAY seen by the hub), the stream is byte-exact,
// the new connector then serves, and no stream reset is counted on either
// side; a second SIGHUP removes it and its clients are refused.
func TestPremiseReloadConnectors(t *testing.T) {
	bin := testenv.Binary(t)
	tgt := startServer(t, exchangeTarget)
	port := func() string { return fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) }
	la, lb := port(), port()
	cloud := startReloadCloud(t, bin, listenerTOML("la", la, "a", "")+listenerTOML("lb", lb, "b", ""))

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "token"), token(t, "reload-agent", nil))
	pcfg := filepath.Join(dir, "premise.toml")
	writeFile(t, pcfg, premiseTOML(cloud.control, "a="+tgt.Addr()))
	metricsAddr := port()
	premise := testenv.StartProcess(t, bin, []string{"premise", "--config", pcfg, "--metrics-listen", metricsAddr}, nil)
	testenv.WaitFor(t, 15*time.Second, "two tunnels up", func() bool {
		return len(logLines(t, cloud.Output(), "agent_connected")) == 2
	})
	if !closedUnserved(lb) {
		t.Fatal("connector b served before it was configured")
	}
	reloads := 0
	var rec map[string]any
	err := gatedExchange(la, 9, reloadStream, func() {
		writeFile(t, pcfg, premiseTOML(cloud.control, "a="+tgt.Addr(), "b="+tgt.Addr()))
		rec = hupAndWait(t, premise, &reloads)
		if rec["msg"] != "config_reloaded" || !hasChange(rec, "connector b added") {
			t.Errorf("reload: %v", rec)
			return
		}
		testenv.WaitFor(t, 15*time.Second, "both tunnels rotated (GOAWAY)", func() bool {
			return metricOf(t, cloud.control, "nowconnect_tunnel_goaways_total") == 2 &&
				len(logLines(t, premise.Output(), "tunnel_rotated")) == 2
		})
		if err := exchange(lb, 10, 100<<10, 100<<10); err != nil {
			t.Errorf("the added connector: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("the stream through a across the reload: %v", err)
	}
	// The retired tunnels close once idle, the one that carried the stream
	// when it ended.
	testenv.WaitFor(t, 10*time.Second, "the retired tunnels closed (superseded)", func() bool {
		return metricOf(t, cloud.control, `nowconnect_tunnel_closes_total{reason="superseded"}`) == 2
	})
	if v := metricOf(t, metricsAddr, "nowconnect_agent_tunnel_rotations_total"); v != 2 {
		t.Errorf("agent rotations = %v, want 2", v)
	}
	noResets(t, "the hub", cloud.control)
	noResets(t, "the agent", metricsAddr)

	// Removing b: refused from now on (OPEN_ERR, then no agent after the
	// rotation); a still serves.
	writeFile(t, pcfg, premiseTOML(cloud.control, "a="+tgt.Addr()))
	if rec = hupAndWait(t, premise, &reloads); rec["msg"] != "config_reloaded" || !hasChange(rec, "connector b removed") {
		t.Fatalf("second reload: %v", rec)
	}
	if !closedUnserved(lb) {
		t.Error("connector b still served after its removal")
	}
	testenv.WaitFor(t, 15*time.Second, "tunnels rotated again", func() bool {
		return metricOf(t, cloud.control, "nowconnect_tunnel_goaways_total") == 4
	})
	if !closedUnserved(lb) {
		t.Error("connector b served after the rotation")
	}
	if err := exchange(la, 11, 1000, 1000); err != nil {
		t.Fatalf("connector a after the second reload: %v", err)
	}
	if v := metricOf(t, metricsAddr, `nowconnect_config_reloads_total{result="success"}`); v != 2 {
		t.Errorf("agent reload successes = %v, want 2", v)
	}
	checkLogLines(t, "premise", premise.Output(), false)
}

// TestAgentReloadInProcess is the rotation with an in-process hub and
// agent: -race sees Reload, rotateLoop, GOAWAY and the retirement racing
// the data path of a stream in flight.
func TestAgentReloadInProcess(t *testing.T) {
	leakCheck(t)
	tgt := startServer(t, exchangeTarget)
	th := startHub(t, []string{"a", "b"})
	set := metrics.NewSet()
	a := startAgent(t, th, "inproc", map[string]string{"a": tgt.Addr()}, withAgentMetrics(set),
		func(c *agent.Config) { c.Token = token(t, "inproc", nil) })
	testenv.WaitFor(t, 10*time.Second, "two tunnels", func() bool { return th.Tunnels() == 2 })

	err := gatedExchange(th.Addr["a"], 12, 16<<20, func() {
		changes, err := a.Reload(agent.Config{Connectors: map[string]string{"a": tgt.Addr(), "b": tgt.Addr()}})
		if err != nil || len(changes) != 2 {
			t.Errorf("Reload: %q, %v", changes, err)
			return
		}
		testenv.WaitFor(t, 10*time.Second, "both tunnels retired", func() bool {
			return metricValue(t, th, "nowconnect_tunnel_goaways_total") == 2
		})
		if err := exchange(th.Addr["b"], 13, 100<<10, 100<<10); err != nil {
			t.Errorf("the added connector: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the retired tunnels closed", func() bool {
		return metricValue(t, th, `nowconnect_tunnel_closes_total{reason="superseded"}`) == 2 && th.Tunnels() == 2
	})
	if _, err := a.Reload(agent.Config{Connectors: map[string]string{"a": "no port"}}); err == nil {
		t.Error("an invalid target was accepted")
	}
	if err := exchange(th.Addr["a"], 14, 1000, 1000); err != nil {
		t.Fatalf("a after the refused reload: %v", err)
	}
	var b strings.Builder
	set.WritePrometheus(&b)
	th.Metrics().WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.Contains(line, "stream_resets_total{") && !strings.HasSuffix(line, " 0") {
			t.Errorf("a stream was reset: %s", line)
		}
	}
}

// TestRetiredTunnelFinishesHalfClosed: a target that half-closes at once
// and reads only later leaves the agent holding the client's bytes after
// both FINs, when the hub has already forgotten the stream. The tunnel is
// then retired (a reload rotates it) and the hub closes it at once, idle;
// the agent still writes every byte to the target.
func TestRetiredTunnelFinishesHalfClosed(t *testing.T) {
	leakCheck(t)
	// More than the kernel buffers on both sides of the target connection
	// take (loopback's send buffer grows to megabytes), within the
	// agent's window: the hub forwards it all, and the agent holds the rest.
	const size, window = 16 << 20, 32 << 20
	gate := make(chan struct{})
	got := make(chan []byte, 1)
	// A small receive buffer from the SYN on (set before listen, so the
	// window it advertises is small too): the agent's writes stall early.
	lc := net.ListenConfig{Control: smallRcvbuf}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	targetDone := make(chan struct{})
	go func() { // targetLoop: one connection
		defer close(targetDone)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.(*net.TCPConn).CloseWrite()
		<-gate
		b, _ := io.ReadAll(c)
		got <- b
	}()
	t.Cleanup(func() { ln.Close(); <-targetDone })
	th := startHub(t, []string{"a", "b"})
	a := startAgent(t, th, "drain", map[string]string{"a": ln.Addr().String()},
		func(c *agent.Config) {
			c.Token, c.Tunnels = token(t, "drain", nil), 1
			c.Window, c.MaxWindow, c.TunnelWindow = window, window, 2*window
		})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	defer release()

	c, err := net.Dial("tcp", th.Addr["a"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := make([]byte, size)
	_, _ = io.ReadFull(newPRNG(15), want)
	if _, err := c.Write(want); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	if n, err := io.Copy(io.Discard, c); n != 0 || err != nil {
		t.Fatalf("client read %d, %v: want the target's FIN", n, err)
	}
	testenv.WaitFor(t, 10*time.Second, "the hub forgot the stream (both FINs)", func() bool { return th.ActiveStreams() == 0 })
	if a.ActiveStreams() != 1 {
		t.Fatalf("the agent has %d streams: the target took every byte, the test proves nothing", a.ActiveStreams())
	}

	if _, err := a.Reload(agent.Config{Connectors: map[string]string{"a": ln.Addr().String(), "b": ln.Addr().String()}}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the old tunnel retired and closed", func() bool {
		return metricValue(t, th, `nowconnect_tunnel_closes_total{reason="superseded"}`) == 1
	})
	release()
	select {
	case b := <-got:
		if !bytes.Equal(b, want) {
			t.Fatalf("the target got %d of %d bytes (or corrupted)", len(b), size)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the target never got its bytes")
	}
	testenv.WaitFor(t, 10*time.Second, "the stream ended", func() bool { return a.ActiveStreams() == 0 })
}

// TestCloudReloadAuthKeys: a SIGHUP after the JWT secret file changed
// applies the new key to new tunnels (a token of the old key gets 401, one
// of the new key is upgraded) while the tunnel already up, and a stream on
// it, go on.
func TestCloudReloadAuthKeys(t *testing.T) {
	cloud, l1 := startReloadOneListener(t)
	oldTok := token(t, "other-agent", []string{"svc"})
	if code := upgradeStatus(t, cloud.control, "/tunnel", oldTok); code != 101 {
		t.Fatalf("a token of the first key before the reload: HTTP %d, want 101", code)
	}
	newSecret := []byte(strings.Repeat("rotated-key-", 4))
	newTok, err := auth.Mint(newSecret, "other-agent", []string{"svc"}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	err = gatedExchange(l1, 9, reloadStream, func() {
		writeFile(t, filepath.Join(filepath.Dir(cloud.path), "secret"), string(newSecret))
		if rec := cloud.hup(t, listenerTOML("l1", l1, "svc", "")); rec["msg"] != "config_reloaded" {
			t.Errorf("reload: %v", rec)
			return
		}
		if code := upgradeStatus(t, cloud.control, "/tunnel", oldTok); code != 401 {
			t.Errorf("a token of the old key after the reload: HTTP %d, want 401", code)
		}
		if code := upgradeStatus(t, cloud.control, "/tunnel", newTok); code != 101 {
			t.Errorf("a token of the new key after the reload: HTTP %d, want 101", code)
		}
	})
	if err != nil {
		t.Fatalf("the stream on the tunnel that was up across the key change: %v", err)
	}
	if err := exchange(l1, 10, 1000, 1000); err != nil {
		t.Errorf("the tunnel that was up before the key change: %v", err)
	}
}
