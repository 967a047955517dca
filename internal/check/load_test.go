package check

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadConnCheckFile: a conn-check YAML file, with the keys its README documents, loads
// unchanged; its unsupported types load too (they report UNKNOWN when run).
func TestLoadConnCheckFile(t *testing.T) {
	doc := `
- type: tcp
  host: localhost
  port: 80
  timeout: 5
  tags: [internal]
- type: tls
  host: localhost
  port: 443
  disable_tls_verification: false
- type: ssl
  host: localhost
  port: 8443
  verify: true
- type: udp
  host: localhost
  port: 8080
  send: abcd
  expect: dcba
- type: http
  url: https://login.ubuntu.com/
  method: GET
  expected_code: 200
  proxy_host: proxy.internal
  proxy_port: 3128
  headers: {X-Trace: "1"}
  body: hello
  disable_tls_verification: true
  allow_redirects: true
  params: {q: x}
  cookies: {session: abc}
  auth: [user, pw1]
  tags:
    - external
- type: https
  url: https://example.com/
  headers: [[Accept, text/plain], [Accept, text/html]]
- type: amqp
  host: localhost
  port: 5672
  username: foo
  password: bar
  use_tls: true
  vhost: /
- type: postgres
  host: localhost
  port: 5432
  username: foo
  password: bar
  database: all
- type: redis
  host: 127.0.0.1
  port: 6379
  password: foobar
- type: memcache
  host: 127.0.0.1
  port: 11211
- type: mongodb
  host: localhost
  port: 27017
- type: smtp
  host: localhost
  port: 465
  username: u
  password: smtp-pw
  from_address: a@example.com
  to_address: b@example.com
`
	cs := load(t, "conn-check.yaml", YAML, doc, 10*time.Second)
	want := []struct{ name, typ string }{
		{"tcp localhost:80", "tcp"}, {"tls localhost:443", "tls"}, {"tls localhost:8443", "tls"},
		{"udp localhost:8080", "udp"}, {"http https://login.ubuntu.com/?q=x", "http"}, {"http https://example.com/", "http"},
		{"amqp localhost:5672", "amqp"}, {"postgres localhost:5432", "postgres"}, {"redis 127.0.0.1:6379", "redis"},
		{"memcache 127.0.0.1:11211", "memcache"}, {"mongodb localhost:27017", "mongodb"}, {"smtp localhost:465", "smtp"},
	}
	if len(cs) != len(want) {
		t.Fatalf("%d checks, want %d", len(cs), len(want))
	}
	for i, w := range want {
		if cs[i].Name != w.name || cs[i].Type != w.typ {
			t.Errorf("check %d: %q (%s), want %q (%s)", i, cs[i].Name, cs[i].Type, w.name, w.typ)
		}
	}
	if cs[0].Timeout != 5*time.Second || cs[1].Timeout != 10*time.Second {
		t.Errorf("timeouts %v %v: want conn-check's seconds (5s) and the default (10s)", cs[0].Timeout, cs[1].Timeout)
	}
	if strings.Join(cs[4].Tags, ",") != "external" {
		t.Errorf("tags %q", cs[4].Tags)
	}
	h := cs[4].probe.(*httpCheck)
	if !h.tls.InsecureSkipVerify || !h.redirects || h.proxy.String() != "http://proxy.internal:3128" || !h.status.has(200) || h.status.has(201) {
		t.Errorf("http keys not applied: %+v", h)
	}
	if cs[2].probe.(*tlsCheck).conf.InsecureSkipVerify {
		t.Error("ssl verify: true turned verification off")
	}
	// Secrets of the file are collected for scrubbing, unsupported types included.
	for i, sec := range map[int]string{4: "pw1", 6: "bar", 8: "foobar", 11: "smtp-pw"} {
		if !strings.Contains(strings.Join(cs[i].secrets, "\n"), sec) {
			t.Errorf("check %d: secret %q not collected", i, sec)
		}
	}
	if !strings.Contains(strings.Join(cs[4].secrets, "\n"), "abc") {
		t.Error("cookie value not treated as a secret")
	}
}

// TestLoadTOMLAndChecksKey: TOML [[checks]] and YAML's `checks:` form load like the list.
func TestLoadTOMLAndChecksKey(t *testing.T) {
	toml := `
[[checks]]
type = "tcp"
host = "127.0.0.1"
port = 389
timeout = "2s"

[[checks]]
name = "directory"
type = "ldap"
url = "ldap://127.0.0.1:389"
base = "dc=example,dc=org"
filter = "(uid=user0001)"
`
	cs := load(t, "checks.toml", TOML, toml, 10*time.Second)
	if len(cs) != 2 || cs[0].Name != "tcp 127.0.0.1:389" || cs[0].Timeout != 2*time.Second || cs[1].Name != "directory" {
		t.Fatalf("toml: %+v", cs)
	}
	ys := load(t, "checks.yaml", YAML, "checks:\n  - {type: tcp, host: 127.0.0.1, port: 389}\n", time.Second)
	if len(ys) != 1 || ys[0].Type != "tcp" {
		t.Fatalf("yaml checks: %+v", ys)
	}
}

