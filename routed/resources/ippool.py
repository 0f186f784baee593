"""IPPool: a CIDR that IPAM carves into per-node blocks."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from routed.errors import InvalidResource
from routed.resources.base import Model, Resource, SelectorText, field_error, parse_cidr

EncapMode = Literal["Never", "Always", "CrossSubnet"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# version -> (smallest allowed blockSize, largest, default)
BLOCK_SIZES = {4: (20, 32, 26), 6: (116, 128, 122)}

# Pod addresses from these ranges would collide with what every host already uses:
# 169.254.1.1 is the pods' gateway, loopback never leaves a host, multicast is not unicast.
_RESERVED = [
    (ipaddress.ip_network(cidr), what)
    for cidr, what in [
        ("169.254.0.0/16", "link-local"),
        ("fe80::/10", "link-local"),
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("224.0.0.0/4", "multicast"),
        ("ff00::/8", "multicast"),
    ]
]


class IPPoolSpec(Model):
    cidr: str
    block_size: int | None = None  # None only until validated: the default depends on the family
    ipip_mode: EncapMode = Field("Never", alias="ipipMode")
    vxlan_mode: EncapMode = Field("Never", alias="vxlanMode")
    nat_outgoing: bool = False
    disabled: bool = False
    node_selector: SelectorText = "all()"

    @property
    def network(self) -> Network:
        return ipaddress.ip_network(self.cidr)

    @field_validator("cidr")
    @classmethod
    def _check_cidr(cls, text: str) -> str:
        net = parse_cidr(text)
        for reserved, what in _RESERVED:
            if net.version == reserved.version and net.overlaps(reserved):
                raise field_error(f"{net} overlaps the {what} range {reserved}")
        return str(net)

    @model_validator(mode="after")
    def _check_blocks_and_encapsulation(self) -> IPPoolSpec:
        net = self.network
        smallest, largest, default = BLOCK_SIZES[net.version]
        if self.block_size is None:
            self.block_size = default
        elif not smallest <= self.block_size <= largest:
            raise field_error(
                f"block size {self.block_size} is out of range for IPv{net.version} "
                f"({smallest}-{largest})",
                "blockSize",
            )
        if net.prefixlen > self.block_size:
            raise field_error(f"pool {net} is smaller than one block (/{self.block_size})", "cidr")
        if self.ipip_mode != "Never" and self.vxlan_mode != "Never":
            raise field_error(
                f"ipipMode {self.ipip_mode} and vxlanMode {self.vxlan_mode} are both on; "
                "choose one encapsulation",
                "vxlanMode",
            )
        if self.ipip_mode != "Never" and net.version == 6:
            raise field_error("IPIP carries only IPv4; use vxlanMode for an IPv6 pool", "ipipMode")
        return self


class IPPool(Resource):
    kind_name = "IPPool"
    plural = "ippools"
    aliases = ("ippool", "pool", "pools")

    kind: Literal["IPPool"] = "IPPool"
    spec: IPPoolSpec

    @property
    def network(self) -> Network:
        return self.spec.network


def check_pool_overlap(new: IPPool, existing: list[IPPool]) -> None:
    """Two pools sharing addresses would let IPAM hand one address out twice."""
    for other in existing:
        if other.name == new.name or other.network.version != new.network.version:
            continue
        if new.network.overlaps(other.network):
            raise InvalidResource(
                f'IPPool "{new.name}": spec.cidr {new.spec.cidr} overlaps '
                f'IPPool "{other.name}" ({other.spec.cidr})'
            )


def check_pool_update(old: IPPool, new: IPPool) -> None:
    """Blocks already carved from a pool pin its CIDR and block size for its lifetime."""
    for field, before, after in [
        ("cidr", old.spec.cidr, new.spec.cidr),
        ("blockSize", old.spec.block_size, new.spec.block_size),
    ]:
        if before != after:
            raise InvalidResource(
                f'IPPool "{old.name}": spec.{field} is immutable ({before} → {after}); '
                "create a new pool and disable this one"
            )
