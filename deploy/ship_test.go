package deploy

// Shared helpers of the shipping tests (image_test.go, compose_test.go, systemd_test.go,
// kubernetes_test.go, release_test.go, readme_test.go): the Dockerfile, the compose stacks,
// the systemd units, the Kubernetes manifests and the release build, each checked with the
// real tool (podman, docker-compose, systemd-analyze, go build) and, where it can run here,
// by running what it ships.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// The version stamp the image and release tests build with and expect back from
// `nowconnect version`.
const (
	shipVersion = "v9.9.9-shiptest"
	shipCommit  = "0123456789abcdef0123456789abcdef01234567"
	shipDate    = "2026-01-02T03:04:05Z"
)

// needTool returns the path of the executable bin, which scripts/deps.sh installs from the
// Debian package pkg. It skips the test only where pkg cannot be installed (apt has no such
// package, or there is no apt); on a machine where it can be, a missing bin fails the test.
func needTool(t *testing.T, bin, pkg string) string {
	t.Helper()
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"} {
		p := filepath.Join(dir, bin)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(bin); err == nil {
		return p
	}
	aptCache, err := exec.LookPath("apt-cache")
	if err != nil {
		t.Skipf("%s is not installed and this machine has no apt: the Debian package %s cannot be installed here", bin, pkg)
	}
	out, err := exec.Command(aptCache, "show", "--no-all-versions", pkg).CombinedOutput()
	if lists, _ := filepath.Glob("/var/lib/apt/lists/*_Packages*"); len(lists) > 0 &&
		(err != nil || !bytes.Contains(out, []byte("Package: "+pkg))) {
		// apt knows its packages (its lists are there) and this is not one.
		t.Skipf("%s is not installed and apt has no package %s (apt-cache show: %v)", bin, pkg, err)
	}
	t.Fatalf("%s is not installed: run make test (scripts/deps.sh installs the Debian package %s)", bin, pkg)
	return ""
}

// runIn runs name with args in dir with extra environment variables, bounded by timeout, and
// returns its combined output; a non-zero exit fails the test with that output.
func runIn(t *testing.T, dir string, env []string, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// exitCode runs name with args and returns its exit code and combined output.
func exitCode(t *testing.T, timeout time.Duration, name string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee) && ctx.Err() == nil:
		return ee.ExitCode(), string(out)
	default:
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		return 0, ""
	}
}

// rewrite returns s with each old → new replacement made, failing the test unless every old
// string occurs exactly once (so a changed file breaks the test instead of going unchecked).
func rewrite(t *testing.T, what, s string, pairs ...string) string {
	t.Helper()
	for i := 0; i+1 < len(pairs); i += 2 {
		if n := strings.Count(s, pairs[i]); n != 1 {
			t.Fatalf("%s: want %q exactly once, found %d times", what, pairs[i], n)
		}
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return s
}

// hubAddrs returns the control and listener addresses for a hub run of a shipped config
// whose fixed addresses are control and listener ("0.0.0.0:8765", "0.0.0.0:389"): the same
// addresses when both are free here, otherwise free loopback ports. Only the addresses
// change then: 8765 and 389 may be held on a shared machine (make run, a system slapd, a
// non-root user may not bind 389), and the test must not depend on them.
func hubAddrs(t *testing.T, control, listener string) (newControl, newListener string) {
	t.Helper()
	if portFree(control) && portFree(listener) {
		return control, listener
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t))),
		net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
}

func portFree(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	return l.Close() == nil
}

// dialable turns a bind address into one a client on this machine can dial.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && (host == "0.0.0.0" || host == "" || host == "::") {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// healthOK reports whether GET base/healthz answers 200 {"status":"ok"}.
func healthOK(base string) error {
	code, body, err := httpGet(base + "/healthz")
	if err != nil {
		return err
	}
	if code != http.StatusOK || strings.TrimSpace(string(body)) != `{"status":"ok"}` {
		return fmt.Errorf("/healthz: HTTP %d %s", code, body)
	}
	return nil
}
