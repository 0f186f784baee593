#!/usr/bin/env bash
# Builds routed's container images on a machine that reaches no container registry, and
# exports each as an archive `ctr images import` and `podman load` take (docker-archive):
#
#   build/image/routed.tar    localhost/routed/routed:<version>   the Dockerfile
#   build/image/pause.tar     localhost/routed/pause:<version>    pod sandbox (images/pause)
#   build/image/testpod.tar   localhost/routed/testpod:<version>  busybox for test pods (images/testpod)
#
# The Dockerfile's base is made here: debootstrap (minbase) of Debian bookworm from the
# Debian mirror, imported as localhost/routed-base:bookworm and passed as BASE_IMAGE.
# Idempotent and cached: the base tarball is kept, podman keeps its layer cache, and an
# image whose inputs did not change is not rebuilt at all.
#
#   scripts/build-image.sh               build what changed (needs root); prints one line
#                                        per image: name, image reference, archive
#   scripts/build-image.sh podman ARGS   podman on the image store (run, images, rmi...)
#
# Everything lives under $ROUTED_IMAGE_DIR (default build/image, git-ignored), podman's
# storage too (podman/root): never the machine's default store, which tests share.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

OUT=${ROUTED_IMAGE_DIR:-$REPO/build/image}
MIRROR=${ROUTED_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${ROUTED_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
VERSION=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
          "$REPO/pyproject.toml")
BASE=localhost/routed-base:$SUITE
ROUTED=localhost/routed/routed:$VERSION
PAUSE=localhost/routed/pause:$VERSION
TESTPOD=localhost/routed/testpod:$VERSION
# Bump when the base recipe below changes: the key decides whether the base is remade.
BASE_KEY="v2 $SUITE minbase $MIRROR $SECURITY_MIRROR"

mkdir -p "$OUT/podman"
# podman refuses a runroot longer than 50 characters; one per store, named after it.
RUNROOT=/run/routed-image-$(printf %s "$OUT" | sha256sum | cut -c1-12)
cat > "$OUT/podman/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$OUT/podman/root"
runroot = "$RUNROOT"
EOF
# This host: cgroup v1 without systemd, and a hard RLIMIT_NOFILE below podman's default.
cat > "$OUT/podman/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "none"
EOF

podman() {
  CONTAINERS_CONF="$OUT/podman/containers.conf" CONTAINERS_STORAGE_CONF="$OUT/podman/storage.conf" \
    command podman "$@"
}

if [ "${1:-}" = podman ]; then  # in the caller's directory
  shift
  podman "$@"
  exit
fi
cd "$REPO"

[ "$(id -u)" -eq 0 ] || { echo "build-image: needs root (debootstrap, podman)" >&2; exit 1; }
for tool in debootstrap podman runc go busybox; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done

# One build at a time per store (a test session and a hand run may overlap).
exec 9> "$OUT/.lock"
flock 9

log() { echo "build-image: $*" >&2; }
hash_files() { sha256sum "$@" | sha256sum | cut -c1-16; }

make_base() {
  local dir=$OUT/base
  if [ "$(cat "$dir/base.key" 2>/dev/null)" != "$BASE_KEY" ] || [ ! -f "$dir/base.tar" ]; then
    log "debootstrap $SUITE (minbase) from $MIRROR"
    local start=$SECONDS root=$dir/rootfs
    rm -rf "$root" && mkdir -p "$dir/debs"
    debootstrap --variant=minbase --cache-dir="$dir/debs" "$SUITE" "$root" "$MIRROR" >"$dir/debootstrap.log"
    # What debian:bookworm-slim has too: the updates and security suites, dpkg leaving
    # out documentation and translations, and apt keeping no .deb after installing.
    rm -f "$root/etc/apt/sources.list"
    cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat > "$root/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/locale/"*
    rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/cache/apt/archives/"*.deb \
           "$root/var/log/"*.log "$root/var/log/apt/"*
    tar --numeric-owner -C "$root" -cf "$dir/base.tar.tmp" .
    mv "$dir/base.tar.tmp" "$dir/base.tar"
    rm -rf "$root"
    echo "$BASE_KEY" > "$dir/base.key"
    log "base made in $((SECONDS - start)) s"
  fi
  # A new import is a new image ID, which would void podman's layer cache: import only
  # when the store lacks this very base.
  local key
  key=$(printf %s "$BASE_KEY" | sha256sum | cut -c1-16)
  if [ "$(podman image inspect --format '{{index .Labels "io.routed.base"}}' "$BASE" 2>/dev/null)" != "$key" ]; then
    log "importing $BASE"
    podman import --quiet --change "LABEL io.routed.base=$key" --change 'CMD ["bash"]' "$dir/base.tar" "$BASE" >/dev/null
  fi
}

# build NAME IMAGE INPUTS CONTEXT PODMAN-BUILD-ARGS...: build and export one image unless
# its archive already holds these inputs.
build() {
  local name=$1 image=$2 inputs=$3 context=$4
  shift 4
  local archive=$OUT/$name.tar
  if [ -f "$archive" ] && [ "$(cat "$archive.inputs" 2>/dev/null)" = "$inputs" ] \
     && [ "$(podman image inspect --format '{{index .Labels "io.routed.inputs"}}' "$image" 2>/dev/null)" = "$inputs" ]; then
    return
  fi
  log "building $image"
  built=yes
  local start=$SECONDS old
  old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  # The host network: RUN steps reach the Debian mirror and PyPI, and no bridge or
  # firewall rule is made on this host.
  podman build --network host --label "io.routed.inputs=$inputs" -t "$image" "$@" "$context" >"$OUT/$name.build.log" 2>&1 \
    || { tail -n 30 "$OUT/$name.build.log" >&2; exit 1; }
  rm -f "$archive.tmp"
  podman save --quiet --format docker-archive -o "$archive.tmp" "$image" >/dev/null
  mv "$archive.tmp" "$archive"
  echo "$inputs" > "$archive.inputs"
  # The image this one replaces: its layers would pile up build after build. (The build
  # stage's intermediate images stay: they are the layer cache.)
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  log "$image in $((SECONDS - start)) s: $archive ($(du -m "$archive" | cut -f1) MiB)"
}

built=""
make_base
base_key=$(printf %s "$BASE_KEY" | sha256sum | cut -c1-16)

# routed: the CNI plugin it copies is built first (nothing when up to date). The inputs
# are what .dockerignore lets in (its `!` lines, globs expanded), plus the Dockerfile.
bash scripts/build-cni.sh
mapfile -t context < <(sed -n 's/^!//p' .dockerignore)
# shellcheck disable=SC2068  # unquoted: the globs expand (no spaces in these paths)
routed_inputs=$(hash_files Dockerfile .dockerignore \
  $(find ${context[@]} -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | sort))-$base_key
secret=()
[ -s /etc/ssl/certs/ca-certificates.crt ] && secret=(--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt)
build routed "$ROUTED" "$routed_inputs" . \
  -f Dockerfile --build-arg "BASE_IMAGE=$BASE" "${secret[@]}"
if [ "$(podman image inspect --format '{{index .Labels "io.routed.inputs"}}' "$ROUTED-build" 2>/dev/null)" \
     != "$routed_inputs" ]; then
  # Name the build stage (all cached by now): its layers are the next build's cache, so
  # the unnamed images earlier builds left can go (at the end).
  podman build --network host --label "io.routed.inputs=$routed_inputs" --target build -t "$ROUTED-build" \
    -f Dockerfile --build-arg "BASE_IMAGE=$BASE" "${secret[@]}" . >>"$OUT/routed.build.log" 2>&1
fi

# pause: a static Go binary, in a context of its own.
mkdir -p "$OUT/pause-context"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$OUT/pause-context/pause" images/pause/pause.go
build pause "$PAUSE" "$(hash_files "$0" images/pause/Containerfile "$OUT/pause-context/pause")" \
  "$OUT/pause-context" -f images/pause/Containerfile

# testpod: Debian's static busybox with a link per applet.
busybox=$(command -v busybox)
testpod_inputs=$(hash_files "$0" images/testpod/Containerfile "$busybox")
if [ "$(cat "$OUT/testpod-context/inputs" 2>/dev/null)" != "$testpod_inputs" ]; then
  rm -rf "$OUT/testpod-context" && mkdir -p "$OUT/testpod-context/rootfs/"{bin,etc,tmp}
  chmod 1777 "$OUT/testpod-context/rootfs/tmp"
  cp "$busybox" "$OUT/testpod-context/rootfs/bin/busybox"
  for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$OUT/testpod-context/rootfs/bin/$applet"
  done
  echo "$testpod_inputs" > "$OUT/testpod-context/inputs"
fi
build testpod "$TESTPOD" "$testpod_inputs" "$OUT/testpod-context" \
  -f images/testpod/Containerfile

[ -z "$built" ] || podman image prune --force >/dev/null

echo "routed $ROUTED $OUT/routed.tar"
echo "pause $PAUSE $OUT/pause.tar"
echo "testpod $TESTPOD $OUT/testpod.tar"
