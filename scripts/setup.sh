#!/usr/bin/env bash
# Installs everything routed needs on a fresh Debian machine, idempotently:
# the Debian packages (real etcd, BGP daemons, CNI reference plugins, container
# runtimes) and a virtualenv at .venv with the project and its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev
  etcd-server etcd-client
  iproute2 iptables ipset nftables iputils-ping tcpdump procps psmisc openssl
  bird2 frr gobgpd
  containernetworking-plugins podman runc containerd
  golang-go golang-github-appc-cni-dev busybox-static file debootstrap socat
  wireguard-go wireguard-tools iperf3
  # `routed lab status --html` is checked in a real browser: Chromium's headless shell
  # (no GUI libraries) and a font so the screenshot shows text.
  chromium-headless-shell fonts-dejavu-core
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian daemons must not run as system services: tests and the lab start their own.
for svc in etcd bird frr gobgpd containerd; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# Debian 12's python3 (3.11, what pyproject.toml requires) for the venv.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
stamp=.venv/.routed-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the project into .venv"
  # This machine's pip config names local indexes that may be absent; those warnings are noise.
  .venv/bin/pip install -q -e '.[test]' 2> >(grep -v "Location 'file:" >&2)
  echo "$want" > "$stamp"
fi

# The CNI plugin (static Go, both architectures) into build/cni: a no-op when unchanged.
bash scripts/build-cni.sh

# The pinned Kubernetes components (tools/kube/go.mod) the control-plane and kubelet tests
# run: built once from the Go module proxy into a cache outside the repository.
bash scripts/build-kube.sh
