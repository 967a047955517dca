package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBindOverlaps: the same port on different specific addresses is fine; a wildcard
// address (0.0.0.0, [::], an empty host) overlapping another address on the same port,
// or an address bound twice, is an error at the later key that names the earlier one
// with its file:line. The control port and the mesh port take part.
func TestBindOverlaps(t *testing.T) {
	listener := func(name, bind string) string {
		return fmt.Sprintf("[[listeners]]\nname = %q\nbind = %q\nconnector = \"c\"\n", name, bind)
	}
	tests := []struct {
		name string
		body string
		want []wantErr // with {{file}} in msg replaced by the file's path
	}{
		{
			name: "same port, different specific addresses",
			body: "listen = \"127.0.0.1:8765\"\n" + listener("a", "127.0.0.1:3890") + listener("b", "127.0.0.2:3890") +
				listener("c", "[::1]:3890") + listener("d", "127.0.0.1:8766") + listener("e", "127.0.0.2:8765"),
		},
		{
			name: "IPv4 wildcard and an IPv6 address",
			body: "listen = \"127.0.0.1:8765\"\n" + listener("a", "0.0.0.0:3890") + listener("b", "[::1]:3890"),
		},
		{
			name: "port 0 twice",
			body: "listen = \"127.0.0.1:8765\"\n" + listener("a", "127.0.0.1:0") + listener("b", "0.0.0.0:0"),
		},
		{
			name: "wildcard after a specific address",
			body: "listen = \"127.0.0.1:8765\"\n" + listener("a", "127.0.0.1:3890") + listener("b", "0.0.0.0:3890"),
			want: []wantErr{{8, "listeners[1].bind", `"0.0.0.0:3890" overlaps listeners[0].bind "127.0.0.1:3890" at {{file}}:4: a wildcard address takes port 3890`}},
		},
		{
			name: "specific address after a wildcard",
			body: "listen = \"127.0.0.1:8765\"\n" + listener("a", "0.0.0.0:3890") + listener("b", "10.1.2.3:3890"),
			want: []wantErr{{8, "listeners[1].bind", `"10.1.2.3:3890" overlaps listeners[0].bind "0.0.0.0:3890" at {{file}}:4`}},
		},
		{
			name: "empty host and [::] are dual-stack",
			body: "listen = \"127.0.0.1:8765\"\n" + listener("a", "127.0.0.1:3890") + listener("b", ":3890") +
				listener("c", "[::1]:3891") + listener("d", "[::]:3891"),
			want: []wantErr{
				{8, "listeners[1].bind", `":3890" overlaps listeners[0].bind "127.0.0.1:3890"`},
				{16, "listeners[3].bind", `"[::]:3891" overlaps listeners[2].bind "[::1]:3891" at {{file}}:12`},
			},
		},
		{
			name: "a host name under a wildcard",
			body: "listen = \"127.0.0.1:8765\"\n" + listener("a", "0.0.0.0:3890") + listener("b", "localhost:3890"),
			want: []wantErr{{8, "listeners[1].bind", `"localhost:3890" overlaps listeners[0].bind`}},
		},
		{
			name: "bound twice",
			body: "listen = \"127.0.0.1:8765\"\n" + listener("a", "127.0.0.1:3890") + listener("b", "127.0.0.1:3890") +
				listener("c", "[::ffff:127.0.0.1]:3890"),
			want: []wantErr{
				{8, "listeners[1].bind", `duplicate bind "127.0.0.1:3890" (also listeners[0].bind "127.0.0.1:3890" at {{file}}:4)`},
				{12, "listeners[2].bind", `duplicate bind "[::ffff:127.0.0.1]:3890" (also listeners[0].bind`},
			},
		},
		{
			name: "a listener under the default control port",
			body: listener("a", "127.0.0.1:8765"),
			// listen is the default, not in the file: no position to name.
			want: []wantErr{{3, "listeners[0].bind", `"127.0.0.1:8765" overlaps listen "0.0.0.0:8765": a wildcard`}},
		},
		{
			name: "the control port in the file",
			body: "listen = \"127.0.0.1:3890\"\n" + listener("a", "0.0.0.0:3890"),
			want: []wantErr{{4, "listeners[0].bind", `overlaps listen "127.0.0.1:3890" at {{file}}:1`}},
		},
		{
			name: "the mesh port",
			body: "listen = \"127.0.0.1:8765\"\n" + listener("a", "0.0.0.0:8400") + "[ha.mesh]\nlisten = \"127.0.0.1:8400\"\n",
			want: []wantErr{{7, "ha.mesh.listen", `"127.0.0.1:8400" overlaps listeners[0].bind "0.0.0.0:8400" at {{file}}:4`}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "cloud.toml", tt.body)
			_, err := LoadHub(path)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("LoadHub: %v", err)
				}
				return
			}
			want := make([]wantErr, len(tt.want))
			for i, w := range tt.want {
				w.msg = strings.ReplaceAll(w.msg, "{{file}}", path)
				want[i] = w
			}
			checkErrors(t, err, path, want)
		})
	}
}

