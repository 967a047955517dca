# NowConnect developer targets. `make test` is the whole gate (CI runs it via .ci/run):
# it installs slapd, ldap-utils, redis-server, prometheus and the pinned Go tools first.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

GO ?= go

# `make run` serves the seeded demo directory on LISTEN; FORWARD=HOST:PORT (or
# LISTEN_ADDR=HOST:PORT, several separated by spaces) tunnels to that instead, e.g.
# `make run FORWARD=ldap.corp.example:389`. CONTROL is the control port (metrics, health).
CONTROL ?= 127.0.0.1:8765
LISTEN ?= 127.0.0.1:10389
FORWARD ?=
# `make install` copies bin/nowconnect to $(DESTDIR)$(PREFIX)/bin.
PREFIX ?= /usr/local

# Pinned Go tools (scripts/deps.sh has the same defaults and reads these from the env).
STATICCHECK_VERSION ?= v0.8.2
BENCHSTAT_VERSION ?= v0.0.0-20260908200009-22c9c6c9d4da
export STATICCHECK_VERSION BENCHSTAT_VERSION

# How long `make fuzz` runs each Fuzz target (FUZZPKGS: every parser of bytes from the wire
# or of files, and the flow-control rules).
FUZZTIME ?= 30s
FUZZPKGS ?= ./codec/... ./internal/auth ./internal/proxyproto ./internal/resp ./internal/confdoc ./internal/flow

GOBIN_DIR = $(shell $(GO) env GOPATH)/bin
STATICCHECK = $(GOBIN_DIR)/staticcheck

.PHONY: run build install test deps lint fuzz clean bench bench-smoke release image

# Builds the binary and execs it (scripts/run.sh), so Ctrl-C reaches `nowconnect up`
# itself, which stops everything it started and exits 0: make reports no error.
run: build
	@CONTROL='$(CONTROL)' LISTEN='$(LISTEN)' FORWARD='$(FORWARD)' exec bash scripts/run.sh

install: build
	install -D -m 0755 bin/nowconnect $(DESTDIR)$(PREFIX)/bin/nowconnect

build:
	$(GO) build -o bin/nowconnect ./cmd/nowconnect

test:
	bash scripts/test.sh

deps:
	bash scripts/deps.sh

lint:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	@[ -x "$(STATICCHECK)" ] || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(STATICCHECK) ./...

# Runs every Fuzz target of the FUZZPKGS packages for FUZZTIME each (-fuzz takes one
# package and one target at a time). New crashers land in that package's testdata/fuzz/.
fuzz:
	@found=0; \
	for pkg in $$($(GO) list $(FUZZPKGS)); do \
		list="$$($(GO) test -list '^Fuzz' "$$pkg")"; \
		for target in $$(grep '^Fuzz' <<<"$$list" || true); do \
			found=1; \
			echo "==== $$pkg $$target ($(FUZZTIME)) ===="; \
			$(GO) test "$$pkg" -run='^$$' -fuzz="^$$target$$" -fuzztime=$(FUZZTIME); \
		done; \
	done; \
	if [ "$$found" = 0 ]; then echo "no Fuzz targets in $(FUZZPKGS)"; exit 1; fi

# Release builds (scripts/release.sh): static (CGO_ENABLED=0), -trimpath, version, commit and
# date embedded, for linux/amd64 linux/arm64 windows/amd64 darwin/arm64, into
# dist/nowconnect-VERSION-OS-ARCH[.exe] with dist/SHA256SUMS. VERSION= COMMIT= DATE= DIST=
# TARGETS= override the defaults (git describe, git rev-parse HEAD, now).
release:
	bash scripts/release.sh

# The container image (Dockerfile) with podman or docker, tagged nowconnect:latest; built
# from a local binary when the Go builder image cannot be pulled (no registry). ENGINE=
# IMAGE= IMAGE_FROM=source|binary|auto override (scripts/image.sh).
image:
	bash scripts/image.sh

clean:
	rm -rf bin dist
	$(GO) clean -testcache

# The CI/CD health gate of seed 000 (scripts/gate.sh): builds bin/nowconnect, starts slapd,
# `nowconnect cloud` and `nowconnect premise` as real processes with a generated token, runs
# `nowconnect check` with a hub and a pingpong check (an LDAP search through the hub; the
# c2a and a2c counters must rise) and prints the result. The script exits with the check's
# code (0/1/2/3); make fails on any other than 0. `make pingpong` is its old name.
# GATE_FLAGS go to the gate, e.g. `make gate GATE_FLAGS="--format table"`.
GATE_FLAGS ?=
.PHONY: gate pingpong
gate:
	bash scripts/gate.sh $(GATE_FLAGS)

pingpong: gate

# Benchmarks (bench/): the gateway against a direct loopback connection, in the same run.
# `make bench` (< 5 min) writes bench/out/<timestamp>.json and regenerates BENCHMARKS.md and
# bench/charts/*.svg; `make bench-smoke` runs every scenario at tiny sizes in seconds and asserts
# nothing about the figures (CI runs the same via `go test ./bench`).
bench:
	$(GO) run ./bench/runner

bench-smoke:
	$(GO) run ./bench/runner -smoke
