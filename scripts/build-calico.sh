#!/usr/bin/env bash
# Builds Calico's CNI plugin (the `calico` binary; calico-ipam is the same binary under
# that name) from the Go module proxy, at a pinned version, into a cache outside the
# repository: $ROUTED_CALICO_CACHE or ~/.cache/routed/calico-<version>/. bench/calico_bench.py
# calls it to compare routed with Calico on one etcd (issue 16).
# A second run builds nothing: it finds the binary, or the recorded reason why the build
# failed (delete that directory to try again).
#   scripts/build-calico.sh               build (or report the cached result); exit 1 if not built
#   scripts/build-calico.sh --print-dir
set -euo pipefail
self=$(realpath "$0")

# github.com/projectcalico/calico has no usable release versions on the proxy: its v3.x
# tags are not semantic import versions of a module without /v3, so the proxy serves only
# pseudo-versions; this is the one it resolves as latest (a commit of 2025-08-13).
MODULE=github.com/projectcalico/calico
VERSION=v1.11.0-cni-plugin.0.20250813170300-a0db560f0520
out=${ROUTED_CALICO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/routed/calico-$VERSION}
if [ "${1:-}" = "--print-dir" ]; then echo "$out"; exit 0; fi

GO=${GO:-/usr/local/go/bin/go}
command -v "$GO" >/dev/null || GO=go
stamp=$(cat "$self" | sha256sum | cut -c1-16)
mkdir -p "$out"

if [ -x "$out/calico" ] && [ "$(cat "$out/calico.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
if [ "$(cat "$out/failed.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "build-calico: not built (cached result; delete $out to try again): $(cat "$out/failed")" >&2
  exit 1
fi

fail() {
  rm -rf "$out/src"
  echo "$1" > "$out/failed"
  echo "$stamp" > "$out/failed.stamp"
  echo "build-calico: not built: $1" >&2
  exit 1
}

echo "build-calico: building $MODULE cni-plugin $VERSION into $out (first build takes minutes)"
log="$out/build.log"
dir=$(cd /tmp && "$GO" mod download -json "$MODULE@$VERSION" 2>"$log" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') \
  || fail "go mod download $MODULE@$VERSION failed: $(tail -n 3 "$log" | tr '\n' ' ')"
[ -n "$dir" ] || fail "go mod download $MODULE@$VERSION failed: $(tail -n 3 "$log" | tr '\n' ' ')"

src="$out/src"
rm -rf "$src"
cp -r "$dir" "$src"
chmod -R u+w "$src"
# The module's go.mod replaces github.com/projectcalico/api with ./api, a nested module that
# a module zip leaves out; the proxy must then serve that module itself.
if [ ! -d "$src/api" ]; then
  api_version="v0.0.0-${VERSION##*.0.}"
  if ! (cd /tmp && "$GO" mod download -json "github.com/projectcalico/api@$api_version" >"$log.api" 2>&1); then
    fail "$MODULE@$VERSION (go.mod: replace github.com/projectcalico/api => ./api) needs the nested module ./api, which the module zip leaves out; github.com/projectcalico/api@$api_version (same commit) from the proxy: $(grep -o '"Error": "[^\\]*' "$log.api" | head -1 | cut -c11-)"
  fi
  api_dir=$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' "$log.api")
  cp -r "$api_dir" "$src/api"
  chmod -R u+w "$src/api"
fi
start=$(date +%s)
if ! (cd "$src" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$out/calico.tmp" ./cni-plugin/cmd/calico) >"$log" 2>&1; then
  fail "go build ./cni-plugin/cmd/calico at $MODULE@$VERSION failed: $(grep -v '^go: downloading' "$log" | tail -n 3 | tr '\n' ' ')"
fi
mv "$out/calico.tmp" "$out/calico"
ln -sf calico "$out/calico-ipam"
echo "$stamp" > "$out/calico.stamp"
rm -rf "$src"
echo "build-calico: built in $(( $(date +%s) - start ))s"
