#!/usr/bin/env bash
# Prepares what the VM tests need to boot a VM (this machine's kernel has no ipip and no
# wireguard module):
#   - Debian packages qemu-system-x86, kmod, udev (vng loses its output channel without udev);
#   - virtme-ng (pinned) in .venv;
#   - Debian's stock kernel, the version linux-image-amd64 currently depends on, fetched
#     with `apt-get download`, unpacked with `dpkg -x` under .cache/vm-kernel/, its
#     modules tree trimmed to what the tests need (net, fs, lib, crypto, virtio), depmod run.
# Idempotent: a second run only resolves the version and prints the path.
# Prints the kernel image path as the LAST line of stdout; everything else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

VIRTME_NG_VERSION=1.42
APT_PACKAGES=(qemu-system-x86 kmod udev)
CACHE=${ROUTED_VM_CACHE:-$REPO/.cache/vm-kernel}

log() { echo "vm-kernel: $*" >&2; }
die() { echo "vm-kernel: ERROR: $*" >&2; exit 1; }

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq >&2 || die "apt-get update failed"
    apt_updated=1
  fi
}

# 1. Debian packages.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
fi

# 2. virtme-ng, pinned, in the project's virtualenv.
[ -x .venv/bin/python ] || die ".venv missing: run scripts/setup.sh first"
have=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("virtme-ng"))' 2>/dev/null || true)
if [ "$have" != "$VIRTME_NG_VERSION" ]; then
  log "installing virtme-ng==$VIRTME_NG_VERSION into .venv (had: ${have:-none})"
  .venv/bin/pip install -q "virtme-ng==$VIRTME_NG_VERSION" 2> >(grep -v "Location 'file:" >&2) >&2 \
    || die "pip install virtme-ng==$VIRTME_NG_VERSION failed"
fi

# 3. Which kernel: the package the metapackage's candidate depends on (moves with security updates).
resolve_kernel_pkg() {
  local cand
  cand=$(apt-cache policy linux-image-amd64 2>/dev/null | awk '/Candidate:/ {print $2}')
  [ -n "$cand" ] && [ "$cand" != "(none)" ] || return 1
  apt-cache show "linux-image-amd64=$cand" 2>/dev/null \
    | sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*-amd64\).*/\1/p' | head -n1
}
pkg=$(resolve_kernel_pkg || true)
if [ -z "$pkg" ]; then
  apt_update
  pkg=$(resolve_kernel_pkg || true)
fi
if [ -z "$pkg" ]; then
  # No package lists (offline?): fall back to a kernel already unpacked in the cache.
  ready=$(ls -d "$CACHE"/linux-image-*/.ready 2>/dev/null | sort -V | tail -n1 || true)
  [ -n "$ready" ] || die "cannot resolve linux-image-amd64 through apt and no kernel is cached in $CACHE"
  pkg=$(basename "$(dirname "$ready")")
  log "apt cannot resolve linux-image-amd64; using cached $pkg"
