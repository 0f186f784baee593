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


def link_local_first(by_hop: dict) -> list:
    """An UPDATE's {next hop: routes}, link-local next hops first. An IPv6 peer on our link
    may send a global and a link-local next hop (RFC 2545); ExaBGP reports the routes under
    each. Taken in this order, the global one (the node's registered address, the one
    route decisions check) is the one kept."""
    return sorted(by_hop.items(), key=lambda item: not _is_link_local(item[0]))


def _is_link_local(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_link_local
    except ValueError:
        return False
