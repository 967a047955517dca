#!/usr/bin/env bash
# make image: builds the container image (Dockerfile) with podman or docker and tags it.
#   ENGINE      podman or docker (default: podman if installed, else docker)
#   IMAGE       tag (default nowconnect:latest)
#   IMAGE_FROM  source | binary | auto (default auto: source when the Go builder image is
#               present or can be pulled, else binary — a machine without a registry)
#   GO_IMAGE    builder image (default docker.io/library/golang:1.26-bookworm)
#   VERSION, COMMIT, DATE  embedded in the binary and the OCI labels (scripts/buildinfo.sh)
# The binary path builds ./cmd/nowconnect here (static, linux, this machine's GOARCH) into
# dist/image/ with this machine's CA bundle, and builds the Dockerfile's from-binary target.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/buildinfo.sh
. scripts/buildinfo.sh

IMAGE="${IMAGE:-nowconnect:latest}"
IMAGE_FROM="${IMAGE_FROM:-auto}"
GO_IMAGE="${GO_IMAGE:-docker.io/library/golang:1.26-bookworm}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

log() { printf 'image: %s\n' "$*"; }

if [ -z "${ENGINE:-}" ]; then
	if command -v podman >/dev/null 2>&1; then
		ENGINE=podman
	elif command -v docker >/dev/null 2>&1; then
		ENGINE=docker
	else
		log "neither podman nor docker is installed (bash scripts/deps.sh installs podman)" >&2
		exit 1
	fi
fi
case "$ENGINE" in
podman) format=(--format docker) ;; # keeps HEALTHCHECK; the OCI format drops it
docker) format=() ;;
*) log "ENGINE=$ENGINE: want podman or docker" >&2; exit 2 ;;
esac

case "$IMAGE_FROM" in
source | binary) ;;
auto)
	if "$ENGINE" image inspect "$GO_IMAGE" >/dev/null 2>&1 || "$ENGINE" pull "$GO_IMAGE" >/dev/null 2>&1; then
		IMAGE_FROM=source
	else
		log "cannot pull $GO_IMAGE (no registry?): building from a local binary"
		IMAGE_FROM=binary
	fi
	;;
*) log "IMAGE_FROM=$IMAGE_FROM: want source, binary or auto" >&2; exit 2 ;;
esac

args=("${format[@]}" -t "$IMAGE" -f Dockerfile
	--build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT" --build-arg "DATE=$DATE"
	--build-arg "GO_IMAGE=$GO_IMAGE")

if [ "$IMAGE_FROM" = binary ]; then
	[ -r "$CA_BUNDLE" ] || { log "CA bundle $CA_BUNDLE not readable (apt-get install ca-certificates)" >&2; exit 1; }
	mkdir -p dist/image
	log "go build ./cmd/nowconnect → dist/image/nowconnect (linux/$(go env GOARCH), $VERSION)"
	CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "$LDFLAGS" -o dist/image/nowconnect ./cmd/nowconnect
	cp "$CA_BUNDLE" dist/image/ca-certificates.crt
	args+=(--target from-binary)
	# Nothing to cache in a few COPY steps: keep no intermediate images behind.
	[ "$ENGINE" = podman ] && args+=(--layers=false)
else
	args+=(--target from-source)
fi

log "$ENGINE build ${args[*]} ."
"$ENGINE" build "${args[@]}" .
log "built $IMAGE ($IMAGE_FROM; version $VERSION, commit $COMMIT)"
