#!/usr/bin/env bash
# make release: versioned static binaries of nowconnect and their SHA256SUMS in $DIST.
#   DIST     output folder (default dist)
#   TARGETS  GOOS/GOARCH pairs (default linux/amd64 linux/arm64 windows/amd64 darwin/arm64)
#   VERSION, COMMIT, DATE  embedded in the binaries (scripts/buildinfo.sh has the defaults)
# Files: nowconnect-$VERSION-$GOOS-$GOARCH (.exe on Windows). Built with CGO_ENABLED=0 and
# -trimpath, so they depend on no C library and carry no local paths. Earlier release files
# in $DIST are removed first, so SHA256SUMS lists exactly this release.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/buildinfo.sh
. scripts/buildinfo.sh

DIST="${DIST:-dist}"
TARGETS="${TARGETS:-linux/amd64 linux/arm64 windows/amd64 darwin/arm64}"

mkdir -p "$DIST"
rm -f "$DIST"/nowconnect-* "$DIST/SHA256SUMS"

names=()
for target in $TARGETS; do
	goos="${target%/*}" goarch="${target#*/}"
	if [ -z "$goos" ] || [ -z "$goarch" ] || [ "$goos" = "$target" ]; then
		echo "release: TARGETS entry \"$target\": want GOOS/GOARCH" >&2
		exit 2
	fi
	name="nowconnect-$VERSION-$goos-$goarch"
	[ "$goos" = windows ] && name="$name.exe"
	echo "release: $name"
	CGO_ENABLED=0 GOOS="$goos" GOARCH="$goarch" \
		go build -trimpath -ldflags "$LDFLAGS" -o "$DIST/$name" ./cmd/nowconnect
	names+=("$name")
done

(cd "$DIST" && sha256sum "${names[@]}" > SHA256SUMS)
echo "release: $DIST/SHA256SUMS (version $VERSION, commit $COMMIT, built $DATE)"