// TestBindOverlapsInCode: a Hub built in code is checked the same way, without
// positions.
func TestBindOverlapsInCode(t *testing.T) {
	h := DefaultHub()
	h.Listen = "127.0.0.1:8765"
	h.Listeners = []Listener{{Name: "a", Bind: "[::]:3890", Connector: "c"}, {Name: "b", Bind: "127.0.0.1:3890", Connector: "c"}}
	err := h.Validate()
	if err == nil || err.Error() != `listeners[1].bind: "127.0.0.1:3890" overlaps listeners[0].bind "[::]:3890": a wildcard address takes port 3890 on every address, so both cannot bind` {
		t.Fatalf("Validate = %v", err)
	}
}

// TestRelativePathsResolveAgainstTheFile: relative file paths in a config file are
// relative to that file's directory, whatever the working directory; absolute ones stay;
// paths from the environment stay relative to the working directory.
func TestRelativePathsResolveAgainstTheFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc")
	for _, f := range []string{"secret", "keys/a.pub", "tls/ca.pem", "tls/hub.crt", "tls/hub.key", "agent.token", "ca.pem"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x.y.z\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	abs := filepath.Join(dir, "secret")
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	toml := write("cloud.toml", fmt.Sprintf(`[auth]
jwt_secret_file = "secret"
public_key_files = ["keys/a.pub", %q]
[ha.mesh.tls]
ca_bundle = "tls/ca.pem"
cert_file = "./tls/hub.crt"
key_file = "tls/../tls/hub.key"
`, abs))
	yaml := write("cloud.yaml", "auth:\n  jwt_secret_file: secret\n  public_key_files: [keys/a.pub, "+abs+"]\nha:\n  mesh:\n    tls: {ca_bundle: tls/ca.pem, cert_file: ./tls/hub.crt, key_file: tls/../tls/hub.key}\n")
	t.Chdir(t.TempDir()) // nothing of the above is relative to here
	for _, p := range []string{toml, yaml} {
		h, err := LoadHub(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		j := func(f string) string { return filepath.Join(dir, f) }
		if h.Auth.JWTSecretFile != j("secret") || len(h.Auth.PublicKeyFiles) != 2 || h.Auth.PublicKeyFiles[0] != j("keys/a.pub") ||
			h.Auth.PublicKeyFiles[1] != abs || h.HA.Mesh.TLS.CABundle != j("tls/ca.pem") ||
			h.HA.Mesh.TLS.CertFile != j("tls/hub.crt") || h.HA.Mesh.TLS.KeyFile != j("tls/hub.key") {
			t.Errorf("%s: paths %+v %+v", p, h.Auth, h.HA.Mesh.TLS)
		}
	}

	// A config named relative to the working directory: the paths stay relative, to it.
	t.Chdir(filepath.Dir(dir))
	h, err := LoadHub("etc/cloud.toml")
	if err != nil || h.Auth.JWTSecretFile != "etc/secret" {
		t.Fatalf("relative config name: %v, jwt_secret_file %q", err, h.Auth.JWTSecretFile)
	}

	agent := write("premise.toml", "cloud_url = \"ws://127.0.0.1:8765/tunnel\"\nagent_id = \"a\"\ntoken_file = \"agent.token\"\nca_file = \"ca.pem\"\n[[connectors]]\nname = \"c\"\ntarget = \"127.0.0.1:389\"\n")
	a, err := LoadAgent(agent)
	if err != nil {
		t.Fatal(err)
	}
	if a.TokenFile != filepath.Join(dir, "agent.token") || a.Token != "x.y.z" || a.CAFile != filepath.Join(dir, "ca.pem") {
		t.Fatalf("agent paths: token_file %q token %q ca_file %q", a.TokenFile, a.Token, a.CAFile)
	}
	// NC_CA_FILE is relative to the working directory (here: the parent of etc/).
	env := map[string]string{"NC_CA_FILE": "etc/tls/ca.pem"}
	a, err = LoadAgentEnv(agent, func(k string) string { return env[k] })
	if err != nil || a.CAFile != "etc/tls/ca.pem" {
		t.Fatalf("NC_CA_FILE: %v, ca_file %q", err, a.CAFile)
	}
	// A missing relative file is reported with the path it was looked for at.
	missing := write("bad.toml", "[auth]\njwt_secret_file = \"nope\"\n")
	if _, err := LoadHub(missing); err == nil || !strings.Contains(err.Error(), "file not found: "+filepath.Join(dir, "nope")) {
		t.Fatalf("missing relative file: %v", err)
	}
}
