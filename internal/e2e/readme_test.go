package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// readmeExpect lists, per runnable README group, what its output must contain. A group
// in the README without an entry here fails, and so does an entry without a group.
var readmeExpect = map[string][]string{
	"minimal-hub": {
		"configuration OK: cloud.toml",
		"dn: uid=user0001,ou=people,dc=example,dc=org",
		"cn: User 0001",
		"mail: user0001@example.org",
	},
	"load-testing": {
		"LDAP load test: search — PASS",
		"| connections | 50 |", // the gateway's counters: the load went through it
	},
}

// readmeShorter are the other changes the test makes, per group, besides the ports: the
// load test runs 3 s instead of 30, and its p99 gate is one a -race binary on 2 shared
// cores can hold (the README's 20 ms is for the real binary); every flag still runs.
var readmeShorter = map[string][][2]string{
	"load-testing": {{"--duration 30s", "--duration 3s"}, {"--slo-p99 20ms", "--slo-p99 5s"}},
}

// readmePorts are the fixed ports of the README's recipes. The test moves each to a free
// port (with readmeShorter, the only changes it makes to what it runs) so that it can run
// beside other tests and a developer's own `make run`.
var readmePorts = []string{"8765", "10389", "1389"}

// readmeBlock is a fenced block marked runnable with a comment on the line before it:
//
//	<!-- test: GROUP -->            a ```sh block, run in order with the group's others
//	<!-- test: GROUP file=NAME -->  any block, written to NAME before the group runs
type readmeBlock struct {
	group, file, body string
	line              int
}

var readmeMarker = regexp.MustCompile(`^<!-- test: ([a-z0-9-]+)(?: file=(\S+))? -->$`)

func readmeBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []readmeBlock
	var cur *readmeBlock
	marked := (*readmeBlock)(nil)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur != nil && strings.HasPrefix(line, "```"):
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.body += line + "\n"
		case marked != nil:
			if !strings.HasPrefix(line, "```") {
				t.Fatalf("README.md:%d: a test marker must be followed by a fenced block", n-1)
			}
			if marked.file == "" && line != "```sh" {
				t.Fatalf("README.md:%d: a runnable block must be ```sh, got %s", n, line)
			}
			cur, marked = marked, nil
			cur.line = n
		default:
			if m := readmeMarker.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
				marked = &readmeBlock{group: m[1], file: m[2]}
			} else if strings.HasPrefix(strings.TrimSpace(line), "<!-- test") {
				t.Fatalf("README.md:%d: malformed test marker %q", n, line)
			}
		}
	}
	if cur != nil || marked != nil {
		t.Fatal("README.md: unterminated test block")
	}
	return blocks
}

// TestReadmeRecipes runs the README's marked blocks as pasted (in a new directory, with
// the real nowconnect binary on PATH and real slapd) so that they cannot rot.
func TestReadmeRecipes(t *testing.T) {
	root := testenv.ModuleRoot(t)
	blocks := readmeBlocks(t, filepath.Join(root, "README.md"))
	groups := map[string][]readmeBlock{}
	var order []string
	for _, b := range blocks {
		if _, ok := groups[b.group]; !ok {
			order = append(order, b.group)
		}
		groups[b.group] = append(groups[b.group], b)
	}
	for g := range readmeExpect {
		if _, ok := groups[g]; !ok {
			t.Errorf("README.md has no runnable group %q", g)
		}
	}
	bin := testenv.Binary(t)
	for _, g := range order {
		t.Run(g, func(t *testing.T) {
			want, ok := readmeExpect[g]
			if !ok {
				t.Fatalf("README.md group %q: add what its output must contain to readmeExpect", g)
			}
			runReadmeGroup(t, bin, groups[g], want, readmeShorter[g])
		})
	}
}

func runReadmeGroup(t *testing.T, bin string, blocks []readmeBlock, want []string, shorter [][2]string) {
	binDir, dir := t.TempDir(), t.TempDir()
	if err := os.Symlink(bin, filepath.Join(binDir, "nowconnect")); err != nil {
		t.Fatal(err)
	}
	moved := map[string]string{}
	for _, p := range readmePorts {
		moved[p] = fmt.Sprint(testenv.FreePort(t))
	}
	applied := make([]bool, len(shorter))
	move := func(s string) string {
		for _, p := range readmePorts {
			s = regexp.MustCompile(`\b`+p+`\b`).ReplaceAllString(s, moved[p])
		}
		for i, r := range shorter {
			applied[i] = applied[i] || strings.Contains(s, r[0])
			s = strings.ReplaceAll(s, r[0], r[1])
		}
		return s
	}
	var script strings.Builder
	for _, b := range blocks {
		if b.file != "" {
			writeText(t, filepath.Join(dir, b.file), move(b.body))
			continue
		}
		fmt.Fprintf(&script, "# README.md:%d\n%s", b.line, move(b.body))
	}
	for i, r := range shorter {
		if !applied[i] {
			t.Fatalf("README.md no longer has %q (update readmeShorter)", r[0])
		}
	}
	// -e: every command of the recipe must succeed, as an operator pasting it would see.
	p := testenv.StartProcess(t, "bash", []string{"-e", "-o", "pipefail", "-c", "cd " + dir + "\n" + script.String()},
		[]string{"PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH")})
	code, err := p.Wait(2 * time.Minute)
	logs := func() string {
		var b strings.Builder
		matches, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		for _, m := range matches {
			data, _ := os.ReadFile(m)
			fmt.Fprintf(&b, "\n--- %s:\n%s", filepath.Base(m), data)
		}
		return b.String()
	}
	if err != nil || code != 0 {
		t.Fatalf("recipe: exit %d, %v\nscript:\n%s\noutput:\n%s%s", code, err, script.String(), p.Output(), logs())
	}
	for _, w := range want {
		if !strings.Contains(p.Output(), w) {
			t.Errorf("recipe output lacks %q:\n%s%s", w, p.Output(), logs())
		}
	}
	// The recipe stops what it started: nothing of it answers any more.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ldapsearch", "-x", "-H", "ldap://127.0.0.1:"+moved["10389"], "-b", "", "-s", "base").CombinedOutput(); err == nil {
		t.Errorf("the gateway still answers after the recipe:\n%s", out)
	}
}
