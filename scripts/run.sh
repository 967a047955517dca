#!/usr/bin/env bash
# `make run`: `nowconnect up` (hub and agent in one process) in front of the seeded demo
# directory on LISTEN, or of FORWARD when it is set. The demo needs slapd and ldap-utils:
# they are installed here when missing (the same packages scripts/deps.sh installs for
# `make test`). Ends by exec'ing the binary, so a Ctrl-C goes to it directly; it stops
# everything it started, the demo directory included, and exits 0.
#
#   CONTROL  control port (metrics, health)           default 127.0.0.1:8765
#   LISTEN   where clients connect                    default 127.0.0.1:10389
#   FORWARD  HOST:PORT, or LISTEN_ADDR=HOST:PORT ...  default empty: the demo directory
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONTROL="${CONTROL:-127.0.0.1:8765}"
LISTEN="${LISTEN:-127.0.0.1:10389}"
FORWARD="${FORWARD:-}"

log() { printf 'make run: %s\n' "$*" >&2; }

# have NAME: on PATH, or in the sbin/bin dirs a non-root PATH may lack.
have() {
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

install_ldap() {
	local missing=()
	for bin in slapd ldapsearch ldapadd; do
		have "$bin" || missing+=("$bin")
	done
	[ "${#missing[@]}" -eq 0 ] && return
	log "the demo directory needs slapd and ldap-utils (missing: ${missing[*]}); installing them"
	local sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || { log "not root and no sudo: apt-get install slapd ldap-utils by hand, or set FORWARD=HOST:PORT"; exit 1; }
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get update
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slapd ldap-utils
	# Debian may start a system slapd on :389; the demo runs its own on a free port.
	if command -v service >/dev/null 2>&1; then
		"${sudo[@]}" service slapd stop >/dev/null 2>&1 || true
	fi
	for bin in slapd ldapsearch ldapadd; do
		have "$bin" || { log "$bin still missing after apt-get install"; exit 1; }
	done
}

args=()
if [ -z "$FORWARD" ]; then
	install_ldap
	args+=(--forward "$LISTEN=demo")
else
	for f in $FORWARD; do
		case "$f" in
		*=*) args+=(--forward "$f") ;;
		*) args+=(--forward "$LISTEN=$f") ;;
		esac
	done
	have ldapsearch || log "ldapsearch is not installed (apt-get install ldap-utils): the banner's command needs it"
fi
exec bin/nowconnect up --banner --control "$CONTROL" "${args[@]}"
