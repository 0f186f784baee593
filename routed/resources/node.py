"""Node: what the agent registers about its host (addresses for BGP next hops)."""

from __future__ import annotations

import base64
import binascii
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
        iface = ipaddress.IPv6Interface(_interface(text, 6))
        ip = iface.ip
        # Other nodes route pods to it and open sessions from theirs: a global unicast one.
        if ip.is_link_local or ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.ipv4_mapped:
            raise field_error(f'"{text}" is not a unicast address other nodes can route to '
                              "(link-local, multicast, loopback, unspecified and IPv4-mapped are refused)")
        return str(iface)

    @field_validator("route_reflector_cluster_id")
    @classmethod
    def _cluster_id(cls, text: str) -> str:
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise field_error(f'"{text}" is not an IPv4 address (e.g. 244.0.0.1)') from None


WIREGUARD_OPT_OUT_LABEL = "routed.io/wireguard"  # "Disabled": this node does not take part
# Set by `routedctl node rotate-key`: a value the node's agent has not acted on yet makes
# it replace its key pair (the private key never leaves the node, so the node makes it).
WIREGUARD_ROTATE_ANNOTATION = "routed.io/wireguard-rotate"


def check_wireguard_key(text: str) -> str:
    """A WireGuard key as wg prints it: 32 bytes in standard base64 (44 characters)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or base64.b64encode(raw).decode() != text:
        raise field_error(f'"{text[:60]}" is not a WireGuard key (32 bytes in base64)')
    return text


class NodeWireGuard(Model):
    """What the node's agent publishes for its peers; the private key never leaves the node."""

    public_key: str
    endpoint: str  # ADDRESS:PORT, [ADDRESS]:PORT for IPv6

    @field_validator("public_key")
    @classmethod
    def _key(cls, text: str) -> str:
        return check_wireguard_key(text)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, text: str) -> str:
        host, _, port = text.rpartition(":")
        try:
            address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
            ok = 0 < int(port) < 65536 and (address.version == 4) == ("[" not in host)
        except ValueError:
            ok = False
        if not ok:
            raise field_error(f'"{text}" is not ADDRESS:PORT (e.g. 192.0.2.5:51820 or [2001:db8::5]:51820)')
        return text


class NodeSpec(Model):
    bgp: NodeBGP | None = None
    wireguard: NodeWireGuard | None = None
    addresses: list[str] = Field(default_factory=list)


class Node(Resource):
    # Node names come from Kubernetes; ObjectMeta already checks DNS-1123 subdomain.
    kind_name = "Node"
    plural = "nodes"
    aliases = ("node",)

    kind: Literal["Node"] = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)
