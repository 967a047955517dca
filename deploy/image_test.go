package deploy

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// imageConfig is the part of an image's config this test reads (docker-archive config JSON
// and podman image inspect agree on these names).
type imageConfig struct {
	User         string
	Entrypoint   []string
	Cmd          []string
	Env          []string
	ExposedPorts map[string]struct{}
	Labels       map[string]string
	Healthcheck  *struct{ Test []string }
}

// TestImage builds the image with `make image`'s script the way this machine must (podman,
// no registry: the builder image cannot be pulled, so it falls back to the from-binary
// target), then checks the built image: a non-root numeric user, the nowconnect entrypoint,
// port 8765, OCI labels with the version and commit, a shell-less HEALTHCHECK; and from its
// layers (podman image save, unpacked here): /etc/passwd names the user, the CA bundle parses,
// and the binary runs `version` (the embedded version and commit) and a real `cloud` with the
// compose stack's cloud.yaml, answering /healthz and logging listener_started, with the
// image's own HEALTHCHECK command exiting 0 against it and 1 once it is gone.
func TestImage(t *testing.T) {
	podman := needTool(t, "podman", "podman")
	root := testenv.ModuleRoot(t)

	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	tag := "localhost/nowconnect-shiptest:" + hex.EncodeToString(rnd[:])
	t.Cleanup(func() { _, _ = exitCode(t, time.Minute, podman, "rmi", "-f", tag) })

	// A builder image name that cannot be pulled anywhere: the script must notice and take
	// the offline path, as it does on this machine for the real golang image.
	out := runIn(t, root, []string{
		"ENGINE=podman", "IMAGE=" + tag, "IMAGE_FROM=auto",
		"GO_IMAGE=localhost/nowconnect-no-such-builder:none",
		"VERSION=" + shipVersion, "COMMIT=" + shipCommit, "DATE=" + shipDate,
	}, 5*time.Minute, "bash", "scripts/image.sh")
	if !strings.Contains(out, "building from a local binary") || !strings.Contains(out, "--target from-binary") {
		t.Fatalf("scripts/image.sh did not fall back to the from-binary target:\n%s", out)
	}

	var inspected []struct{ Config imageConfig }
	if err := json.Unmarshal([]byte(runIn(t, root, nil, time.Minute, podman, "image", "inspect", tag)), &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("podman image inspect %s: %v (%d images)", tag, err, len(inspected))
	}
	uid := checkImageConfig(t, "podman image inspect", inspected[0].Config)

	dir := t.TempDir()
	archive := filepath.Join(dir, "image.tar")
	runIn(t, root, nil, 2*time.Minute, podman, "image", "save", "--format", "docker-archive", "-o", archive, tag)
	cfg, files := unpackImage(t, archive, "nowconnect", "etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt")
	checkImageConfig(t, "saved image config", cfg)
	if cfg.Healthcheck == nil || len(cfg.Healthcheck.Test) < 3 || cfg.Healthcheck.Test[0] != "CMD" ||
		cfg.Healthcheck.Test[1] != "/nowconnect" || cfg.Healthcheck.Test[2] != "health" {
		t.Fatalf("HEALTHCHECK: want CMD /nowconnect health … (no shell), got %+v", cfg.Healthcheck)
	}

	if !passwdHasUID(files["etc/passwd"], uid) {
		t.Fatalf("/etc/passwd of the image has no entry for uid %d:\n%s", uid, files["etc/passwd"])
	}
	if pool := x509.NewCertPool(); !pool.AppendCertsFromPEM(files["etc/ssl/certs/ca-certificates.crt"]) {
		t.Fatal("/etc/ssl/certs/ca-certificates.crt of the image holds no PEM certificate")
	}

	bin := filepath.Join(dir, "nowconnect")
	if err := os.WriteFile(bin, files["nowconnect"], 0o755); err != nil {
		t.Fatal(err)
	}
	if code, v := exitCode(t, 30*time.Second, bin, "version"); code != 0 || !strings.Contains(v, shipVersion) || !strings.Contains(v, shipCommit) {
		t.Fatalf("image binary: version: exit %d, want %s and %s in %q", code, shipVersion, shipCommit, v)
	}

	hc := composeHub(t, dir)
	hub := testenv.StartProcess(t, bin, []string{"cloud", "--config", hc.config}, nil)
	base := "http://" + dialable(hc.control)
	testenv.WaitFor(t, 20*time.Second, "the image's binary serving /healthz with the compose cloud.yaml", func() bool {
		if hub.Exited() {
			t.Fatalf("cloud exited:\n%s", hub.Output())
		}
		return healthOK(base) == nil
	})
	hub.WaitForOutput(t, `"msg":"listener_started","name":"addomain","bind":"`+hc.listener+`","connector":"addomain"`, 10*time.Second)

	// The HEALTHCHECK exactly as the image runs it, pointed at this hub's control port.
	probe := append([]string(nil), cfg.Healthcheck.Test[2:]...)
	for i, a := range probe {
		probe[i] = strings.Replace(a, "127.0.0.1:8765", dialable(hc.control), 1)
	}
	if code, out := exitCode(t, 30*time.Second, bin, probe...); code != 0 {
		t.Fatalf("HEALTHCHECK %v against a serving hub: exit %d\n%s", probe, code, out)
	}
	if err := hub.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := hub.Wait(45 * time.Second); err != nil || code != 0 {
		t.Fatalf("cloud after SIGTERM: exit %d, %v\n%s", code, err, hub.Output())
	}
	if code, out := exitCode(t, 30*time.Second, bin, probe...); code != 1 {
		t.Fatalf("HEALTHCHECK %v with the hub gone: exit %d, want 1\n%s", probe, code, out)
	}
}

