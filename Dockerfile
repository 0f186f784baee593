# The one image every routed container runs: the node agent, the ExaBGP sidecar,
# install-cni, the GC controller, the chart's configuration job (routedctl) and the
# optional BIRD route reflector.
#
#   scripts/build-cni.sh && docker build -t routed/routed:0.1.0 .
#
# The CNI plugin is a static Go executable (cni/goplugin) that install-cni copies onto
# the node. No Go base image can be pulled here, so scripts/build-cni.sh builds it
# (pinned Go, reproducible, both architectures) into build/cni/ before the image build,
# and the image copies those files: the same bytes the tests ran.
#
# Debian 12's own python3 (3.11, what pyproject.toml requires) in both stages, so the
# virtualenv built in the first one runs unchanged in the second. Where no registry can
# be reached, scripts/build-image.sh makes the same Debian base with debootstrap and
# passes it as BASE_IMAGE.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Behind a TLS-intercepting proxy, pass its CA bundle as the secret `ca-bundle`
# (`--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt`): Debian's pip trusts
# the system bundle. Only this build stage sees it; the image does not.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then cat /run/secrets/ca-bundle >> /etc/ssl/certs/ca-certificates.crt; fi
# Debian's pip (pinned by the release; 23.0.1 in bookworm) builds the venv: no unpinned upgrade.
RUN python3 -m venv /opt/routed/venv
WORKDIR /src
# Dependencies first (a layer that survives source edits), then the project itself.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && /opt/routed/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
COPY routed ./routed
COPY ipam ./ipam
COPY cni ./cni
COPY bgp ./bgp
RUN /opt/routed/venv/bin/pip install --no-cache-dir --no-deps . \
 && /opt/routed/venv/bin/routed --help >/dev/null \
 && /opt/routed/venv/bin/routedctl --help >/dev/null \
 && /opt/routed/venv/bin/exabgp version >/dev/null \
 && /opt/routed/venv/bin/pip uninstall --quiet --yes pip setuptools

FROM ${BASE_IMAGE}
# iproute2: `ip` for netns and the route reflector's address; iptables (nft backend,
# Debian's default) for natOutgoing; nftables (`nft`) for network policy; bird2 for the
# optional route reflector; wireguard-tools (`wg`: keys and peers) and wireguard-go (the
# userspace device, on /dev/net/tun, for kernels without the wireguard module).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 iproute2 iptables nftables bird2 wireguard-tools wireguard-go ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/bird/bird.conf
COPY --from=build /opt/routed/venv /opt/routed/venv
COPY build/cni/routed-linux-amd64 build/cni/routed-linux-arm64 /opt/routed/cni/
ENV PATH=/opt/routed/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ROUTED_CNI_PLUGIN_DIR=/opt/routed/cni
# install-cni finds the plugin for this image's architecture.
RUN routed install-cni --bin-dir /tmp/cni-check/bin --conf-dir /tmp/cni-check/net.d >/dev/null \
 && rm -rf /tmp/cni-check
LABEL org.opencontainers.image.title="routed" \
      org.opencontainers.image.description="A Calico-class routed pod network for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["routed"]
CMD ["--help"]
