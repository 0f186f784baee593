"""MTUs that follow the host: the uplink's MTU less each encapsulation's overhead.

Calico's auto-detection is the model: read the MTU of the host's uplink, subtract the
overhead of every encapsulation the IP pools enable, give pods the smallest result (a
pod's packet may take any of them), and give each tunnel device its own. An explicit
MTU (the conflist's ``mtu``, the chart's ``mtu``) wins; 0 means derive. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bytes each encapsulation adds on the wire, by the family of the outer (underlay) header.
#   VXLAN: outer IP 20/40 + UDP 8 + VXLAN 8 + inner Ethernet 14
#   IPIP:  outer IPv4 20 (IPv4 only)
#   WireGuard: outer IP 20/40 + UDP 8 + WireGuard 32 (not built yet; the table is ready)
OVERHEAD: dict[tuple[str, int], int] = {
    ("vxlan", 4): 50,
    ("vxlan", 6): 70,
    ("ipip", 4): 20,
    ("wireguard", 4): 60,
    ("wireguard", 6): 80,
}
MIN_MTU = 576  # what the conflist accepts; a smaller derived value is an error, not a pod
DEFAULT_UPLINK_MTU = 1500  # when the uplink cannot be read


def tunnel_mtu(uplink_mtu: int, encapsulation: str, family: int = 4) -> int:
    """The MTU of the ``encapsulation`` device on an uplink of ``uplink_mtu`` bytes."""
    try:
        overhead = OVERHEAD[(encapsulation, family)]
    except KeyError:
        raise ValueError(f"no {encapsulation} over IPv{family}") from None
    mtu = uplink_mtu - overhead
    if mtu < MIN_MTU:
        raise ValueError(f"an uplink MTU of {uplink_mtu} leaves {mtu} bytes for {encapsulation}, "
                         f"below the minimum {MIN_MTU}")
    return mtu


@dataclass(frozen=True)
class MTUs:
    """What the node uses: the uplink's, the pods', and each tunnel device's MTU."""

    uplink: int
    pod: int
    source: str  # "derived" or "explicit"
    encapsulations: tuple[str, ...]
    vxlan: int
    ipip: int
    wireguard: int
    vxlan6: int = 0  # vxlan-v6.routed (VXLAN over IPv6, dual-stack nodes); 0: the node has no IPv6 address

    def as_dict(self) -> dict:
        tunnels = {"vxlan": self.vxlan, "ipip": self.ipip, "wireguard": self.wireguard}
        return {"uplink": self.uplink, "pod": self.pod, "source": self.source,
                "encapsulations": list(self.encapsulations),
                "tunnels": {**tunnels, "vxlan-v6": self.vxlan6} if self.vxlan6 else tunnels}


def choose(uplink_mtu: int | None, encapsulations, family: int = 4, explicit: int = 0,
           dual_stack: bool = False, vxlan_over_ipv6: bool = False) -> MTUs:
    """The node's MTUs. Pods get ``explicit`` when it is set (> 0), else the uplink's MTU
    less the largest overhead among the ``encapsulations`` in use (none: the uplink's own),
    and less VXLAN over IPv6's 70 when an IPv6 pool uses VXLAN (vxlan_over_ipv6).
    Tunnel devices always follow the uplink: a packet must fit the wire once wrapped.
    dual_stack: the node has an IPv6 address, so it has a vxlan-v6 device too."""
    uplink = uplink_mtu or DEFAULT_UPLINK_MTU
    used = tuple(sorted(set(encapsulations)))
    derived = min([tunnel_mtu(uplink, e, family) for e in used]
                  + ([tunnel_mtu(uplink, "vxlan", 6)] if vxlan_over_ipv6 else []), default=uplink)
    wireguard = OVERHEAD[("wireguard", family)]
    return MTUs(uplink=uplink, pod=explicit if explicit > 0 else derived,
                source="explicit" if explicit > 0 else "derived", encapsulations=used,
                vxlan=tunnel_mtu(uplink, "vxlan", family),
                ipip=uplink - OVERHEAD[("ipip", 4)] if family == 4 else 0,
                wireguard=uplink - wireguard,
                vxlan6=tunnel_mtu(uplink, "vxlan", 6) if dual_stack or vxlan_over_ipv6 else 0)


def vxlan_over_ipv6(pools) -> bool:
    """Whether an enabled IPv6 pool uses VXLAN (its blocks then travel in IPv6 VXLAN)."""
    return any(not p.spec.disabled and p.spec.vxlan_mode != "Never" and p.network.version == 6 for p in pools)


def pool_encapsulations(pools) -> set[str]:
    """The encapsulations that enabled IP pools use (``ipipMode``/``vxlanMode`` not Never)."""
    used = set()
    for pool in pools:
        spec = pool.spec
        if spec.disabled:
            continue
        if spec.vxlan_mode != "Never":
            used.add("vxlan")
        if spec.ipip_mode != "Never":
            used.add("ipip")
    return used
