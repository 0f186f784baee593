#!/usr/bin/env bash
# Builds the CNI plugin (cni/goplugin, Go standard library only) for linux/amd64 and
# linux/arm64 into build/cni/routed-linux-<arch>, which `routed install-cni` installs and
# the Dockerfile copies. Reproducible: a pinned Go toolchain, static (CGO_ENABLED=0), no
# paths, build ID or VCS stamp in the binary. Builds nothing when the sources' hash is
# unchanged since the last build (build/cni/.sources.sha256).
#
#   scripts/build-cni.sh          build (what scripts/setup.sh runs)
#   scripts/build-cni.sh test     the plugin's Go unit tests, same toolchain
set -euo pipefail
cd "$(dirname "$0")/.."

GO_VERSION=go1.26.8  # the machine's /usr/local/go; another local Go >= 1.21 fetches this one
SRC=cni/goplugin
OUT=build/cni
ARCHES=(amd64 arm64)
stamp="$OUT/.sources.sha256"

# Sets $go and the environment of a pinned, static, reproducible build.
pinned_go() {
  local candidate got
  go=""
  for candidate in /usr/local/go/bin/go "$(command -v go || true)"; do
    [ -x "$candidate" ] && { go=$candidate; break; }
  done
  [ -n "$go" ] || { echo "build-cni: no Go toolchain (expected $GO_VERSION at /usr/local/go)" >&2; return 1; }
  export GOTOOLCHAIN=$GO_VERSION GOFLAGS="" CGO_ENABLED=0 GOOS=linux GOAMD64=v1 GOARM64=v8.0
  export GOCACHE="$PWD/.cache/go-build"
  got=$("$go" env GOVERSION 2>/dev/null || true)
  if [ "$got" != "$GO_VERSION" ]; then
    echo "build-cni: $go is ${got:-too old to pin a toolchain}; need $GO_VERSION (or any Go >= 1.21 to fetch it)" >&2
    return 1
  fi
}

if [ "${1:-}" = test ]; then
  pinned_go
  cd "$SRC" && exec "$go" test -count=1 .
fi

want=$( { echo "$GO_VERSION ${ARCHES[*]}"; cat "$0"; find "$SRC" -type f \( -name '*.go' -o -name go.mod \) \
          ! -name '*_test.go' | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1)
have_all=yes
for arch in "${ARCHES[@]}"; do [ -x "$OUT/routed-linux-$arch" ] || have_all=no; done
if [ "$have_all" = yes ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

pinned_go
echo "build-cni: building $SRC with $GO_VERSION for ${ARCHES[*]}"
mkdir -p "$OUT"
rm -f "$stamp"
for arch in "${ARCHES[@]}"; do
  tmp="$OUT/.routed-linux-$arch.tmp"
  (cd "$SRC" && GOARCH=$arch "$go" build -trimpath -buildvcs=false -ldflags '-s -w -buildid=' \
      -o "$OLDPWD/$tmp" .)
  # Static means no program interpreter: it must run in an empty root filesystem.
  kind=$(file -b "$tmp")
  case "$kind" in
    *"statically linked"*) ;;
    *) echo "build-cni: $tmp is not a static executable: $kind" >&2; exit 1 ;;
  esac
  mv -f "$tmp" "$OUT/routed-linux-$arch"
done
echo "$want" > "$stamp"
(cd "$OUT" && sha256sum routed-linux-*)
