package config

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const testToken = "eyJhbGciOiJIUzI1NiJ9.test.token"

func TestLoadAgent(t *testing.T) {
	a, err := LoadAgent("testdata/premise.toml")
	if err != nil {
		t.Fatalf("LoadAgent: %v", err)
	}
	want := DefaultAgent()
	want.CloudURLs = []string{"wss://cloud-a.example.com/tunnel", "wss://cloud-b.example.com/tunnel"}
	want.AgentID = "agent-1"
	want.TokenFile = "testdata/secrets/agent.token"
	want.Token = testToken
	want.Connectors = []Connector{{Name: "addomain", Target: "openldap:389"}, {Name: "other", Target: "10.0.0.5:636"}}
	want.DialTimeout = Duration(3 * time.Second)
	want.ReconnectMin = Duration(250 * time.Millisecond)
	want.ReconnectMax = Duration(10 * time.Second)
	want.MetricsListen = "127.0.0.1:9100"
	want.Log.Level = "warn"
	if !reflect.DeepEqual(a, want) {
		t.Errorf("LoadAgent:\n got %+v\nwant %+v", a, want)
	}

	// cloud_url (one URL) is accepted for cloud_urls.
	y, err := LoadAgent("testdata/premise.yaml")
	if err != nil {
		t.Fatalf("LoadAgent(yaml): %v", err)
	}
	if !reflect.DeepEqual(y.CloudURLs, []string{"wss://cloud-a.example.com/tunnel"}) || y.Token != testToken {
		t.Errorf("LoadAgent(yaml) = %+v", y)
	}
}

func TestLoadAgentErrors(t *testing.T) {
	tests := []struct {
		name, file, body string
		want             []wantErr
	}{
		{
			name: "missing token file and bad values",
			file: "premise.toml",
			body: "cloud_url = \"https://cloud/tunnel\"\nagent_id = \"a 1\"\ntoken_file = \"/nonexistent/token\"\nping_timeout = \"1s\"\ntarget_send_buffer = 1024\n[[connectors]]\nname = \"x\"\ntarget = \"openldap\"\n[[connectors]]\nname = \"x\"\ntarget = \"h:0\"\n",
			want: []wantErr{
				{1, "cloud_urls[0]", "scheme must be ws:// or wss://"},
				{2, "agent_id", "contains spaces"},
				{3, "token_file", "file not found: /nonexistent/token"},
				{4, "ping_timeout", "must be greater than ping_interval"},
				{5, "target_send_buffer", "1024 is out of range 4096..1073741824"},
				{8, "connectors[0].target", `"openldap" is not host:port`},
				{10, "connectors[1].name", "duplicate connector name"},
				{11, "connectors[1].target", "bad port"},
			},
		},
		{
			name: "proxy_protocol",
			file: "premise.toml",
			body: "cloud_url = \"ws://cloud/tunnel\"\nagent_id = \"a\"\n[[connectors]]\nname = \"x\"\ntarget = \"h:1\"\nproxy_protocol = \"v2\"\n[[connectors]]\nname = \"y\"\ntarget = \"h:2\"\nproxy_protocol = \"v1\"\n",
			want: []wantErr{
				{10, "connectors[1].proxy_protocol", `unknown value "v1"`},
				{0, "token_file", "required"},
			},
		},
		{
			name: "required fields and both url keys",
			file: "premise.yaml",
			body: "cloud_url: ws://a/tunnel\ncloud_urls: [ws://b/tunnel]\ntoken: secret\nconnectors: []\n",
			want: []wantErr{
				{2, "cloud_urls", `set twice (also as "cloud_url")`},
				{3, "token", "unknown key"},
				{4, "connectors", "required: at least one connector"},
				{0, "agent_id", "required"},
				{0, "token_file", "required: the agent needs a token"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.file, tt.body)
			a, err := LoadAgent(path)
			if err == nil {
				t.Fatalf("LoadAgent = %+v, want errors", a)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error prints the token: %v", err)
			}
			checkErrors(t, err, path, tt.want)
		})
	}
}

