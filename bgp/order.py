"""Orderings that hold across address families. ipaddress refuses to compare an IPv4 with
an IPv6 object (TypeError), so a plain sort of mixed prefixes or peers would stop a
dual-stack node's announcements: sort by (version, value) instead, IPv4 first."""

from __future__ import annotations

import ipaddress


def address_key(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    return address.version, int(address)


def network_key(text: str) -> tuple[int, int, int]:
    network = ipaddress.ip_network(text)
    return network.version, int(network.network_address), network.prefixlen
