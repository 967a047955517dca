package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadHubTOMLAndYAMLAgree(t *testing.T) {
	fromTOML, err := LoadHub("testdata/cloud.toml")
	if err != nil {
		t.Fatalf("LoadHub(toml): %v", err)
	}
	fromYAML, err := LoadHub("testdata/cloud_full.yaml")
	if err != nil {
		t.Fatalf("LoadHub(yaml): %v", err)
	}
	if !reflect.DeepEqual(fromTOML, fromYAML) {
		t.Fatalf("TOML and YAML differ:\ntoml: %+v\nyaml: %+v", fromTOML, fromYAML)
	}

	no := false
	want := DefaultHub()
	want.AllowCIDRs = []string{"10.0.0.0/8"}
	want.Listeners = []Listener{
		{Name: "l1", Bind: "0.0.0.0:389", Connector: "ldap"},
		{Name: "l2", Bind: "0.0.0.0:636", Connector: "ldaps", AllowCIDRs: []string{"192.168.1.0/24", "10.9.9.9", "fd00::/8"}, PDP: &no},
	}
	want.Auth = Auth{
		JWTSecretFile:  "testdata/secrets/jwt.secret",
		PublicKeyFiles: []string{"testdata/secrets/rs256.pub"},
		Audience:       "nowconnect",
		Issuer:         "https://idp.example.com",
		Leeway:         Duration(45 * time.Second),
	}
	want.PDP = PDP{URL: "https://pdp.example.com/access/v1/evaluation", Timeout: Duration(1500 * time.Millisecond),
		CacheTTL: Duration(2 * time.Minute), CacheSize: 5000}
	want.Tunnel = Tunnel{StreamWindow: 524288, MaxStreamWindow: 16 << 20, TunnelWindow: 64 << 20, MaxFramePayload: 32768, PingInterval: Duration(10 * time.Second),
		PingTimeout: Duration(30 * time.Second), HandshakeTimeout: Duration(5 * time.Second)}
	want.Timeouts = Timeouts{Open: Duration(5 * time.Second), Idle: Duration(time.Hour), ShutdownGrace: Duration(20 * time.Second), HTTPRequest: Duration(5 * time.Second)}
	want.Log = Log{Level: "debug", MaskClientAddr: true}
	want.Engine = Engine{EventLoops: 4, ReadBufferBytes: 131072, SocketRecvBuffer: 1048576, SocketSendBuffer: 1048576}
	want.HA = HA{
		Enabled: true, Mode: "shadow", ReplicaID: "hub-a", RedisURL: "redis://127.0.0.1:6379/0",
		HeartbeatInterval: Duration(2 * time.Second), OwnerTTL: Duration(6 * time.Second),
		Mesh: Mesh{
			Listen: "0.0.0.0:8400", Peers: []string{"wss://cloud-b.example.com/mesh"}, RequireMTLS: true,
			SendQueueDepth: 1000, PerLinkMaxInflightBytes: 8388608, ConnectBackoffMaxSec: 30,
			TLS: TLS{CABundle: "testdata/certs/ca.pem", CertFile: "testdata/certs/hub-a.crt", KeyFile: "testdata/certs/hub-a.key"},
		},
	}
	if !reflect.DeepEqual(fromTOML, want) {
		t.Fatalf("LoadHub(toml):\n got %+v\nwant %+v", fromTOML, want)
	}
}

func TestLoadHubSeed003YAML(t *testing.T) {
	h, err := LoadHub("testdata/cloud.yaml")
	if err != nil {
		t.Fatalf("LoadHub: %v", err)
	}
	if !reflect.DeepEqual(h.Listeners, []Listener{{Name: "l1", Bind: "0.0.0.0:389", Connector: "ldap"}}) {
		t.Errorf("listeners = %+v", h.Listeners)
	}
	if !h.HA.Enabled || h.HA.Mode != "shadow" || h.HA.ReplicaID != "hub-a" || h.HA.RedisURL != "redis://shared_redis:6379/0" {
		t.Errorf("ha = %+v", h.HA)
	}
	m := h.HA.Mesh
	if !m.RequireMTLS || m.Peers[0] != "wss://cloud-b.example.com/mesh" || m.TLS.KeyFile != "testdata/certs/hub-a.key" ||
		m.SendQueueDepth != 1000 || m.PerLinkMaxInflightBytes != 8388608 {
		t.Errorf("mesh = %+v", m)
	}
	// Keys the file leaves out keep their defaults.
	if h.Listen != "0.0.0.0:8765" || h.Tunnel.StreamWindow != 262144 || m.ConnectBackoffMaxSec != 30 || h.HA.OwnerTTL.D() != 15*time.Second {
		t.Errorf("defaults not kept: listen=%q window=%d backoff=%d ttl=%v", h.Listen, h.Tunnel.StreamWindow, m.ConnectBackoffMaxSec, h.HA.OwnerTTL)
	}
}

