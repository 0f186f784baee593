#!/usr/bin/env bash
# Builds the pinned Kubernetes components (tools/kube/go.mod: kube-apiserver, kubelet,
# kube-scheduler, kube-controller-manager, kubectl, crictl) from the Go module proxy into
# a cache outside the repository: $ROUTED_KUBE_CACHE or ~/.cache/routed/kube-<version>/.
# A second run with the same go.mod/go.sum builds nothing.
#   scripts/build-kube.sh            all components
#   scripts/build-kube.sh kubectl    only those named
#   scripts/build-kube.sh --print-dir
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/../tools/kube"

version=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' go.mod)
out=${ROUTED_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/routed/kube-$version}
if [ "${1:-}" = "--print-dir" ]; then echo "$out"; exit 0; fi

declare -A PKG=(
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [crictl]=sigs.k8s.io/cri-tools/cmd/crictl
)
# The API server first: the control-plane tests need only it.
ORDER=(kube-apiserver kubectl kubelet kube-scheduler kube-controller-manager crictl)
want=("$@"); [ ${#want[@]} -gt 0 ] || want=("${ORDER[@]}")

GO=${GO:-/usr/local/go/bin/go}
command -v "$GO" >/dev/null || GO=go
# A binary is current when its stamp names the same go.mod, go.sum and build flags.
stamp=$(cat go.mod go.sum "$self" | sha256sum | cut -c1-16)

# Without these the binaries report v0.0.0-master, which kubectl and kubelet warn about.
minor=$(echo "$version" | cut -d. -f2)
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
ldflags+=" -X sigs.k8s.io/cri-tools/pkg/version.Version=$(awk '$1 == "sigs.k8s.io/cri-tools" { print $2 }' go.mod)"

mkdir -p "$out"
for name in "${want[@]}"; do
  pkg=${PKG[$name]:-}
  [ -n "$pkg" ] || { echo "build-kube: unknown component '$name' (one of: ${ORDER[*]})" >&2; exit 2; }
  if [ -x "$out/$name" ] && [ "$(cat "$out/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    continue
  fi
  echo "build-kube: building $name $version into $out (first build takes minutes)"
  start=$(date +%s)
  CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg"
  mv "$out/$name.tmp" "$out/$name"
  echo "$stamp" > "$out/$name.stamp"
  echo "build-kube: $name built in $(( $(date +%s) - start ))s"
done
