"""Node: what the agent registers about its host (addresses for BGP next hops)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from routed.resources.base import ASNumber, Model, Resource, field_error


def _interface(text: str, version: int) -> str:
    """An interface address with its subnet, e.g. 10.0.0.5/24: the subnet decides
    which peers are directly reachable (CrossSubnet)."""
    if "/" not in text:
        raise field_error(f'"{text}" needs a prefix length (e.g. {text}/24)')
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise field_error(f'"{text}" is not an IPv{version} address with prefix') from None
    if iface.version != version:
        raise field_error(f'"{text}" is not an IPv{version} address')
    return str(iface)


class NodeBGP(Model):
    ipv4_address: str = Field(alias="ipv4Address")
    ipv6_address: str | None = Field(None, alias="ipv6Address")
    as_number: ASNumber | None = None  # None: use BGPConfiguration's asNumber
    route_reflector_cluster_id: str | None = Field(None, alias="routeReflectorClusterID")

    @field_validator("ipv4_address")
    @classmethod
    def _v4(cls, text: str) -> str:
        return _interface(text, 4)

    @field_validator("ipv6_address")
    @classmethod
    def _v6(cls, text: str) -> str:
        return _interface(text, 6)

    @field_validator("route_reflector_cluster_id")
    @classmethod
    def _cluster_id(cls, text: str) -> str:
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise field_error(f'"{text}" is not an IPv4 address (e.g. 244.0.0.1)') from None


class NodeSpec(Model):
    bgp: NodeBGP | None = None
    addresses: list[str] = Field(default_factory=list)


class Node(Resource):
    # Node names come from Kubernetes; ObjectMeta already checks DNS-1123 subdomain.
    kind_name = "Node"
    plural = "nodes"
    aliases = ("node",)

    kind: Literal["Node"] = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)