func TestDefaultsValidate(t *testing.T) {
	if err := DefaultHub().Validate(); err != nil {
		t.Errorf("DefaultHub().Validate() = %v", err)
	}
	a := DefaultAgent()
	a.CloudURLs = []string{"ws://127.0.0.1:8765/tunnel"}
	a.AgentID, a.Token = "a1", "tok"
	a.Connectors = []Connector{{Name: "ldap", Target: "127.0.0.1:389"}}
	if err := a.Validate(); err != nil {
		t.Errorf("agent Validate() = %v", err)
	}
}

func TestValidateInCode(t *testing.T) {
	h := DefaultHub()
	h.Listeners = []Listener{{Name: "a", Bind: "127.0.0.1:0", Connector: "c"}, {Name: "a", Bind: "bad", Connector: ""}}
	h.Tunnel.PingTimeout = Duration(time.Second)
	err := h.Validate()
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Validate() = %v, want Errors", err)
	}
	want := []string{
		`listeners[1].name: duplicate listener name "a" (also listeners[0])`,
		`listeners[1].bind: "bad" is not host:port`,
		`listeners[1].connector: required`,
		`tunnel.ping_timeout: 1s must be greater than tunnel.ping_interval (2s)`,
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("Validate() =\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	var one *Error
	if !errors.As(err, &one) || one.Key != "listeners[1].name" {
		t.Errorf("errors.As(*Error) = %v", one)
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "cloud.toml", Line: 12, Column: 1, Key: "listeners[1].bind", Msg: "bad"}, "cloud.toml:12:1: listeners[1].bind: bad"},
		{Error{File: "cloud.toml", Key: "auth.jwt_secret_file", Msg: "file not found: /x"}, "cloud.toml: auth.jwt_secret_file: file not found: /x"},
		{Error{File: "cloud.toml", Line: 3, Msg: "syntax"}, "cloud.toml:3: syntax"},
		{Error{Key: "NC_CONNECTORS", Msg: "bad"}, "NC_CONNECTORS: bad"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{in: "5s", want: 5 * time.Second},
		{in: "250ms", want: 250 * time.Millisecond},
		{in: "1m30s", want: 90 * time.Second},
		{in: "0s", want: 0},
		{in: "5", wantErr: `durations are written like "5s"`},
		{in: "0", wantErr: `durations are written like "5s"`},
		{in: "1.5", wantErr: `durations are written like "5s"`},
		{in: "5 parsecs", wantErr: `bad duration "5 parsecs"`},
		{in: "", wantErr: "empty duration"},
	}
	for _, tt := range tests {
		var d Duration
		err := d.UnmarshalText([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("UnmarshalText(%q) = %v, want error containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || d.D() != tt.want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", tt.in, d, err, tt.want)
		}
		b, _ := d.MarshalText()
		var back Duration
		if err := back.UnmarshalText(b); err != nil || back != d {
			t.Errorf("round trip of %q via %q = %v, %v", tt.in, b, back, err)
		}
	}
}

func TestDurationInFiles(t *testing.T) {
	tests := []struct {
		name, file, body string
		wantErr          string // "" means the load succeeds
	}{
		{"toml string", "c.toml", "[pdp]\ntimeout = \"5s\"\n", ""},
		{"toml integer", "c.toml", "[pdp]\ntimeout = 5\n", `c.toml:2:1: pdp.timeout: durations are written like "5s"`},
		{"toml float", "c.toml", "[pdp]\ntimeout = 1.5\n", `c.toml:2:1: pdp.timeout: durations are written like "5s"`},
		{"toml bare string", "c.toml", "[pdp]\ntimeout = \"5\"\n", `c.toml:2:1: pdp.timeout: durations are written like "5s"`},
		{"yaml string", "c.yaml", "pdp:\n  timeout: 5s\n", ""},
		{"yaml integer", "c.yaml", "pdp:\n  timeout: 5\n", `c.yaml:2:12: pdp.timeout: durations are written like "5s"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := LoadHub(writeFile(t, tt.file, tt.body))
			if tt.wantErr == "" {
				if err != nil || h.PDP.Timeout.D() != 5*time.Second {
					t.Fatalf("LoadHub = %v, %v", h, err)
				}
				return
			}
			if err == nil || !strings.HasSuffix(err.Error(), tt.wantErr) {
				t.Fatalf("LoadHub error = %v, want suffix %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseCIDRs(t *testing.T) {
	got, err := ParseCIDRs([]string{"10.0.0.0/8", "10.1.2.3", "::1", "fd00::/8", " 192.168.1.7/24 "})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.2.3/32"), netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("192.168.1.0/24"),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseCIDRs = %v, want %v", got, want)
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "fe80::1%eth0", ""} {
		if _, err := ParseCIDRs([]string{"10.0.0.0/8", bad}); err == nil || !strings.Contains(err.Error(), "entry 1") {
			t.Errorf("ParseCIDRs(%q) error = %v, want one naming entry 1", bad, err)
		}
	}
	if p, err := ParseCIDRs(nil); p != nil || err != nil {
		t.Errorf("ParseCIDRs(nil) = %v, %v", p, err)
	}
}

func TestListenerHelpers(t *testing.T) {
	yes := true
	h := &Hub{AllowCIDRs: []string{"10.0.0.0/8"}}
	tests := []struct {
		l         Listener
		pdpURL    string
		wantCIDRs []string
		wantPDP   bool
	}{
		{Listener{}, "", []string{"10.0.0.0/8"}, false},
		{Listener{AllowCIDRs: []string{}}, "http://pdp", []string{}, true},
		{Listener{AllowCIDRs: []string{"1.2.3.4"}, PDP: &yes}, "", []string{"1.2.3.4"}, false},
	}
	for i, tt := range tests {
		h.PDP.URL = tt.pdpURL
		if got := tt.l.EffectiveAllowCIDRs(h); !reflect.DeepEqual(got, tt.wantCIDRs) {
			t.Errorf("%d: EffectiveAllowCIDRs = %#v, want %#v", i, got, tt.wantCIDRs)
		}
		if got := tt.l.UsePDP(h); got != tt.wantPDP {
			t.Errorf("%d: UsePDP = %v", i, got)
		}
	}
}

func TestLoadFormats(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadHub(filepath.Join(dir, "cloud.json")); err == nil || !strings.Contains(err.Error(), "unknown config format") {
		t.Errorf("LoadHub(.json) = %v", err)
	}
	missing := filepath.Join(dir, "nope.toml")
	if _, err := LoadHub(missing); err == nil || !strings.HasSuffix(err.Error(), "nope.toml: config file not found") {
		t.Errorf("LoadHub(missing) = %v", err)
	}
	for _, name := range []string{"empty.toml", "empty.yaml", "empty.yml"} {
		h, err := LoadHub(writeFile(t, name, ""))
		if err != nil || !reflect.DeepEqual(h, DefaultHub()) {
			t.Errorf("LoadHub(%s) = %+v, %v; want defaults", name, h, err)
		}
	}
}

// writeFile writes body to a file named name in a fresh temporary directory
// and returns its path.
func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestYAMLScalars(t *testing.T) {
	// Nulls keep the defaults, YAML 1.1 booleans and numbers-as-strings are
	// accepted the way yaml.v3 accepts them, and anchors work.
	body := `allow_cidrs: &nets [10.0.0.0/8, 10.1.2.3]
listeners:
  - { name: l1, bind: ':389', connector: ldap, allow_cidrs: *nets }
listen: ~
queue_depth_per_cid:
log:
  mask_client_addr: yes
ha:
  enabled: On
  replica_id: 7
`
	h, err := LoadHub(writeFile(t, "c.yaml", body))
	if err != nil {
		t.Fatalf("LoadHub: %v", err)
	}
	nets := []string{"10.0.0.0/8", "10.1.2.3"}
	if h.Listen != "0.0.0.0:8765" || h.QueueDepthPerCID != 64 || !h.Log.MaskClientAddr || !h.HA.Enabled ||
		h.HA.ReplicaID != "7" || !reflect.DeepEqual(h.AllowCIDRs, nets) || !reflect.DeepEqual(h.Listeners[0].AllowCIDRs, nets) {
		t.Errorf("LoadHub = %+v", h)
	}
}

func TestLoadHubSeed002YAML(t *testing.T) {
	h, err := LoadHub("testdata/cloud_seed002.yaml")
	if err != nil {
		t.Fatalf("LoadHub: %v", err)
	}
	m := h.HA.Mesh
	if !h.HA.Enabled || h.HA.Mode != "shadow" || m.Listen != "0.0.0.0:400" || !m.RequireMTLS ||
		m.Peers[0] != "wss://cloud-b.ocg.labs.empowernow.ai/mesh" || m.ConnectBackoffMaxSec != 30 ||
		m.SendQueueDepth != 1000 || m.PerLinkMaxInflightBytes != 8388608 || m.TLS.CABundle != "testdata/certs/ca.pem" {
		t.Errorf("ha = %+v", h.HA)
	}
}
