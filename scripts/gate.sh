#!/usr/bin/env bash
# The CI/CD health gate of the operational runbook (seed 000), against real processes:
# builds bin/nowconnect, starts a seeded slapd, `nowconnect cloud` and `nowconnect premise`
# (fresh secret and token), runs `nowconnect check` with a hub and a pingpong check, prints
# its result on stdout and exits with its code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
# (4: the gate could not set up). Progress and dependency installation go to stderr.
# Arguments go to the gate, e.g. `scripts/gate.sh --format table` (see internal/gate).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh >&2 # slapd (and the other test dependencies) when missing
go build -o bin/nowconnect ./cmd/nowconnect
go build -o bin/nowconnect-gate ./internal/gate
exec bin/nowconnect-gate --bin bin/nowconnect "$@"
