#!/usr/bin/env bash
# The whole test gate (what `make test` and CI run): install dependencies, then gofmt,
# go vet, staticcheck, and the race-enabled test suite against real slapd and redis.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

banner() { printf '\n==== %s ====\n' "$*"; }

banner "deps (scripts/deps.sh)"
bash scripts/deps.sh

banner "gofmt -l ."
unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then
	echo "these files need gofmt -w:" >&2
	echo "$unformatted" >&2
	exit 1
fi
echo "ok"

banner "go vet ./..."
go vet ./...
echo "ok"

banner "staticcheck ./..."
"$(go env GOPATH)/bin/staticcheck" ./...
echo "ok"

banner "cross-compile: windows/amd64, darwin/arm64 (scripts/crossbuild.sh)"
bash scripts/crossbuild.sh

# Allocation tests measure the steady state; the race detector allocates on
# its own (and sync.Pool drops items at random under it), so they skip
# themselves in the -race pass below and run here first, without -race.
banner "go test -count=1 -run 'Alloc' ./... (allocation proofs, no -race)"
go test -count=1 -run 'Alloc' ./...

banner "go test -race -count=1 -timeout 20m ./..."
go test -race -count=1 -timeout 20m ./...
