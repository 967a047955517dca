package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// selfSigned returns a server certificate for 127.0.0.1 that is its own CA.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test hub"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
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