// TestLoadErrors: every kind of bad input is an error naming file, line, column and key,
// never a panic, and never quoting a secret.
func TestLoadErrors(t *testing.T) {
	pwFile := filepath.Join(t.TempDir(), "missing-password")
	cases := []struct {
		name, file, doc string
		want            []string
	}{
		{"malformed yaml", "a.yaml", "- type: tcp\n  host: [x\n", []string{"a.yaml:", "bad YAML"}},
		{"yaml scanner error", "a.yaml", "- type: tcp\n  host: @x\n", []string{"a.yaml:2: bad YAML: found character that cannot start any token"}},
		{"yaml alias loop", "a.yaml", "- &c {type: tcp, host: h, port: 1, tags: [*c]}\n", []string{"a.yaml:1:3: checks[0].tags[0]", ": nested too deep"}},
		{"malformed toml", "a.toml", "[[checks]]\ntype = \"tcp\"\nhost = \n", []string{"a.toml:3:", "bad TOML"}},
		{"unknown type", "a.yaml", "- type: tcp\n  host: h\n  port: 1\n- type: tcpp\n  host: h\n", []string{`a.yaml:4:3: checks[1].type: unknown check type "tcpp" (did you mean tcp?)`}},
		{"missing key", "a.yaml", "- type: tcp\n  host: h\n", []string{"a.yaml:1:3: checks[0].port: required key missing"}},
		{"missing type", "a.yaml", "- host: h\n", []string{"a.yaml:1:3: checks[0].type: required key missing"}},
		{"unknown key", "a.yaml", "- type: tcp\n  host: h\n  port: 1\n  prot: 2\n", []string{"a.yaml:4:3: checks[0].prot: unknown key (did you mean port?)"}},
		{"bad port", "a.toml", "[[checks]]\ntype = \"tcp\"\nhost = \"h\"\nport = 70000\n", []string{"a.toml:4:1: checks[0].port: 70000 is out of range 1..65535"}},
		{"port type", "a.yaml", "- type: tcp\n  host: h\n  port: [1]\n", []string{"a.yaml:3:3: checks[0].port: expected an integer, got a list"}},
		{"bad timeout", "a.yaml", "- type: tcp\n  host: h\n  port: 1\n  timeout: soon\n", []string{"a.yaml:4:3: checks[0].timeout:", `"soon" is not a duration`}},
		{"bad regex", "a.yaml", "- type: http\n  url: http://h/\n  body_regex: '('\n", []string{"a.yaml:3:3: checks[0].body_regex: bad regular expression"}},
		{"bad url", "a.yaml", "- type: http\n  url: ftp://h/\n", []string{"a.yaml:2:3: checks[0].url: want a http:// or https:// URL"}},
		{"bad filter", "a.yaml", "- type: ldap\n  url: ldap://h\n  base: dc=x\n  filter: uid=x(\n", []string{"a.yaml:4:3: checks[0].filter: bad LDAP filter"}},
		{"password file", "a.yaml", "- type: redis\n  host: h\n  password_file: " + pwFile + "\n", []string{"a.yaml:3:3: checks[0].password_file: cannot read"}},
		{"both passwords", "a.yaml", "- type: redis\n  host: h\n  password: hunter2\n  password_file: /etc/hostname\n", []string{"checks[0].password_file: set password or password_file, not both"}},
		{"secret of wrong type", "a.yaml", "- type: redis\n  host: h\n  password: [hunter2]\n", []string{"a.yaml:3:3: checks[0].password: expected a string, got a list"}},
		{"duplicate name", "a.yaml", "- {type: tcp, host: h, port: 1}\n- {type: tcp, host: h, port: 1}\n", []string{`a.yaml:2:3: checks[1].name: duplicate check name "tcp h:1"`}},
		{"duplicate key", "a.yaml", "- type: tcp\n  host: h\n  host: i\n  port: 1\n", []string{"a.yaml:3:3: checks[0].host: duplicate key"}},
		{"not a list", "a.yaml", "type: tcp\n", []string{"a.yaml:1:1: type: unknown key"}},
		{"not a check", "a.yaml", "- tcp\n", []string{"a.yaml:1:3: checks[0]: expected a check"}},
		{"crit above warn", "a.yaml", "- {type: tls, host: h, port: 1, warn_days: 5, crit_days: 9}\n", []string{"checks[0].crit_days: crit_days (9) is above warn_days (5)"}},
		{"unknown format", "a.json", "[]", []string{"a.json: unknown check file format"}},
		{"empty checks", "a.toml", "", []string{"a.toml:1:1: checks: no checks"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := NewLoader(time.Second)
			p := writeFile(t, tc.file, tc.doc)
			l.LoadFile(p)
			_, err := l.Checks()
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("no errors for %q (err %v)", tc.doc, err)
			}
			msg := strings.ReplaceAll(err.Error(), filepath.Dir(p)+string(os.PathSeparator), "")
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			if strings.Contains(msg, "hunter2") {
				t.Errorf("error quotes the password: %s", msg)
			}
		})
	}
	// Every problem of a file at once, in line order.
	l := NewLoader(time.Second)
	l.Load("b.yaml", YAML, []byte("- type: tcp\n  port: 0\n- type: nope\n- type: udp\n  host: h\n  port: 1\n"))
	_, err := l.Checks()
	got := err.Error()
	for _, w := range []string{"b.yaml:1:3: checks[0].host: required key missing", "b.yaml:2:3: checks[0].port: 0 is out of range", "b.yaml:3:3: checks[1].type", "b.yaml:4:3: checks[2].send: required key missing", "b.yaml:4:3: checks[2].expect: required key missing"} {
		if !strings.Contains(got, w) {
			t.Errorf("errors %q lack %q", got, w)
		}
	}
}
