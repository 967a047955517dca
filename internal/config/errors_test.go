package config

import (
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nowconnect/nowconnect/internal/confdoc"
)

// wantErr is one expected error: its line (0 = no line), key and a part of
// its message.
type wantErr struct {
	line int
	key  string
	msg  string
}

func TestLoadHubErrors(t *testing.T) {
	tests := []struct {
		name, file, body string
		want             []wantErr // all of them, in order
	}{
		{
			name: "unknown top-level key",
			file: "cloud.toml",
			body: "listen = \"0.0.0.0:8765\"\n\n# listeners\n\nlistners = []\n",
			want: []wantErr{{5, "listners", `unknown key (did you mean "listeners"?)`}},
		},
		{
			name: "unknown keys in tables and array tables",
			file: "cloud.toml",
			body: "[[listeners]]\nname = \"a\"\nbind = \":1\"\nconnector = \"c\"\n[[listeners]]\nname = \"b\"\nbind = \":2\"\nconector = \"c\"\n[ha.mesh]\npeer = []\n[ha.mesh.tls]\nca = \"x\"\n[nope]\nx = 1\n",
			want: []wantErr{
				// A missing key is reported at its table: the [[listeners]] header.
				{5, "listeners[1].connector", "required"},
				{8, "listeners[1].conector", `unknown key (did you mean "connector"?)`},
				{10, "ha.mesh.peer", `did you mean "peers"`},
				{12, "ha.mesh.tls.ca", "unknown key"},
				{13, "nope", "unknown key"},
			},
		},
		{
			name: "wrong types",
			file: "cloud.toml",
			body: "queue_depth_per_cid = \"64\"\nallow_cidrs = \"10.0.0.0/8\"\n[log]\nmask_client_addr = \"yes\"\n[ha]\nmode = 1\nmesh = 3\n",
			want: []wantErr{
				{1, "queue_depth_per_cid", `expected an integer, got string "64"`},
				{2, "allow_cidrs", "expected a list"},
				{4, "log.mask_client_addr", "expected true or false"},
				{6, "ha.mode", "expected a string, got integer 1"},
				{7, "ha.mesh", "expected a table"},
			},
		},
		{
			name: "values out of range",
			file: "cloud.toml",
			body: "queue_depth_per_cid = 0\n[tunnel]\nstream_window = 16384\nmax_frame_payload = 131072\nping_timeout = \"1s\"\n[engine]\nread_buffer_bytes = 100\n[log]\nlevel = \"loud\"\n",
			want: []wantErr{
				{1, "queue_depth_per_cid", "0 is out of range 1..65536"},
				{4, "tunnel.max_frame_payload", "131072 is out of range 1024..65536"},
				{5, "tunnel.ping_timeout", "must be greater than tunnel.ping_interval"},
				{7, "engine.read_buffer_bytes", "out of range 4096..4194304"},
				{9, "log.level", `"loud" is not one of`},
			},
		},
		{
			name: "bad CIDRs point at the element",
			file: "cloud.toml",
			body: "allow_cidrs = [\"10.0.0.0/8\", \"nope\"]\n[[listeners]]\nname = \"a\"\nbind = \":389\"\nconnector = \"c\"\nallow_cidrs = [\n  \"10.0.0.1\",\n  \"10.0.0.0/40\",\n]\n",
			want: []wantErr{
				{1, "allow_cidrs[1]", `"nope" is not a CIDR or IP address`},
				{8, "listeners[0].allow_cidrs[1]", `"10.0.0.0/40" is not a CIDR`},
			},
		},
		{
			name: "missing required fields and duplicates",
			file: "cloud.toml",
			body: "[[listeners]]\nname = \"a\"\nbind = \":389\"\nconnector = \"c\"\n\n[[listeners]]\nname = \"a\"\nconnector = \"c\"\n\n[[listeners]]\nname = \"b\"\nbind = \":389\"\nconnector = \"c\"\n",
			want: []wantErr{
				{6, "listeners[1].bind", "required: host:port"},
				{7, "listeners[1].name", `duplicate listener name "a" (also listeners[0])`},
				{12, "listeners[2].bind", `duplicate bind ":389"`},
			},
		},
		{
			name: "inline listeners",
			file: "cloud.toml",
			body: "listeners = [\n  { name = \"a\", bind = \"0.0.0.0:389\", connector = \"c\" },\n  { name = \"b\", bind = \"0.0.0.0\", connector = \"c\", extra = 1 },\n]\n",
			want: []wantErr{
				{3, "listeners[1].bind", `"0.0.0.0" is not host:port`},
				{3, "listeners[1].extra", "unknown key"},
			},
		},
		{
			name: "bad URLs and HA mode",
			file: "cloud.toml",
			body: "[auth]\njwks_url = \"ftp://idp/jwks\"\n[pdp]\nurl = \"pdp.example.com\"\n[ha]\nenabled = true\nmode = \"standby\"\nredis_url = \"http://r:6379\"\n[ha.mesh]\npeers = [\"https://b/mesh\", \"wss:///mesh\"]\n",
			want: []wantErr{
				{2, "auth.jwks_url", "scheme must be http:// or https://"},
				{4, "pdp.url", "scheme must be http:// or https://"},
				{5, "ha.replica_id", "required when ha.enabled is true"},
				{7, "ha.mode", `"standby" is not one of off, shadow, active`},
				{8, "ha.redis_url", "scheme must be redis:// or rediss:// or unix://"},
				{10, "ha.mesh.peers[0]", "scheme must be ws:// or wss://"},
				{10, "ha.mesh.peers[1]", "has no host"},
			},
		},
		{
			name: "mtls without files",
			file: "cloud.toml",
			body: "[ha]\nenabled = true\nreplica_id = \"a\"\n\n[ha.mesh]\npeers = [\"wss://b/mesh\"]\nrequire_mtls = true\n",
			want: []wantErr{
				{5, "ha.mesh.tls.ca_bundle", "required when ha.mesh.require_mtls"},
				{5, "ha.mesh.tls.cert_file", "required"},
				{5, "ha.mesh.tls.key_file", "required"},
			},
		},
		{
			name: "missing referenced files",
			file: "cloud.toml",
			// Relative paths resolve against the file's directory: "cloud.toml" is
			// the file itself (readable), "." its directory.
			body: "[auth]\njwt_secret_file = \"/nonexistent/jwt\"\npublic_key_files = [\"cloud.toml\", \"/nonexistent/k.pem\"]\n[ha.mesh.tls]\ncert_file = \".\"\n",
			want: []wantErr{
				{2, "auth.jwt_secret_file", "file not found: /nonexistent/jwt"},
				{3, "auth.public_key_files[1]", "file not found: /nonexistent/k.pem"},
				{4, "ha.mesh.tls", "cert_file and key_file go together"},
				{5, "ha.mesh.tls.cert_file", "is a directory"},
			},
		},
		{
			name: "toml syntax error",
			file: "cloud.toml",
			body: "listen = \"a\"\n\n[ha\nenabled = true\n",
			want: []wantErr{{3, "", "expected ']'"}},
		},
		{
			name: "toml duplicate key",
			file: "cloud.toml",
			body: "listen = \"a:1\"\nlisten = \"b:1\"\n",
			want: []wantErr{{2, "listen", "already defined"}},
		},
		{
			name: "yaml unknown keys, types and values",
			file: "cloud.yaml",
			body: "listeners:\n  - { name: l1, bind: '0.0.0.0:389', connector: ldap, pdpp: true }\nha:\n  enabled: true\n  mode: on\n  replica_id: a\n  mesh:\n    peers: [\"wss://b/mesh\"]\n    send_queue_depth: many\n    tls:\n      ca_bundle: /nonexistent/ca.pem\nlisten: x\nqueue_depth_per_cid: 0\n",
			want: []wantErr{
				{2, "listeners[0].pdpp", `did you mean "pdp"`},
				{5, "ha.mode", `"on" is not one of off, shadow, active`},
				{9, "ha.mesh.send_queue_depth", `expected an integer, got string "many"`},
				{11, "ha.mesh.tls.ca_bundle", "file not found"},
				{12, "listen", `"x" is not host:port`},
				{13, "queue_depth_per_cid", "out of range"},
			},
		},
		{
			name: "yaml duplicate key",
			file: "cloud.yml",
			body: "listen: a:1\nlisten: b:1\n",
			want: []wantErr{{2, "listen", `set twice`}},
		},
		{
			name: "yaml syntax error",
			file: "cloud.yaml",
			body: "listen: a:1\nallow_cidrs: [1\nha: {}\n",
			want: []wantErr{{2, "", "did not find expected"}},
		},
		{
			name: "yaml parser error in a block mapping",
			file: "cloud.yaml",
			body: "ha:\n  enabled: true\n  mesh:\n    - x\n   y: 2\n",
			// yaml.v3 names the line where the broken mapping starts.
			want: []wantErr{{2, "", "did not find expected key"}},
		},
		{
			name: "yaml scanner error",
			file: "cloud.yaml",
			body: "listen: a:1\nha:\n  enabled: true\n   mode: on\n",
			want: []wantErr{{4, "", "mapping values are not allowed"}},
		},
		{
			// Before confdoc, the alias at the depth limit was read as the string "a".
			name: "yaml alias that contains itself",
			file: "cloud.yaml",
			body: "allow_cidrs: &a [*a]\n",
			want: []wantErr{
				{1, "allow_cidrs[0]", "expected a string, got a list"},
				{1, "allow_cidrs" + strings.Repeat("[0]", confdoc.MaxDepth/2), "nested too deep"},
				{1, "allow_cidrs[0]", `"" is not a CIDR`},
			},
		},
		{
			name: "yaml not a mapping",
			file: "cloud.yaml",
			body: "- a\n- b\n",
			want: []wantErr{{1, "", "must be a mapping"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.file, tt.body)
			h, err := LoadHub(path)
			if err == nil {
				t.Fatalf("LoadHub = %+v, want errors", h)
			}
			checkErrors(t, err, path, tt.want)
		})
	}
}

