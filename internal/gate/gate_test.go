package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestGate runs the whole gate against the binary built from this checkout: slapd, hub and
// agent as real processes; the hub and pingpong checks pass and the exit code is 0.
func TestGate(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(t.Context(), []string{"--bin", testenv.Binary(t), "--users", "10"}, &out, &errb)
	lines := strings.Split(out.String(), "\n")
	if code != 0 || !strings.HasPrefix(lines[0], "NOWCONNECT CHECK OK - 2 checks: 2 OK, 0 WARNING, 0 CRITICAL, 0 UNKNOWN | ") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"OK hub: healthz ok; readyz ready; connector addomain: 1 agent", "OK pingpong addomain: search through ldap://", "found 10 entries; c2a +"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	for _, want := range []string{"gate: slapd on 127.0.0.1:", "gate: agent connected"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, errb.String())
		}
	}
}

func TestGateSetupFailure(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"--bin", "/nonexistent/nowconnect"}, &out, &errb); code != exitSetup || !strings.Contains(errb.String(), "/nonexistent/nowconnect: not a binary") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	if code := run(t.Context(), []string{"extra"}, &out, &errb); code != exitSetup {
		t.Fatalf("stray argument: exit %d", code)
	}
}
