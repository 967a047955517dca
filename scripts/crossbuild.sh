#!/usr/bin/env bash
# Cross-compiles ./cmd/nowconnect for the premise's other platforms (issue 11 item 7) and vets
# the code that goes into it there. The premise agent runs next to Active Directory, often on
# Windows; the hub needs Linux (gnet/epoll) and answers "the cloud hub needs Linux" elsewhere.
#
#   CROSS_TARGETS="windows/amd64 darwin/arm64" (default) — GOOS/GOARCH pairs
#
# Built like scripts/release.sh builds (CGO_ENABLED=0, -trimpath), so the two share the build
# cache. go vet runs on each linked package's own files for that GOOS (go list's GoFiles, as an ad-hoc
# package), not on its _test.go files: several tests use Linux or Unix sockets directly, and
# the Linux pass of scripts/test.sh vets every test file already.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

targets="${CROSS_TARGETS:-windows/amd64 darwin/arm64}"
module="$(go list -m)"

for target in $targets; do
	goos="${target%/*}" goarch="${target#*/}"
	if [ -z "$goos" ] || [ -z "$goarch" ] || [ "$goos" = "$target" ]; then
		echo "crossbuild: CROSS_TARGETS entry \"$target\": want GOOS/GOARCH" >&2
		exit 2
	fi
	export GOOS="$goos" GOARCH="$goarch" CGO_ENABLED=0
	echo "crossbuild: $target: go build ./cmd/nowconnect"
	go build -trimpath -o /dev/null ./cmd/nowconnect
	pkgs="$(go list -deps -f '{{if and .Module .Module.Main}}{{.ImportPath}}{{end}}' ./cmd/nowconnect)"
	for pkg in $pkgs; do
		mapfile -t files < <(go list -f '{{range .GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}' "$pkg")
		go vet "${files[@]}" || { echo "crossbuild: $target: go vet $pkg failed" >&2; exit 1; }
	done
	echo "crossbuild: $target: go vet ok (${pkgs//$module\//})" | tr '\n' ' '
	echo
done
