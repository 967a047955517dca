package deploy

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/config"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

const (
	systemdDir     = "systemd"
	cloudUnit      = "nowconnect-cloud.service"
	premiseUnit    = "nowconnect-premise.service"
	sysusersFile   = "systemd/nowconnect.sysusers"
	systemdCloud   = "systemd/cloud.yaml"
	systemdEnvFile = "systemd/premise.env"
	installedBin   = "/usr/local/bin/nowconnect"
)

// unitFile is a parsed systemd unit: section → key → values in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("unit line %q: not KEY=VALUE in a section", line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// one returns the single value of key in [Service], failing the test otherwise.
func (u unitFile) one(t *testing.T, unit, key string) string {
	t.Helper()
	v := u["Service"][key]
	if len(v) != 1 {
		t.Fatalf("%s: [Service] %s: %d values %q, want one", unit, key, len(v), v)
	}
	return v[0]
}

// TestSystemdUnits runs systemd-analyze verify on both units (ExecStart pointed at the test's
// binary in a copy; systemd-analyze wants it to exist) and requires it to print nothing about
// them, then checks what the units promise: a dedicated user that the shipped sysusers file
// creates (systemd-sysusers into a scratch root), CAP_NET_BIND_SERVICE for :389 on the hub and
// no capability on the agent, ProtectSystem=strict, NoNewPrivileges, LimitNOFILE for many
// connections, reload by SIGHUP, Restart=on-failure, SIGTERM with a stop timeout above the
// shutdown grace, the agent's EnvironmentFile; and that the shipped cloud.yaml and premise.env
// load with the gateway's own config loader.
func TestSystemdUnits(t *testing.T) {
	analyze := needTool(t, "systemd-analyze", "systemd")
	bin := testenv.Binary(t)
	dir := t.TempDir()

	units := map[string]unitFile{}
	for _, name := range []string{cloudUnit, premiseUnit} {
		b, err := os.ReadFile(filepath.Join(systemdDir, name))
		if err != nil {
			t.Fatal(err)
		}
		text := rewrite(t, name, string(b), "ExecStart="+installedBin+" ", "ExecStart="+bin+" ")
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		code, out := exitCode(t, time.Minute, analyze, "verify", path)
		var about []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.Contains(line, "nowconnect") {
				about = append(about, line)
			} else if line != "" {
				t.Logf("systemd-analyze verify (not about %s): %s", name, line)
			}
		}
		if code != 0 || len(about) > 0 {
			t.Fatalf("systemd-analyze verify %s: exit %d\n%s", name, code, strings.Join(about, "\n"))
		}
		units[name] = parseUnit(t, string(b))
	}

	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	sysusers := needTool(t, "systemd-sysusers", "systemd")
	usersText, err := os.ReadFile(sysusersFile)
	if err != nil {
		t.Fatal(err)
	}
	runInStdin(t, usersText, sysusers, "--root", root, "-")
	passwd, err := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	if err != nil {
		t.Fatalf("systemd-sysusers %s wrote no passwd: %v", sysusersFile, err)
	}

	hubGrace := config.DefaultHub().Timeouts.ShutdownGrace.D()
	agentGrace := config.DefaultAgent().ShutdownGrace.D()
	for name, u := range units {
		s := u["Service"]
		if user := u.one(t, name, "User"); !strings.Contains(string(passwd), "\n"+user+":") && !strings.HasPrefix(string(passwd), user+":") {
			t.Fatalf("%s: User=%s is not created by %s (passwd: %q)", name, user, sysusersFile, passwd)
		}
		for key, want := range map[string]string{
			"ProtectSystem":   "strict",
			"NoNewPrivileges": "yes",
			"Restart":         "on-failure",
			"KillSignal":      "SIGTERM",
			"ExecReload":      "/bin/kill -HUP $MAINPID",
		} {
			if got := u.one(t, name, key); got != want {
				t.Fatalf("%s: %s=%s, want %s", name, key, got, want)
			}
		}
		nofile, err := strconv.Atoi(u.one(t, name, "LimitNOFILE"))
		if err != nil || nofile < 65536 {
			t.Fatalf("%s: LimitNOFILE=%s: want a number ≥ 65536 (a descriptor or two per connection)", name, s["LimitNOFILE"])
		}
		stop, err := time.ParseDuration(u.one(t, name, "TimeoutStopSec"))
		grace := agentGrace
		if name == cloudUnit {
			grace = hubGrace
		}
		if err != nil || stop <= grace {
			t.Fatalf("%s: TimeoutStopSec=%s: want a duration above the shutdown grace %v", name, s["TimeoutStopSec"], grace)
		}
	}

	cloud := units[cloudUnit]
	for _, key := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		if got := cloud.one(t, cloudUnit, key); got != "CAP_NET_BIND_SERVICE" {
			t.Fatalf("%s: %s=%s, want CAP_NET_BIND_SERVICE only (the hub binds :389 as a plain user)", cloudUnit, key, got)
		}
	}
	if got := cloud.one(t, cloudUnit, "ExecStart"); got != installedBin+" cloud --config /etc/nowconnect/cloud.yaml" {
		t.Fatalf("%s: ExecStart=%s", cloudUnit, got)
	}
	premise := units[premiseUnit]
	if got := premise.one(t, premiseUnit, "CapabilityBoundingSet"); got != "" {
		t.Fatalf("%s: CapabilityBoundingSet=%s, want empty (the agent needs no privilege)", premiseUnit, got)
	}
	if _, ok := premise["Service"]["AmbientCapabilities"]; ok {
		t.Fatalf("%s: the agent needs no AmbientCapabilities", premiseUnit)
	}
	if got := premise.one(t, premiseUnit, "EnvironmentFile"); got != "/etc/nowconnect/premise.env" {
		t.Fatalf("%s: EnvironmentFile=%s, want /etc/nowconnect/premise.env", premiseUnit, got)
	}

	// The files the units read, loaded by the gateway's own loader.
	secret := filepath.Join(dir, "hs256")
	token := filepath.Join(dir, "token")
	for _, f := range []string{secret, token} {
		if err := os.WriteFile(f, []byte("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(systemdCloud)
	if err != nil {
		t.Fatal(err)
	}
	hubPath := filepath.Join(dir, "cloud.yaml")
	if err := os.WriteFile(hubPath, []byte(rewrite(t, systemdCloud, string(b), "/etc/nowconnect/hs256", secret)), 0o600); err != nil {
		t.Fatal(err)
	}
	hub, err := config.LoadHub(hubPath)
	if err != nil {
		t.Fatalf("%s: %v", systemdCloud, err)
	}
	if len(hub.Listeners) == 0 || port(t, hub.Listeners[0].Bind) != "389" || hub.Timeouts.ShutdownGrace.D() >= 45*time.Second {
		t.Fatalf("%s: want a listener on :389 and a shutdown grace below the unit's TimeoutStopSec, got %+v", systemdCloud, hub)
	}

	env := readEnvFile(t, systemdEnvFile)
	known := map[string]bool{"NC_CLOUD_URL": true, "NC_AGENT_ID": true, "NC_TOKEN": true, "NC_TOKEN_FILE": true,
		"NC_CONNECTORS": true, "NC_DIAL_TIMEOUT": true, "NC_CA_FILE": true}
	for k := range env {
		if !known[k] {
			t.Fatalf("%s: %s is not a variable the agent reads", systemdEnvFile, k)
		}
	}
	if env["NC_TOKEN_FILE"] != "/etc/nowconnect/token" {
		t.Fatalf("%s: NC_TOKEN_FILE=%q, want /etc/nowconnect/token (the unit's install notes)", systemdEnvFile, env["NC_TOKEN_FILE"])
	}
	env["NC_TOKEN_FILE"] = token
	ag, err := config.LoadAgentEnv("", func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("%s: %v", systemdEnvFile, err)
	}
	if len(ag.CloudURLs) == 0 || len(ag.Connectors) == 0 || ag.AgentID == "" {
		t.Fatalf("%s: want hub URLs, an agent id and connectors, got %+v", systemdEnvFile, ag)
	}
}

// readEnvFile reads KEY=VALUE lines, the active ones and the commented-out examples
// ("#NC_CA_FILE=…"), which are returned too so that they are checked; only active ones get
// a value.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		commented := strings.HasPrefix(line, "#")
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "#"), "=")
		if !ok || strings.ContainsAny(k, " \t") || k == "" {
			if !commented && line != "" {
				t.Fatalf("%s: line %q is not KEY=VALUE", path, line)
			}
			continue
		}
		if commented {
			if _, set := env[k]; !set {
				env[k] = ""
			}
			continue
		}
		env[k] = v
	}
	return env
}

// runInStdin runs name with args, feeding stdin, and fails the test on a non-zero exit.
func runInStdin(t *testing.T, stdin []byte, name string, args ...string) {
	t.Helper()
	out, code := run(t, stdin, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d\n%s", name, strings.Join(args, " "), code, out)
	}
}
