#!/usr/bin/env bash
# Installs everything the tests need, idempotently (a second run only checks):
#   - Debian packages: slapd + ldap-utils (the LDAP target and client), redis-server,
#     prometheus (for promtool); podman, docker-compose, systemd, haproxy, openssl, make
#     (the shipping tests of deploy/);
#   - pinned Go tools in $(go env GOPATH)/bin: staticcheck, benchstat.
# Versions come from the environment (the Makefile exports its pins) with the same defaults.
set -euo pipefail

STATICCHECK_VERSION="${STATICCHECK_VERSION:-v0.8.2}" # = staticcheck 2026.2.2, supports Go 1.26
BENCHSTAT_VERSION="${BENCHSTAT_VERSION:-v0.0.0-20260908200009-22c9c6c9d4da}" # golang.org/x/perf

log() { printf 'deps: %s\n' "$*"; }

# have NAME: on PATH, or in the sbin/bin dirs a non-root PATH may lack.
have() {
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

# --- Debian packages -----------------------------------------------------------------
missing=()
for bin in slapd ldapsearch ldapadd redis-server promtool; do
	have "$bin" || missing+=("$bin")
done

if [ "${#missing[@]}" -gt 0 ]; then
	log "missing: ${missing[*]}; installing slapd ldap-utils redis-server prometheus"
	if [ "$(id -u)" -eq 0 ]; then
		SUDO=()
	elif command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo)
	else
		log "not root and no sudo: install slapd ldap-utils redis-server prometheus by hand" >&2
		exit 1
	fi
	"${SUDO[@]}" apt-get update
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		slapd ldap-utils redis-server prometheus
	# Debian may start system daemons on :389, :6379 and :9090. The tests never use them
	# (they run their own servers on random ports); stop them so they hold nothing.
	if command -v service >/dev/null 2>&1; then
		for svc in slapd redis-server prometheus; do
			"${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
		done
	fi
	for bin in slapd ldapsearch ldapadd redis-server promtool; do
		have "$bin" || { log "$bin still missing after apt-get install" >&2; exit 1; }
	done
else
	log "slapd, ldap-utils, redis-server, promtool: present"
fi

# --- Shipping tools (go test ./deploy: image, compose, systemd units, HA balancer) ---------
# podman builds the image (no daemon; FROM scratch needs no registry), docker-compose checks
# the compose files, systemd provides systemd-analyze and systemd-sysusers, haproxy checks
# the HA balancer's config, openssl makes the mesh certificates, make runs `make release`.
ship_missing=()
for pair in podman:podman docker-compose:docker-compose systemd-analyze:systemd \
	systemd-sysusers:systemd haproxy:haproxy openssl:openssl make:make; do
	have "${pair%%:*}" || ship_missing+=("${pair#*:}")
done
if [ "${#ship_missing[@]}" -gt 0 ]; then
	mapfile -t ship_missing < <(printf '%s\n' "${ship_missing[@]}" | sort -u)
	log "missing: ${ship_missing[*]}; installing them"
	if [ "$(id -u)" -eq 0 ]; then
		SUDO=()
	elif command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo)
	else
		log "not root and no sudo: install ${ship_missing[*]} by hand" >&2
		exit 1
	fi
	"${SUDO[@]}" apt-get update
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${ship_missing[@]}"
	# Debian starts haproxy on install; the tests run their own checks and need none.
	if command -v service >/dev/null 2>&1 && [[ " ${ship_missing[*]} " == *" haproxy "* ]]; then
		"${SUDO[@]}" service haproxy stop >/dev/null 2>&1 || true
	fi
else
	log "podman, docker-compose, systemd-analyze, haproxy, openssl, make: present"
fi

# --- Go tools ------------------------------------------------------------------------
command -v go >/dev/null 2>&1 || { log "go not found on PATH (Go 1.26 lives in /usr/local/go/bin)" >&2; exit 1; }
GOBIN_DIR="$(go env GOPATH)/bin"

# ensure_tool BINARY MODULE/PKG VERSION MODULE_PATH: go install unless the binary exists
# and was built from exactly that module version (read from its build info).
ensure_tool() {
	local bin="$GOBIN_DIR/$1" pkg="$2" version="$3" module="$4" have_version=""
	if [ -x "$bin" ]; then
		have_version="$(go version -m "$bin" 2>/dev/null | awk -v m="$module" '$1 == "mod" && $2 == m { print $3 }')"
	fi
	if [ "$have_version" = "$version" ]; then
		log "$1 $version: present"
		return
	fi
	log "installing $pkg@$version"
	GOBIN="$GOBIN_DIR" go install "$pkg@$version"
}

ensure_tool staticcheck honnef.co/go/tools/cmd/staticcheck "$STATICCHECK_VERSION" honnef.co/go/tools
ensure_tool benchstat golang.org/x/perf/cmd/benchstat "$BENCHSTAT_VERSION" golang.org/x/perf
