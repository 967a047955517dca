package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nowconnect/nowconnect/internal/config"
)

// TestAgentConfigWiring: a token file becomes a TokenSource that reads the
// file again (trimmed, an empty file refused); NC_TOKEN stays static;
// log.mask_client_addr and proxy_protocol reach the agent.
func TestAgentConfigWiring(t *testing.T) {
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"NC_CLOUD_URL":  "ws://127.0.0.1:1/tunnel",
		"NC_AGENT_ID":   "a",
		"NC_TOKEN_FILE": tokFile,
		"NC_CONNECTORS": "plain=h:1,pp=h:2;proxy=v2",
	}
	cfg, err := config.LoadAgentEnv("", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	cfg.Log.MaskClientAddr = true
	ac, err := agentConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ac.Token != "first" || ac.TokenSource == nil || !ac.MaskClientAddr {
		t.Fatalf("agent config: token %q, source %v, mask %v", ac.Token, ac.TokenSource != nil, ac.MaskClientAddr)
	}
	if len(ac.ProxyProtocol) != 1 || ac.ProxyProtocol["pp"] != "v2" {
		t.Fatalf("ProxyProtocol = %v", ac.ProxyProtocol)
	}
	if err := os.WriteFile(tokFile, []byte("  second\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := ac.TokenSource(); err != nil || tok != "second" {
		t.Fatalf("TokenSource after rotation = %q, %v", tok, err)
	}
	if err := os.WriteFile(tokFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.TokenSource(); err == nil {
		t.Fatal("an empty token file was accepted")
	}

	delete(env, "NC_TOKEN_FILE")
	env["NC_TOKEN"] = "static"
	cfg, err = config.LoadAgentEnv("", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if ac, err = agentConfig(cfg); err != nil || ac.Token != "static" || ac.TokenSource != nil {
		t.Fatalf("NC_TOKEN: token %q, source %v, %v", ac.Token, ac.TokenSource != nil, err)
	}
}
