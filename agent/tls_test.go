package agent

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// selfSigned returns a server certificate for 127.0.0.1 and the pool of the
// private CA that issued it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	ca := testenv.NewCA(t, "test hub CA")
	return ca.Issue(t, "test hub", time.Now().Add(time.Hour), "127.0.0.1"), ca.Pool
}

// TestWSSCustomCA: wss:// with a private CA, and an echo through it.
func TestWSSCustomCA(t *testing.T) {
	checkLeaks(t)
	cert, pool := selfSigned(t)
	hub := newTestHub(t, hubOpts{tls: &tls.Config{Certificates: []tls.Certificate{cert}}})
	echo := newTarget(t, echoHandler)

	// Without the CA the handshake fails and the agent keeps retrying.
	logs := &testenv.SyncBuffer{}
	bad := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": echo.addr()}, logs))
	stopBad := runAgent(t, bad)
	waitFor(t, "retries", func() bool {
		return strings.Count(logs.String(), `"msg":"tunnel dial failed"`) >= 2 &&
			strings.Contains(logs.String(), "certificate")
	})
	stopBad()
	if bad.Connects() != 0 {
		t.Fatal("connected without trusting the hub's CA")
	}

	cfg := testConfig([]string{hub.url}, map[string]string{"ldap": echo.addr()}, nil)
	cfg.TLSConfig = &tls.Config{RootCAs: pool}
	a := newAgent(t, cfg)
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(1, "ldap")
	p.expect(t, codec.FrameOpenAck, 1)
	out := randBytes(200 << 10)
	r := &relay{t: t, p: p, cid: 1, agentWin: a.limits.Stream, hubWin: 256 << 10}
	r.run(out)
	if string(r.got) != string(out) {
		t.Fatal("echo over wss differs")
	}
}
