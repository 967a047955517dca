package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Set by release builds (make release, the image's builder stage):
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=abc1234 -X main.date=2026-01-02T03:04:05Z"
//
// Left empty, they are read from the binary's build info instead: the
// module version for `go install …@v1.2.3`, vcs.revision and vcs.time for
// a build inside a git checkout.
var (
	version string
	commit  string
	date    string
)

// buildVersion is what `nowconnect version` reports.
type buildVersion struct {
	Version, Commit, Date string
	Modified              bool // built from a checkout with uncommitted changes
}

// currentVersion returns the embedded version, filling what -ldflags left
// empty from the build info, and "unknown" (version "dev") for the rest.
func currentVersion() buildVersion {
	bi, _ := debug.ReadBuildInfo()
	return versionFrom(version, commit, date, bi)
}

// versionFrom fills what the linker flags left empty from bi (which may be
// nil) and the rest with "dev" / "unknown".
func versionFrom(version, commit, date string, bi *debug.BuildInfo) buildVersion {
	v := buildVersion{Version: version, Commit: commit, Date: date}
	if bi != nil {
		if v.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if v.Commit == "" {
					v.Commit = s.Value
				}
			case "vcs.time":
				if v.Date == "" {
					v.Date = s.Value
				}
			case "vcs.modified":
				// Only meaningful for a commit that came from the build info.
				v.Modified = commit == "" && s.Value == "true"
			}
		}
	}
	if v.Version == "" {
		v.Version = "dev"
	}
	if v.Commit == "" {
		v.Commit = "unknown"
	}
	if v.Date == "" {
		v.Date = "unknown"
	}
	return v
}

// String is the one line `nowconnect version` and `--version` print:
//
//	nowconnect v1.2.3 (commit abc1234, built 2026-01-02T03:04:05Z, go1.26.8 linux/amd64)
func (v buildVersion) String() string {
	c := v.Commit
	if v.Modified {
		c += "+dirty"
	}
	return fmt.Sprintf("nowconnect %s (commit %s, built %s, %s %s/%s)",
		v.Version, c, v.Date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// runVersion prints the version line. It takes no arguments.
func runVersion(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "nowconnect version: unexpected argument %q\n", args[0])
		return 2
	}
	fmt.Fprintln(stdout, currentVersion())
	return 0
}