func TestApplyEnv(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeFile(t, "tok", "\n  "+testToken+"\n\n")
	emptyToken := writeFile(t, "empty", " \n")
	missing := filepath.Join(dir, "missing.token")

	tests := []struct {
		name    string
		env     map[string]string
		check   func(t *testing.T, a *Agent)
		wantErr []string // substrings, one per error, in order
	}{
		{
			name: "everything",
			env: map[string]string{
				"NC_CLOUD_URL":    "wss://a.example.com/tunnel, ws://b:8765/tunnel,",
				"NC_AGENT_ID":     "agent-7",
				"NC_TOKEN_FILE":   tokenFile,
				"NC_CONNECTORS":   "addomain=openldap:389, other=10.0.0.5:636 ; proxy = v2,v6=[::1]:389,",
				"NC_DIAL_TIMEOUT": "750ms",
				"NC_CA_FILE":      "testdata/certs/ca.pem",
			},
			check: func(t *testing.T, a *Agent) {
				if !reflect.DeepEqual(a.CloudURLs, []string{"wss://a.example.com/tunnel", "ws://b:8765/tunnel"}) {
					t.Errorf("CloudURLs = %q", a.CloudURLs)
				}
				want := []Connector{{Name: "addomain", Target: "openldap:389"},
					{Name: "other", Target: "10.0.0.5:636", ProxyProtocol: "v2"}, {Name: "v6", Target: "[::1]:389"}}
				if !reflect.DeepEqual(a.Connectors, want) {
					t.Errorf("Connectors = %+v", a.Connectors)
				}
				if a.AgentID != "agent-7" || a.Token != testToken || a.TokenFile != tokenFile ||
					a.DialTimeout.D() != 750*time.Millisecond || a.CAFile != "testdata/certs/ca.pem" {
					t.Errorf("agent = %+v", a)
				}
			},
		},
		{
			name: "token from NC_TOKEN replaces the file's",
			env:  map[string]string{"NC_TOKEN": " tok "},
			check: func(t *testing.T, a *Agent) {
				if a.Token != "tok" || a.TokenFile != "" {
					t.Errorf("Token = %q, TokenFile = %q", a.Token, a.TokenFile)
				}
			},
		},
		{
			name:    "missing token file",
			env:     map[string]string{"NC_TOKEN_FILE": missing},
			wantErr: []string{"NC_TOKEN_FILE: file not found: " + missing},
		},
		{
			name:    "empty token file",
			env:     map[string]string{"NC_TOKEN_FILE": emptyToken},
			wantErr: []string{"NC_TOKEN_FILE: token file is empty"},
		},
		{
			name:    "both token variables",
			env:     map[string]string{"NC_TOKEN": "x", "NC_TOKEN_FILE": tokenFile},
			wantErr: []string{"NC_TOKEN_FILE: NC_TOKEN is set too"},
		},
		{
			name: "malformed connectors",
			env:  map[string]string{"NC_CONNECTORS": "addomain=openldap:389,broken,=h:1,x=nohost,y=h:99999,addomain=h:2"},
			wantErr: []string{
				`NC_CONNECTORS: bad entry "broken": want name=host:port`,
				`NC_CONNECTORS: bad entry "=h:1"`,
				`NC_CONNECTORS: connector "x": "nohost" is not host:port`,
				`NC_CONNECTORS: connector "y": "h:99999" has a bad port`,
				`NC_CONNECTORS: connector "addomain" listed twice`,
			},
		},
		{
			name: "connector options",
			env:  map[string]string{"NC_CONNECTORS": "a=h:1;proxy=v1,b=h:2;ppp=v2,c=h:3;proxy,d=h:4;,e=h:5;proxy=v2;proxy=V2"},
			wantErr: []string{
				`NC_CONNECTORS: connector "a": proxy: unknown value "v1" (want v2)`,
				`NC_CONNECTORS: connector "b": unknown option "ppp" (known: proxy)`,
				`NC_CONNECTORS: connector "c": option "proxy": want key=value`,
				`NC_CONNECTORS: connector "d": empty option after ';'`,
				`NC_CONNECTORS: connector "e": proxy: unknown value "V2"`,
			},
		},
		{
			name:    "empty connector list",
			env:     map[string]string{"NC_CONNECTORS": ", ,"},
			wantErr: []string{"NC_CONNECTORS: no connector"},
		},
		{
			name: "bad url, duration and CA file",
			env: map[string]string{
				"NC_CLOUD_URL":    "https://a/tunnel",
				"NC_DIAL_TIMEOUT": "5",
				"NC_CA_FILE":      missing,
			},
			wantErr: []string{
				`NC_CLOUD_URL: "https://a/tunnel": scheme must be ws:// or wss://`,
				`NC_DIAL_TIMEOUT: durations are written like "5s"`,
				"NC_CA_FILE: file not found",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := DefaultAgent()
			a.TokenFile, a.Token = "from-file", "file-token"
			before := *a
			err := a.ApplyEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ApplyEnv: %v", err)
				}
				tt.check(t, a)
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != len(tt.wantErr) {
				t.Fatalf("ApplyEnv error = %v, want %d errors", err, len(tt.wantErr))
			}
			for i, w := range tt.wantErr {
				if !strings.HasPrefix(errs[i].Error(), w) {
					t.Errorf("error %d = %q, want prefix %q", i, errs[i], w)
				}
			}
			// A malformed variable is not applied.
			if !reflect.DeepEqual(*a, before) {
				t.Errorf("agent changed by bad env: %+v", a)
			}
		})
	}
}

