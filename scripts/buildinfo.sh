# Sourced by scripts/release.sh and scripts/image.sh: the version, commit and build date that
# go into binaries (-ldflags -X main.…) and image labels. Each may be set in the environment.
#   VERSION  default: git describe --tags --always --dirty, else "dev"
#   COMMIT   default: git rev-parse HEAD, else "unknown"
#   DATE     default: SOURCE_DATE_EPOCH as RFC 3339 UTC when set, else now
VERSION="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
COMMIT="${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
if [ -z "${DATE:-}" ]; then
	if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
		DATE="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
	else
		DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	fi
fi
for v in "$VERSION" "$COMMIT" "$DATE"; do
	case "$v" in
	*[[:space:]\'\"]*) echo "buildinfo: \"$v\": VERSION, COMMIT and DATE may not hold spaces or quotes" >&2; exit 2 ;;
	esac
done
LDFLAGS="-s -w -X main.version=$VERSION -X main.commit=$COMMIT -X main.date=$DATE"
export VERSION COMMIT DATE LDFLAGS