fi
kver=${pkg#linux-image-}                 # e.g. 6.1.0-56-amd64
dest=$CACHE/$pkg
root=$dest/root
kimg=$root/boot/vmlinuz-$kver

# .ready holds the trim recipe's version: a cache trimmed by an older recipe is made again.
TRIM_VERSION=2  # 2: drivers/net/wireguard and arch/x86/crypto (its ChaCha/Poly1305/Curve25519) kept
if [ "$(cat "$dest/.ready" 2>/dev/null)" != "$TRIM_VERSION" ] || [ ! -f "$kimg" ]; then
  rm -rf "$dest"
  mkdir -p "$dest/download"
  # apt-get download writes into the current directory; as root it warns about the
  # unsandboxed download: that is harmless.
  log "downloading $pkg"
  if ! (cd "$dest/download" && apt-get download -q "$pkg" >&2 2> >(grep -v "unsandboxed" >&2)); then
    apt_update   # stale lists name a .deb that the mirror no longer has
    (cd "$dest/download" && apt-get download -q "$pkg" >&2 2> >(grep -v "unsandboxed" >&2)) \
      || die "apt-get download $pkg failed"
  fi
  deb=$(ls "$dest"/download/"$pkg"_*.deb 2>/dev/null | head -n1)
  [ -n "$deb" ] || die "no .deb for $pkg after apt-get download"
  log "unpacking $(basename "$deb")"
  dpkg -x "$deb" "$root"
  [ -f "$kimg" ] || die "unpacked package has no $kimg"

  # Debian 12 ships modules under /lib/modules (usrmerge symlinks are not in the .deb).
  moddir=$root/lib/modules/$kver
  [ -d "$moddir" ] || moddir=$root/usr/lib/modules/$kver
  [ -d "$moddir/kernel" ] || die "no modules tree in $root"
  # Trim: keep net (ipip, veth, 9p transport), fs (9p, overlay), lib, crypto, virtio,
  # drivers/net/wireguard and arch/x86/crypto (wireguard depends on its ciphers).
  # The guest only needs these; a smaller tree makes vng's module scan and boot faster.
  log "trimming modules tree"
  find "$moddir/kernel" -mindepth 1 -maxdepth 1 \
    ! -name net ! -name fs ! -name lib ! -name crypto ! -name drivers ! -name arch -exec rm -rf {} +
  if [ -d "$moddir/kernel/arch/x86" ]; then
    find "$moddir/kernel/arch/x86" -mindepth 1 -maxdepth 1 ! -name crypto -exec rm -rf {} +
  fi
  if [ -d "$moddir/kernel/drivers" ]; then
    find "$moddir/kernel/drivers" -mindepth 1 -maxdepth 1 \
      ! -name net ! -name virtio ! -name block ! -name char -exec rm -rf {} +
    # drivers/net: keep only the virtual devices (veth, virtio_net, dummy, vxlan, ...).
    if [ -d "$moddir/kernel/drivers/net" ]; then
      find "$moddir/kernel/drivers/net" -mindepth 1 -maxdepth 1 \
        ! -name 'veth.ko*' ! -name 'virtio_net.ko*' ! -name 'net_failover.ko*' \
        ! -name 'dummy.ko*' ! -name 'vxlan' ! -name 'vxlan.ko*' ! -name 'wireguard' -exec rm -rf {} +
    fi
    # drivers/block and drivers/char: only the virtio ones.
    for sub in block char; do
      [ -d "$moddir/kernel/drivers/$sub" ] || continue
      find "$moddir/kernel/drivers/$sub" -mindepth 1 \
        -type f ! -name 'virtio*' -delete
      find "$moddir/kernel/drivers/$sub" -mindepth 1 -type d -empty -delete
    done
  fi
  rm -rf "$dest/download"
  log "depmod $kver"
  depmod -a -b "$root" "$kver" >&2 || die "depmod failed for $kver"
  [ -f "$moddir/modules.dep" ] || die "depmod wrote no modules.dep"
  # Each module the guest loads, and what it depends on, transitively: a dependency
  # trimmed away would only show in the guest ("Unknown symbol in module").
  check_module() {
    local dep
    modinfo -b "$root" -k "$kver" "$1" >/dev/null 2>&1 || die "$1 module missing after trimming ($2)"
    for dep in $(modinfo -b "$root" -k "$kver" -F depends "$1" | tr ',' ' '); do
      check_module "$dep" "$2"
    done
  }
  for module in ipip wireguard sctp; do check_module "$module" "$module"; done
  echo "$TRIM_VERSION" > "$dest/.ready"
fi

# Old kernels from earlier security updates: keep the cache to one.
for old in "$CACHE"/linux-image-*; do
  [ -d "$old" ] && [ "$old" != "$dest" ] && rm -rf "$old"
done

log "kernel $kver ready"
echo "$kimg"
