package mesh_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// issue makes a certificate of ca for cn with the given SANs, valid for an hour,
// usable as server and client certificate.
func issue(t testing.TB, ca *testenv.CA, cn string, sans ...string) tls.Certificate {
	return ca.Issue(t, cn, time.Now().Add(time.Hour), sans...)
}

// mtlsHub starts a hub whose listener requires client certificates from ca, serving
// serverCert, without mesh tokens (mTLS alone admits peers).
func mtlsHub(t testing.TB, replica string, ca *testenv.CA, serverCert tls.Certificate) *hub {
	t.Helper()
	return newHub(t, mesh.ManagerConfig{
		ReplicaID: replica,
		Listen:    "127.0.0.1:0",
		ListenTLS: &tls.Config{
			Certificates: []tls.Certificate{serverCert},
			ClientCAs:    ca.Pool,
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
	ca, other := testenv.NewCA(t, "mesh CA"), testenv.NewCA(t, "another CA")
	a := mtlsHub(t, "hub-a", ca, issue(t, ca, "hub-a", "127.0.0.1"))
	clientB := issue(t, ca, "hub-b", "hub-b.example")

	good := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-b", Peers: []string{a.url()},
		DialTLS: &tls.Config{Certificates: []tls.Certificate{clientB}, RootCAs: ca.Pool},
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
		{"server cert from another CA", a.url(), &tls.Config{Certificates: []tls.Certificate{clientB}, RootCAs: other.Pool}, false, "certificate signed by unknown authority"},
		{"no client certificate", a.url(), &tls.Config{RootCAs: ca.Pool}, true, "certificate"},
		{"client certificate from another CA", a.url(), &tls.Config{Certificates: []tls.Certificate{issue(t, other, "hub-x", "hub-x")}, RootCAs: ca.Pool}, true, "certificate"},
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
		w := mtlsHub(t, "hub-w", ca, issue(t, ca, "hub-w", "wrong.example", "127.0.0.2"))
		c := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-c", Peers: []string{w.url()},
			DialTLS: &tls.Config{Certificates: []tls.Certificate{clientB}, RootCAs: ca.Pool}, Secret: testSecret})
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
	ca := testenv.NewCA(t, "mesh CA")
	a := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-a", Listen: "127.0.0.1:0", Secret: testSecret,
		ListenTLS: &tls.Config{Certificates: []tls.Certificate{issue(t, ca, "hub-a", "127.0.0.1")}, ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert}})
	dialTLS := &tls.Config{Certificates: []tls.Certificate{issue(t, ca, "hub-b", "hub-b")}, RootCAs: ca.Pool}
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

// TestMTLSIdentity: with mTLS alone, a peer's certificate must be valid for the host
// this hub knows the announced replica by (here: the registry's URL). An impostor
// with a certificate from the same CA that claims hub-a's replica id is refused and
// hub-b keeps its link to the real hub-a; a replica known by no URL is admitted on
// its certificate and logged once.
func TestMTLSIdentity(t *testing.T) {
	testenv.CheckGoroutines(t)
	ca := testenv.NewCA(t, "mesh CA")
	store := mesh.NewMemoryStore(nil)
	hubs := map[string]*hub{}
	for _, r := range []string{"hub-a", "hub-b"} {
		reg, err := mesh.NewMemory(mesh.MemoryConfig{Config: mesh.Config{ReplicaID: r}, Store: store})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(reg.Close)
		cert := issue(t, ca, r, "127.0.0.1")
		hubs[r] = startHub(t, func(addr string) mesh.ManagerConfig {
			return mesh.ManagerConfig{ReplicaID: r, Listen: addr,
				ListenTLS: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert},
				DialTLS:   &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool},
				Discovery: reg, AdvertiseURL: "wss://" + addr + "/mesh", DiscoveryInterval: 50 * time.Millisecond}
		})
	}
	a, b := hubs["hub-a"], hubs["hub-b"]
	l := b.waitLink(t, "hub-a")
	a.waitLink(t, "hub-b")
	testenv.WaitFor(t, 10*time.Second, "hub-b knows hub-a's URL from the registry", func() bool {
		_, ok := b.metricValue(`nowconnect_mesh_links{peer="hub-a",state="up"}`)
		return ok
	})
	if b.logged("mesh_peer_identity_unchecked") || a.logged("mesh_peer_identity_unchecked") {
		t.Error("a peer the registry names was admitted unchecked")
	}

	// The impostor: a certificate of the same CA, for another host, claiming hub-a.
	x := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-a", Peers: []string{b.url()}, Secret: testSecret,
		DialTLS: &tls.Config{Certificates: []tls.Certificate{issue(t, ca, "hub-x", "127.0.0.3")}, RootCAs: ca.Pool}})
	testenv.WaitFor(t, 10*time.Second, "hub-b refuses the impostor and logs why", func() bool {
		return b.logged("mesh_peer_refused", "auth", `client certificate \"hub-x\" is not valid for 127.0.0.1`)
	})
	testenv.WaitFor(t, 10*time.Second, "the impostor's dial fails", func() bool { return x.logged("mesh_dial_failed") })
	if got := b.Link("hub-a"); got != l {
		t.Errorf("hub-b's link to hub-a was replaced (%p, was %p)", got, l)
	}
	if x.Link("hub-b") != nil {
		t.Error("the impostor has a link up")
	}
	x.Close()

	// A replica hub-b knows by no URL: admitted on its certificate, logged once.
	c := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-c", Peers: []string{b.url()}, Secret: testSecret,
		DialTLS: &tls.Config{Certificates: []tls.Certificate{issue(t, ca, "hub-c", "hub-c.example")}, RootCAs: ca.Pool}})
	c.waitLink(t, "hub-b")
	if !b.logged("mesh_peer_identity_unchecked", "hub-c") {
		t.Error("hub-c was admitted without mesh_peer_identity_unchecked")
	}
}
