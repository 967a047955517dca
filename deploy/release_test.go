package deploy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// releaseTargets are what `make release` must build (issue 12): the hub's Linux platforms
// and the premise agent's Windows and macOS ones.
var releaseTargets = []string{"linux/amd64", "linux/arm64", "windows/amd64", "darwin/arm64"}

// TestRelease runs `make release` into a scratch folder and checks every target: the file
// exists under its versioned name, is an executable of its OS and architecture (ELF, PE,
// Mach-O), the Linux ones static (no interpreter, no dynamic section); SHA256SUMS lists
// exactly these files with their real digests; and the native binary's `version` and
// `--version` print the embedded version, commit and date.
func TestRelease(t *testing.T) {
	mk := needTool(t, "make", "make")
	root := testenv.ModuleRoot(t)
	dist := t.TempDir()
	runIn(t, root, []string{"DIST=" + dist, "VERSION=" + shipVersion, "COMMIT=" + shipCommit, "DATE=" + shipDate},
		10*time.Minute, mk, "-s", "release")

	sums := map[string]string{}
	b, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			t.Fatalf("SHA256SUMS: line %q is not sha256sum format", sc.Text())
		}
		sums[name] = sum
	}

	var names []string
	for _, target := range releaseTargets {
		goos, goarch, _ := strings.Cut(target, "/")
		name := "nowconnect-" + shipVersion + "-" + goos + "-" + goarch
		if goos == "windows" {
			name += ".exe"
		}
		names = append(names, name)
		path := filepath.Join(dist, name)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		if d := sha256.Sum256(data); sums[name] != hex.EncodeToString(d[:]) {
			t.Fatalf("SHA256SUMS: %s = %q, the file's digest is %x", name, sums[name], d)
		}
		checkExecutable(t, path, goos, goarch)
		if !bytes.Contains(data, []byte(shipVersion)) || !bytes.Contains(data, []byte(shipCommit)) {
			t.Fatalf("%s: the version and commit are not embedded", name)
		}
	}
	got := mapKeys(sums)
	slices.Sort(got)
	slices.Sort(names)
	if !slices.Equal(got, names) {
		t.Fatalf("SHA256SUMS lists %v, want exactly %v", got, names)
	}

	native := filepath.Join(dist, "nowconnect-"+shipVersion+"-"+runtime.GOOS+"-"+runtime.GOARCH)
	for _, arg := range []string{"version", "--version"} {
		code, out := exitCode(t, 30*time.Second, native, arg)
		for _, want := range []string{shipVersion, "commit " + shipCommit, "built " + shipDate} {
			if code != 0 || !strings.Contains(out, want) {
				t.Fatalf("%s %s: exit %d, want %q in %q", filepath.Base(native), arg, code, want, out)
			}
		}
	}
}

func mapKeys(m map[string]string) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

// checkExecutable checks that path is an executable for goos/goarch.
func checkExecutable(t *testing.T, path, goos, goarch string) {
	t.Helper()
	switch goos {
	case "linux":
		f, err := elf.Open(path)
		if err != nil {
			t.Fatalf("%s: not ELF: %v", path, err)
		}
		defer f.Close()
		want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[goarch]
		if f.Machine != want || f.Type != elf.ET_EXEC {
			t.Fatalf("%s: ELF %v %v, want an %v executable", path, f.Type, f.Machine, want)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Fatalf("%s: dynamically linked (%v): want a static binary (CGO_ENABLED=0)", path, p.Type)
			}
		}
	case "windows":
		f, err := pe.Open(path)
		if err != nil {
			t.Fatalf("%s: not PE: %v", path, err)
		}
		defer f.Close()
		if f.Machine != pe.IMAGE_FILE_MACHINE_AMD64 || f.Characteristics&pe.IMAGE_FILE_EXECUTABLE_IMAGE == 0 {
			t.Fatalf("%s: PE machine %#x characteristics %#x, want an amd64 executable", path, f.Machine, f.Characteristics)
		}
	case "darwin":
		f, err := macho.Open(path)
		if err != nil {
			t.Fatalf("%s: not Mach-O: %v", path, err)
		}
		defer f.Close()
		if f.Cpu != macho.CpuArm64 || f.Type != macho.TypeExec {
			t.Fatalf("%s: Mach-O %v %v, want an arm64 executable", path, f.Type, f.Cpu)
		}
	default:
		t.Fatalf("no check for %s", goos)
	}
}
