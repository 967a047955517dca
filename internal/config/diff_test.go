package config

import (
	"slices"
	"testing"
	"time"
)

func TestChanged(t *testing.T) {
	a := DefaultHub()
	a.Listeners = []Listener{{Name: "l1", Bind: "127.0.0.1:1389", Connector: "c"}}
	if got := Changed(a, DefaultHub()); !slices.Equal(got, []string{"listeners"}) {
		t.Fatalf("listeners: %q", got)
	}
	b := DefaultHub()
	b.Listeners = a.Listeners
	b.Tunnel.StreamWindow = 1 << 20
	b.Timeouts.Open = Duration(time.Second)
	b.HA.Mesh.TLS.CertFile = "x.crt"
	b.Log.Level = "debug"
	want := []string{"tunnel.stream_window", "timeouts.open", "log.level", "ha.mesh.tls.cert_file"}
	if got := Changed(a, b); !slices.Equal(got, want) {
		t.Fatalf("Changed = %q, want %q", got, want)
	}
	if got := Changed(a, a); len(got) != 0 {
		t.Fatalf("a config changed from itself: %q", got)
	}

	x, y := DefaultAgent(), DefaultAgent()
	y.Token = "secret" // no file key: never reported
	y.Connectors = []Connector{{Name: "c", Target: "h:1"}}
	y.Tunnels = 4
	if got := Changed(x, y); !slices.Equal(got, []string{"connectors", "tunnels"}) {
		t.Fatalf("agent: %q", got)
	}
}
