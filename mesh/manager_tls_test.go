package mesh_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// testCA is a certificate authority made in memory for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serial int64

func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
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
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue makes a certificate for cn with the given SANs (IP addresses or DNS names),
// usable as server and client certificate.
func (ca *testCA) issue(t testing.TB, cn string, sans ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, s := range sans {
		if ip := net.ParseIP(s); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, s)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// mtlsHub starts a hub whose listener requires client certificates from ca, serving
// serverCert, without mesh tokens (mTLS alone admits peers).
func mtlsHub(t testing.TB, replica string, ca *testCA, serverCert tls.Certificate) *hub {
	t.Helper()
	return newHub(t, mesh.ManagerConfig{
		ReplicaID: replica,
		Listen:    "127.0.0.1:0",
		ListenTLS: &tls.Config{
			Certificates: []tls.Certificate{serverCert},
			ClientCAs:    ca.pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
		},
	})
}

// TestMTLS: with native mTLS (no mesh tokens) a peer presenting a certificate of the
// mesh CA links up over wss://; a server certificate from another CA, one whose SAN
// does not match the URL's host, a client without a certificate and a client
// certificate from another CA are all refused, and counted (dialer:
// nowconnect_mesh_link_errors_total{peer}, listener:
// nowconnect_mesh_accept_errors_total{reason="tls"}).
func TestMTLS(t *testing.T) {
	testenv.CheckGoroutines(t)
	ca, other := newCA(t, "mesh CA"), newCA(t, "another CA")
	a := mtlsHub(t, "hub-a", ca, ca.issue(t, "hub-a", "127.0.0.1"))
	clientB := ca.issue(t, "hub-b", "hub-b.example")

	good := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-b", Peers: []string{a.url()},
		DialTLS: &tls.Config{Certificates: []tls.Certificate{clientB}, RootCAs: ca.pool},
		// hub-b has no listener of its own: without a secret its mesh would be off
		// (AcceptsPeers false) and it would dial nobody. hub-a ignores the token.
		Secret: testSecret})
	good.waitLink(t, "hub-a")
	a.waitLink(t, "hub-b")
	if !a.AcceptsPeers() {
		t.Error("an mTLS listener must accept peers")
	}
	if _, err := a.VerifyToken([]byte("Bearer x")); err == nil {
		t.Error("a hub without a mesh secret verified a token")
	}

	host := a.ListenAddr().String()
	for _, tc := range []struct {
		name    string
		url     string
		dialTLS *tls.Config
		listen  bool // the listener counts a TLS refusal too
		logged  string
	}{
		{"server cert from another CA", a.url(), &tls.Config{Certificates: []tls.Certificate{clientB}, RootCAs: other.pool}, false, "certificate signed by unknown authority"},
		{"no client certificate", a.url(), &tls.Config{RootCAs: ca.pool}, true, "certificate"},
		{"client certificate from another CA", a.url(), &tls.Config{Certificates: []tls.Certificate{other.issue(t, "hub-x", "hub-x")}, RootCAs: ca.pool}, true, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := a.metricValue(`nowconnect_mesh_accept_errors_total{reason="tls"}`)
			c := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-c", Peers: []string{tc.url}, DialTLS: tc.dialTLS, Secret: testSecret})
			testenv.WaitFor(t, 10*time.Second, "the dial is refused, counted and logged with "+tc.logged, func() bool {
				v, _ := c.metricValue(`nowconnect_mesh_link_errors_total{peer="` + host + `"}`)
				return v >= 1 && c.logged("mesh_dial_failed", tc.logged)
			})
			if tc.listen {
				testenv.WaitFor(t, 10*time.Second, "the listener counts a TLS refusal", func() bool {
					v, _ := a.metricValue(`nowconnect_mesh_accept_errors_total{reason="tls"}`)
					return v > before
				})
			}
			if a.Link("hub-c") != nil || c.Link("hub-a") != nil {
				t.Error("a link came up")
			}
			c.Close()
		})
	}

	// The server certificate must carry a SAN matching the URL's host: a hub whose
	// certificate names another host is refused by the dialer.
	t.Run("server cert with a wrong SAN", func(t *testing.T) {
		w := mtlsHub(t, "hub-w", ca, ca.issue(t, "hub-w", "wrong.example", "127.0.0.2"))
		c := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-c", Peers: []string{w.url()},
			DialTLS: &tls.Config{Certificates: []tls.Certificate{clientB}, RootCAs: ca.pool}, Secret: testSecret})
		testenv.WaitFor(t, 10*time.Second, "the dial is refused, counted and logged as a SAN mismatch", func() bool {
			v, _ := c.metricValue(`nowconnect_mesh_link_errors_total{peer="` + w.ListenAddr().String() + `"}`)
			return v >= 1 && c.logged("mesh_dial_failed", "certificate is valid for 127.0.0.2, not 127.0.0.1")
		})
	})
}

// TestTokensOnTLSListener: with both a TLS listener and a secret, a peer needs a
// valid mesh token as well as its certificate.
func TestTokensOnTLSListener(t *testing.T) {
	testenv.CheckGoroutines(t)
	ca := newCA(t, "mesh CA")
	a := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-a", Listen: "127.0.0.1:0", Secret: testSecret,
		ListenTLS: &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "hub-a", "127.0.0.1")}, ClientCAs: ca.pool, ClientAuth: tls.RequireAndVerifyClientCert}})
	dialTLS := &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "hub-b", "hub-b")}, RootCAs: ca.pool}
	wrong := []byte("another secret, 32 bytes or more!")
	c := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-c", Peers: []string{a.url()}, DialTLS: dialTLS, Secret: wrong})
	testenv.WaitFor(t, 10*time.Second, "the wrong token is refused", func() bool {
		v, _ := a.metricValue(`nowconnect_mesh_accept_errors_total{reason="auth"}`)
		return v >= 1
	})
	testenv.WaitFor(t, 10*time.Second, "the dialer logs the 401", func() bool { return c.logged("mesh_dial_failed", "HTTP 401") })
	b := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-b", Peers: []string{a.url()}, DialTLS: dialTLS, Secret: testSecret})
	b.waitLink(t, "hub-a")
}
