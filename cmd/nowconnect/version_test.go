package main

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"
)

// TestVersionFrom: linker flags win; what they leave empty comes from the build info (module
// version, vcs.revision, vcs.time, vcs.modified); the rest is "dev" / "unknown".
func TestVersionFrom(t *testing.T) {
	vcs := &debug.BuildInfo{
		Main: debug.Module{Path: "github.com/nowconnect/nowconnect", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "feedface"},
			{Key: "vcs.time", Value: "2026-03-04T05:06:07Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	installed := &debug.BuildInfo{Main: debug.Module{Path: "github.com/nowconnect/nowconnect", Version: "v1.4.0"}}
	for _, tc := range []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  buildVersion
	}{
		{"ldflags", "v1.2.3", "abc", "2026-01-01T00:00:00Z", vcs, buildVersion{"v1.2.3", "abc", "2026-01-01T00:00:00Z", false}},
		{"vcs build info", "", "", "", vcs, buildVersion{"dev", "feedface", "2026-03-04T05:06:07Z", true}},
		{"go install @version", "", "", "", installed, buildVersion{"v1.4.0", "unknown", "unknown", false}},
		{"version flag only", "v2.0.0", "", "", vcs, buildVersion{"v2.0.0", "feedface", "2026-03-04T05:06:07Z", true}},
		{"no build info", "", "", "", nil, buildVersion{"dev", "unknown", "unknown", false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := versionFrom(tc.version, tc.commit, tc.date, tc.bi); got != tc.want {
				t.Fatalf("versionFrom = %+v, want %+v", got, tc.want)
			}
		})
	}
	s := buildVersion{"v1.2.3", "abc", "2026-01-01T00:00:00Z", true}.String()
	for _, want := range []string{"nowconnect v1.2.3", "commit abc+dirty", "built 2026-01-01T00:00:00Z"} {
		if !strings.Contains(s, want) {
			t.Fatalf("String() = %q, want %q in it", s, want)
		}
	}
}

// TestVersionCommand: `version` and `--version` print the same line; extra arguments are a
// usage error (exit 2).
func TestVersionCommand(t *testing.T) {
	var out1, out2, errb bytes.Buffer
	if code := run([]string{"version"}, &out1, &errb); code != 0 {
		t.Fatalf("version: exit %d: %s", code, errb.String())
	}
	if code := run([]string{"--version"}, &out2, &errb); code != 0 {
		t.Fatalf("--version: exit %d: %s", code, errb.String())
	}
	if out1.String() != out2.String() || !strings.HasPrefix(out1.String(), "nowconnect ") || !strings.Contains(out1.String(), "commit ") {
		t.Fatalf("version %q, --version %q: want the same version line", out1.String(), out2.String())
	}
	errb.Reset()
	if code := run([]string{"version", "extra"}, &out1, &errb); code != 2 || !strings.Contains(errb.String(), `"extra"`) {
		t.Fatalf("version extra: exit %d, stderr %q: want exit 2 naming the argument", code, errb.String())
	}
}
