package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestSeedHAConfigsCheck: the HA cloud.yaml of seeds 002 and 003 (as in
// internal/config/testdata) pass --check-config unchanged but for an auth
// section and real certificates at their certificate paths, the way a
// start would load them.
func TestSeedHAConfigsCheck(t *testing.T) {
	testdata, err := filepath.Abs("../../internal/config/testdata")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := testenv.NewCA(t, "mesh CA")
	caFile := ca.WritePEM(t, dir)
	certFile, keyFile := testenv.WritePEMPair(t, dir, ca.Issue(t, "hub-a", time.Now().Add(24*time.Hour), "cloud-a.example.com"))
	secret := filepath.Join(dir, "jwt.secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("s3cr3t-", 8)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"cloud_seed002.yaml", "cloud.yaml"} {
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join(testdata, name))
			if err != nil {
				t.Fatal(err)
			}
			body := strings.NewReplacer("certs/ca.pem", caFile, "certs/hub-a.crt", certFile, "certs/hub-a.key", keyFile).Replace(string(src))
			body += "auth:\n  jwt_secret_file: " + secret + "\n"
			path := filepath.Join(dir, name)
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			if code := run([]string{"cloud", "--check-config", "--config", path}, &stdout, &stderr); code != 0 ||
				!strings.Contains(stderr.String(), "configuration OK: "+path) {
				t.Fatalf("cloud --check-config on %s: exit %d\n%s", name, code, stderr.String())
			}
		})
	}
}
