"""The reference answer: is one packet allowed? The nftables ruleset (nft.py) must agree
with this for every packet; the tests check both against the expected matrices."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from routed.policy.model import EGRESS, INGRESS, Endpoint, Entity, Policy, Rule, applicable


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    protocol: int  # 6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6
    sport: int = 0
    dport: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None


class Cluster:
    """Every endpoint, namespace and policy, indexed for answering packets."""

    def __init__(self, endpoints: Iterable[Endpoint], namespaces: Mapping[str, Mapping[str, str]],
                 policies: list[Policy]):
        self.endpoints = list(endpoints)
        self.namespaces = namespaces
        self.policies = policies
        self.by_address = {a: ep for ep in self.endpoints for a in ep.addresses}

    def allowed(self, pkt: Packet) -> bool:
        """A new connection's first packet: egress of its source pod, then ingress of its
        destination pod (addresses that are no pod's are not policed)."""
        src, dst = self.by_address.get(pkt.src), self.by_address.get(pkt.dst)
        return (src is None or self.verdict(src, EGRESS, pkt)) and (dst is None or self.verdict(dst, INGRESS, pkt))

    def verdict(self, ep: Endpoint, direction: str, pkt: Packet) -> bool:
        for tier in applicable(self.policies, ep, direction, self.namespaces):
            if not tier:
                continue
            decision = self._tier(tier, direction, pkt)
            if decision is not None:
                return decision
        return True  # the profile: a pod no policy denies is reachable

    def _tier(self, tier: list[Policy], direction: str, pkt: Packet) -> bool | None:
        """True/False, or None for a Pass to the next tier."""
        for policy in tier:
            for rule in policy.rules(direction):
                if not self._rule(rule, pkt):
                    continue
                if rule.action == "Allow":
                    return True
                if rule.action == "Deny":
                    return False
                if rule.action == "Pass":
                    return None
                # Log: note it and go on
        return False  # end of tier: a policy selected the endpoint, no rule allowed

    def _rule(self, rule: Rule, pkt: Packet) -> bool:
        version = ipaddress.ip_address(pkt.src).version
        if rule.ip_version is not None and rule.ip_version != version:
            return False
        if rule.protocol is not None and rule.protocol != pkt.protocol:
            return False
        if rule.not_protocol is not None and rule.not_protocol == pkt.protocol:
            return False
        if rule.icmp is not None and not _icmp(rule.icmp, pkt):
            return False
        if rule.not_icmp is not None and _icmp(rule.not_icmp, pkt):
            return False
        return (self._entity(rule.source, pkt.src, pkt.sport, pkt.protocol)
                and self._entity(rule.destination, pkt.dst, pkt.dport, pkt.protocol))

    def _entity(self, e: Entity, address: str, port: int, protocol: int) -> bool:
        addr = ipaddress.ip_address(address)
        if e.nets and not any(addr in n for n in e.nets if n.version == addr.version):
            return False
        if any(addr in n for n in e.not_nets if n.version == addr.version):
            return False
        ep = self.by_address.get(address)
        if e.selection.constrains and (ep is None or not e.selection.matches(ep, self.namespaces)):
            return False
        if e.ports and not any(self._port(p, ep, port, protocol) for p in e.ports):
            return False
        return not any(self._port(p, ep, port, protocol) for p in e.not_ports)

    @staticmethod
    def _port(item, ep: Endpoint | None, port: int, protocol: int) -> bool:
        if isinstance(item, str):
            return ep is not None and any(
                n.name == item and n.protocol == protocol and n.port == port for n in ep.ports)
        return item[0] <= port <= item[1]


def _icmp(match: tuple[int | None, int | None], pkt: Packet) -> bool:
    kind, code = match
    return (kind is None or kind == pkt.icmp_type) and (code is None or code == pkt.icmp_code)


__all__ = ["Cluster", "Packet", "INGRESS", "EGRESS"]
