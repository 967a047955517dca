# syntax=docker/dockerfile:1
#
# The NowConnect image (a Containerfile: podman and docker build it alike): the static
# nowconnect binary on scratch, with CA certificates (for wss:// hubs, JWKS and PDP over
# https) and an /etc/passwd naming the non-root user 65532 it runs as. No shell, no libc.
#
# Two targets make the same image:
#
#   from-source (the default, last stage): compiles in the Go builder image.
#     podman build --format docker -t nowconnect:latest \
#       --build-arg VERSION=v1.2.3 --build-arg COMMIT=$(git rev-parse HEAD) .
#
#   from-binary: takes a binary built outside, for machines that cannot pull the builder
#   image (no registry). The binary and the CA bundle come from the build context:
#     CGO_ENABLED=0 GOOS=linux go build -trimpath -o dist/image/nowconnect ./cmd/nowconnect
#     cp /etc/ssl/certs/ca-certificates.crt dist/image/
#     podman build --format docker --target from-binary -t nowconnect:latest .
#
# `make image` (scripts/image.sh) does one or the other with podman or docker. podman needs
# --format docker to keep the HEALTHCHECK (the OCI image format has none).
#
# Run: the entrypoint is the binary; the command picks the role.
#   hub:   (default) cloud, reading NC_CONFIG=/app/config/cloud.yaml; control port 8765
#   agent: premise, configured by NC_* variables (NC_CLOUD_URL, NC_AGENT_ID, NC_TOKEN_FILE,
#          NC_CONNECTORS)

ARG GO_IMAGE=docker.io/library/golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ARG DATE=unknown
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=linux GOARCH=${TARGETARCH:-$(go env GOARCH)} \
      go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT} -X main.date=${DATE}" \
      -o /out/nowconnect ./cmd/nowconnect \
 && cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

# base: everything but the binary, the CA bundle and the labels, shared by both targets.
FROM scratch AS base
COPY deploy/image/passwd deploy/image/group /etc/
ENV NC_CONFIG=/app/config/cloud.yaml
USER 65532:65532
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/nowconnect", "health", "--url", "http://127.0.0.1:8765/healthz"]
ENTRYPOINT ["/nowconnect"]
CMD ["cloud"]

FROM base AS from-binary
ARG BINARY=dist/image/nowconnect
ARG CA_CERTS=dist/image/ca-certificates.crt
COPY ${CA_CERTS} /etc/ssl/certs/ca-certificates.crt
COPY ${BINARY} /nowconnect
# The labels come after the binary in both targets: a builder that caches a LABEL step
# without its ARG values (buildah 1.28 does) must re-run them once the binary changes.
ARG VERSION=dev
ARG COMMIT=unknown
ARG DATE=unknown
LABEL org.opencontainers.image.title="nowconnect" \
      org.opencontainers.image.description="NowConnect gateway: cloud hub and premise agent of a TCP tunnel (LDAP first)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.created="${DATE}"

FROM base AS from-source
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/nowconnect /nowconnect
ARG VERSION=dev
ARG COMMIT=unknown
ARG DATE=unknown
LABEL org.opencontainers.image.title="nowconnect" \
      org.opencontainers.image.description="NowConnect gateway: cloud hub and premise agent of a TCP tunnel (LDAP first)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.created="${DATE}"