// checkImageConfig checks the run settings of the image and returns its numeric uid.
func checkImageConfig(t *testing.T, what string, c imageConfig) int {
	t.Helper()
	user, _, _ := strings.Cut(c.User, ":")
	uid, err := strconv.Atoi(user)
	if err != nil || uid == 0 {
		t.Fatalf("%s: User %q: want a numeric non-root uid (runAsNonRoot needs a number)", what, c.User)
	}
	if len(c.Entrypoint) != 1 || filepath.Base(c.Entrypoint[0]) != "nowconnect" {
		t.Fatalf("%s: Entrypoint %q: want [/nowconnect]", what, c.Entrypoint)
	}
	if _, ok := c.ExposedPorts["8765/tcp"]; !ok {
		t.Fatalf("%s: ExposedPorts %v: want 8765/tcp", what, c.ExposedPorts)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.version":  shipVersion,
		"org.opencontainers.image.revision": shipCommit,
		"org.opencontainers.image.created":  shipDate,
		"org.opencontainers.image.title":    "nowconnect",
	} {
		if c.Labels[k] != v {
			t.Fatalf("%s: label %s = %q, want %q", what, k, c.Labels[k], v)
		}
	}
	return uid
}

// unpackImage reads a docker-archive tar (podman image save): the image config, and the
// files named by want (paths without a leading slash) from its layers, later layers winning.
// A missing file fails the test.
func unpackImage(t *testing.T, archive string, want ...string) (imageConfig, map[string][]byte) {
	t.Helper()
	entries := map[string][]byte{}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", archive, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("%s: %s: %v", archive, h.Name, err)
		}
		entries[h.Name] = b
	}
	var manifest []struct {
		Config string
		Layers []string
	}
	if err := json.Unmarshal(entries["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("%s: manifest.json: %v (%d images)", archive, err, len(manifest))
	}
	var cfg struct{ Config imageConfig }
	if err := json.Unmarshal(entries[manifest[0].Config], &cfg); err != nil {
		t.Fatalf("%s: image config %s: %v", archive, manifest[0].Config, err)
	}
	files := map[string][]byte{}
	for _, layer := range manifest[0].Layers {
		b, ok := entries[layer]
		if !ok {
			t.Fatalf("%s: layer %s missing", archive, layer)
		}
		var r io.Reader = bytes.NewReader(b)
		if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
			if r, err = gzip.NewReader(r); err != nil {
				t.Fatalf("%s: layer %s: %v", archive, layer, err)
			}
		}
		lr := tar.NewReader(r)
		for {
			h, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: layer %s: %v", archive, layer, err)
			}
			name := strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/")
			if h.Typeflag != tar.TypeReg {
				continue
			}
			if files[name], err = io.ReadAll(lr); err != nil {
				t.Fatalf("%s: layer %s: %s: %v", archive, layer, name, err)
			}
		}
	}
	for _, w := range want {
		if len(files[w]) == 0 {
			t.Fatalf("%s: the image has no file /%s", archive, w)
		}
	}
	return cfg.Config, files
}

// passwdHasUID reports whether an /etc/passwd text has an account with uid.
func passwdHasUID(passwd []byte, uid int) bool {
	sc := bufio.NewScanner(bytes.NewReader(passwd))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) >= 7 && f[0] != "" && f[2] == strconv.Itoa(uid) {
			return true
		}
	}
	return false
}
