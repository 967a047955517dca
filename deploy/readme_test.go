package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestREADMEDeploy: the README's Deploy section names every shipped file by its path from
// the repository root (every file under deploy/compose, deploy/systemd, deploy/kubernetes and
// deploy/image, the Dockerfile, .dockerignore and the build scripts), the make targets, seed
// 000's compose command as the runbook writes it, the ping-pong service, the HA flip to
// active, and the Kubernetes Secret the Deployment references.
func TestREADMEDeploy(t *testing.T) {
	root := testenv.ModuleRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	start := strings.Index(readme, "\n## Deploy\n")
	if start < 0 {
		t.Fatal("README.md has no \"## Deploy\" section")
	}
	section := readme[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}

	want := []string{"Dockerfile", ".dockerignore", "scripts/image.sh", "scripts/release.sh",
		"scripts/buildinfo.sh", "scripts/crossbuild.sh"}
	for _, dir := range []string{"deploy/compose", "deploy/systemd", "deploy/kubernetes", "deploy/image"} {
		entries, err := os.ReadDir(filepath.Join(root, dir))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) == 0 {
			t.Fatalf("%s is empty", dir)
		}
		for _, e := range entries {
			if !e.IsDir() {
				want = append(want, dir+"/"+e.Name())
			}
		}
	}
	for _, f := range want {
		if !strings.Contains(section, "`"+f+"`") {
			t.Errorf("README Deploy section does not name `%s`", f)
		}
	}
	for _, s := range []string{
		"make image", "make release",
		"docker compose -f docker-compose-nowconnect.yml up -d nowconnect-cloud nowconnect-premise openldap",
		"run --rm nowconnect-check",
		"mode: active",
		"kubectl create secret generic nowconnect-hs256 --from-file=hs256=",
		"nowconnect health",
		"--target from-binary",
	} {
		if !strings.Contains(section, s) {
			t.Errorf("README Deploy section does not say %q", s)
		}
	}
}