func TestLoadAgentEnv(t *testing.T) {
	env := map[string]string{
		"NC_CLOUD_URL":  "ws://127.0.0.1:8765/tunnel",
		"NC_AGENT_ID":   "from-env",
		"NC_TOKEN":      "tok",
		"NC_CONNECTORS": "ldap=127.0.0.1:389",
	}
	getenv := func(k string) string { return env[k] }

	// Environment only.
	a, err := LoadAgentEnv("", getenv)
	if err != nil {
		t.Fatalf("LoadAgentEnv(env only): %v", err)
	}
	if a.AgentID != "from-env" || a.Token != "tok" || a.Connectors[0].Target != "127.0.0.1:389" || a.StreamWindow != 262144 {
		t.Errorf("env only: %+v", a)
	}

	// The environment overrides the file.
	a, err = LoadAgentEnv("testdata/premise.toml", getenv)
	if err != nil {
		t.Fatalf("LoadAgentEnv: %v", err)
	}
	if a.AgentID != "from-env" || a.Token != "tok" || a.TokenFile != "" || len(a.Connectors) != 1 || a.DialTimeout.D() != 3*time.Second {
		t.Errorf("file+env: %+v", a)
	}

	// File, environment and validation problems come together.
	path := writeFile(t, "premise.toml", "agent_id = \"a\"\nbogus = 1\n")
	env["NC_CONNECTORS"] = "broken"
	delete(env, "NC_CLOUD_URL")
	_, err = LoadAgentEnv(path, getenv)
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("LoadAgentEnv error = %v", err)
	}
	got := err.Error()
	for _, w := range []string{path + ":2:1: bogus: unknown key", "NC_CONNECTORS: bad entry", path + ": cloud_urls: required", path + ": connectors: required"} {
		if !strings.Contains(got, w) {
			t.Errorf("error lacks %q:\n%s", w, got)
		}
	}
}

func TestLoadAgentProxyProtocol(t *testing.T) {
	tok := writeFile(t, "agent.token", testToken+"\n")
	path := writeFile(t, "premise.toml", "cloud_url = \"ws://cloud/tunnel\"\nagent_id = \"a\"\ntoken_file = \""+tok+"\"\n"+
		"[[connectors]]\nname = \"plain\"\ntarget = \"h:1\"\n[[connectors]]\nname = \"pldap\"\ntarget = \"h:2\"\nproxy_protocol = \"v2\"\n")
	a, err := LoadAgent(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []Connector{{Name: "plain", Target: "h:1"}, {Name: "pldap", Target: "h:2", ProxyProtocol: "v2"}}
	if !reflect.DeepEqual(a.Connectors, want) {
		t.Fatalf("Connectors = %+v", a.Connectors)
	}
	// ReadTokenFile reads as loading does: trimmed, an empty file refused.
	if got, err := ReadTokenFile(tok); err != nil || got != testToken {
		t.Fatalf("ReadTokenFile = %q, %v", got, err)
	}
	if _, err := ReadTokenFile(writeFile(t, "empty.token", " \n")); err == nil || !strings.Contains(err.Error(), "token file is empty") {
		t.Fatalf("empty token file: %v", err)
	}
}