// checkErrors asserts that err is an Errors holding exactly want, in order,
// each naming file and, when known, its line.
func checkErrors(t *testing.T, err error, file string, want []wantErr) {
	t.Helper()
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %T %v is not Errors", err, err)
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(want), err)
	}
	for i, w := range want {
		e, s := errs[i], errs[i].Error()
		if e.File != file || e.Line != w.line || e.Key != w.key || !strings.Contains(e.Msg, w.msg) {
			t.Errorf("error %d = %q (line %d, key %q), want line %d, key %q, msg containing %q", i, s, e.Line, e.Key, w.line, w.key, w.msg)
		}
		prefix := file + ":"
		if w.line > 0 {
			prefix += strconv.Itoa(w.line) + ":"
		}
		if !strings.HasPrefix(s, prefix) || (w.key != "" && !strings.Contains(s, " "+w.key+": ")) {
			t.Errorf("error %d = %q, want prefix %q and key %q", i, s, prefix, w.key)
		}
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Errors.Error() lacks %q", s)
		}
	}
}

func TestLoadHubErrorFileName(t *testing.T) {
	// The file is named as given, so a relative name reads "cloud.toml:5:1: ...".
	path := writeFile(t, "cloud.toml", "listen = \"0.0.0.0:8765\"\n\n\n\nlistners = []\n")
	t.Chdir(filepath.Dir(path))
	_, err := LoadHub("cloud.toml")
	if want := `cloud.toml:5:1: listners: unknown key (did you mean "listeners"?)`; err == nil || err.Error() != want {
		t.Errorf("LoadHub error = %v, want %q", err, want)
	}
}
