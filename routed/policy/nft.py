"""One node's policy as one nftables table, ``table inet routed-policy``.

    chain egress  (hook forward, priority filter)      chain ingress (priority filter + 1)
      ct state established,related accept               ct state established,related accept
      iifname "cali*" iifname != @pods drop              oifname "cali*" oifname != @pods drop
      iifname vmap @egress-map                           oifname vmap @ingress-map

The two directions are two base chains so that an Allow can be a plain ``accept``: it
ends the egress chain and the packet still meets the destination pod's ingress chain.
``@pods`` holds the interfaces whose policy is programmed: a cali interface that is not
(yet) in it has all its forwarded traffic dropped, so a new pod is unreachable until its
policy is in place. Only forwarded traffic is policed: the host's own traffic to and from
its pods (health checks, DNS on the node, BGP) never meets these chains.

Pods with the same applicable policies share one chain per tier (``g…``), jumped to via
the maps; each policy is one chain per direction (``p…``) that the tier chains jump to;
"which pods" is a set of addresses per selection (``s…``) and named ports a set of
address . protocol . port (``n…``). So rules grow with policies and with distinct
combinations of them, never with pods × policies: pods add set and map elements.

A policy chain's Pass sets mark bit 0x20000 and returns; the tier chain then goes on
to the next tier. Bit 0x20000 is cleared on entry, and is nobody else's in practice
(kube-proxy uses 0x4000/0x8000).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from routed.policy.model import EGRESS, INGRESS, Endpoint, Entity, Policy, Rule, Selection, applicable

TABLE = "routed-policy"
FAMILY = "inet"
PASS_MARK = 0x20000
_ADDR = {4: "ip", 6: "ip6"}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_ICMP = {1: "icmp", 58: "icmpv6"}
_SIDE = {"source": ("saddr", "sport"), "destination": ("daddr", "dport")}
_DIR = {INGRESS: "i", EGRESS: "e"}
_BASE = ("egress", "ingress")


@dataclass
class Ruleset:
    """The table, as data: chains of rules, sets and maps. ``render`` is the nft text."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # name -> (type, elements)
    maps: dict[str, list[str]] = field(default_factory=dict)  # ifname -> verdict maps

    @property
    def rule_count(self) -> int:
        return sum(len(rules) for rules in self.chains.values())

    def render(self) -> str:
        """An ``nft -f`` script that replaces routed's table in one transaction and
        touches nothing else: the create-then-delete makes the delete valid whether or
        not the table exists."""
        out = []
        for name, (kind, elements) in sorted(self.sets.items()):
            out.append(f"  {_set_decl(name, kind, elements)}")
        for name, elements in sorted(self.maps.items()):
            out.append(f"  map {name} {{ type ifname : verdict;{_elements(elements)} }}")
        # Chains in name order (nft resolves jumps to chains further down), so that a table
        # built pod by pod renders as the same text as one compiled at once.
        for name, rules in sorted(self.chains.items(), key=lambda item: (item[0] not in _BASE, item[0])):
            out.append(f"  chain {name} {{")
            out.extend(f"    {rule}" for rule in rules)
            out.append("  }")
        body = "\n".join(out)
        # The digest names what is programmed: the agent and tests tell one rendering from another.
        digest = hashlib.sha1(body.encode()).hexdigest()[:16]
        return "\n".join([f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}",
                          f"table {FAMILY} {TABLE} {{", f'  comment "routed {digest}"', body, "}"]) + "\n"


def _set_decl(name: str, kind: str, elements: list[str]) -> str:
    return f"set {name} {{ type {kind};{_elements(elements)} }}"


def _elements(elements: list[str]) -> str:
    return f" elements = {{ {', '.join(elements)} }};" if elements else ""


def _quote(name: str) -> str:
    return f'"{name}"'


class _Compiler:
    def __init__(self, policies: list[Policy], endpoints: list[Endpoint],
                 namespaces: Mapping[str, Mapping[str, str]], families: set[int]):
        self.policies, self.endpoints, self.namespaces, self.families = policies, endpoints, namespaces, families
        self.out = Ruleset()
        self.specs: dict[str, tuple[Selection, int, str | None]] = {}  # set -> (selection, version, named port)

    # -- sets ---------------------------------------------------------------------------

    def _elements(self, name: str, endpoints: Iterable[Endpoint]) -> set[str]:
        """What ``endpoints`` put into set ``name``."""
        selection, version, port = self.specs[name]
        members = [ep for ep in endpoints if not selection.constrains or selection.matches(ep, self.namespaces)]
        if port is None:
            return {a for ep in members for a in ep.addresses if _version(a) == version}
        return {f"{a} . {n.protocol} . {n.port}" for ep in members for n in ep.ports if n.name == port
                for a in ep.addresses if _version(a) == version}

    def address_set(self, selection: Selection, version: int) -> str:
        name = f"s{selection.key}{version}"
        if name not in self.out.sets:
            self.specs[name] = (selection, version, None)
            self.out.sets[name] = (_ADDR_TYPE[version], sorted(self._elements(name, self.endpoints)))
        return name

    def named_port_set(self, selection: Selection, port: str, version: int) -> str:
        digest = hashlib.sha1(f"{selection.key}/{port}".encode()).hexdigest()[:12]
        name = f"n{digest}{version}"
        if name not in self.out.sets:
            self.specs[name] = (selection, version, port)
            self.out.sets[name] = (f"{_ADDR_TYPE[version]} . inet_proto . inet_service",
                                   sorted(self._elements(name, self.endpoints)))
        return name

    # -- rules --------------------------------------------------------------------------

    def rule(self, rule: Rule) -> list[str]:
        """The nft rules for one policy rule: one per address family it can match and per
        named port (alternatives are separate rules; everything else is one rule)."""
        verdict = {"Allow": "accept", "Deny": "drop", "Pass": f"meta mark set meta mark | {PASS_MARK:#x} return",
                   "Log": 'log prefix "routed-policy: "'}[rule.action]
        common = []
        if rule.protocol is not None:
            common.append(f"meta l4proto {rule.protocol}")
        if rule.not_protocol is not None:
            common.append(f"meta l4proto != {rule.not_protocol}")
        out = []
        for version in sorted(self.families):
            if rule.ip_version not in (None, version) or _icmp_family(rule) not in (None, version):
                continue
            family = [f"meta nfproto ipv{version}"] if rule.ip_version else []
            icmp = _icmp_matches(rule)
            sides = [self._side(rule.source, "source", version), self._side(rule.destination, "destination", version)]
            if any(s is None for s in sides):
                continue  # nets of the other family only
            for src in sides[0]:
                for dst in sides[1]:
                    out.append(" ".join([*family, *common, *icmp, *src, *dst, verdict]))
        # A rule with no address match at all is the same in every family: write it once.
        return list(dict.fromkeys(out))

    def _side(self, e: Entity, side: str, version: int) -> list[list[str]] | None:
        """The alternatives for one side, each a list of matches; None if the side can
        never match in this family."""
        addr, port = _SIDE[side]
        ip = _ADDR[version]
        base = []
        nets = [str(n) for n in e.nets if n.version == version]
        if e.nets and not nets:
            return None
        if nets:
            base.append(f"{ip} {addr} {{ {', '.join(nets)} }}")
        not_nets = [str(n) for n in e.not_nets if n.version == version]
        if not_nets:
            base.append(f"{ip} {addr} != {{ {', '.join(not_nets)} }}")
        if e.selection.constrains:
            base.append(f"{ip} {addr} @{self.address_set(e.selection, version)}")
        numeric = [p for p in e.not_ports if not isinstance(p, str)]
        if numeric:
            base.append(f"th {port} != {{ {_ports(numeric)} }}")
        for name in (p for p in e.not_ports if isinstance(p, str)):
            base.append(f"{ip} {addr} . meta l4proto . th {port} != @{self.named_port_set(e.selection, name, version)}")
        if not e.ports:
            return [base]
        alternatives = []
        numeric = [p for p in e.ports if not isinstance(p, str)]
        if numeric:
            alternatives.append([*base, f"th {port} {{ {_ports(numeric)} }}"])
        for name in (p for p in e.ports if isinstance(p, str)):
            named = self.named_port_set(e.selection, name, version)
            alternatives.append([*base, f"{ip} {addr} . meta l4proto . th {port} @{named}"])
        return alternatives

    # -- chains -------------------------------------------------------------------------

    def policy_chain(self, policy: Policy, direction: str) -> str:
        name = f"p{policy.key}{_DIR[direction]}"
        if name not in self.out.chains:
            self.out.chains[name] = [r for rule in policy.rules(direction) for r in self.rule(rule)]
        return name

    def group_chain(self, tiers: list[list[Policy]], direction: str) -> str | None:
        """The chain of the first tier with policies, for every pod they apply to alike;
        None if no policy applies (the pod is open in this direction)."""
        chain = None
        for tier in reversed([t for t in tiers if t]):
            ident = repr((direction, [p.name for p in tier], chain))
            name = f"g{hashlib.sha1(ident.encode()).hexdigest()[:12]}{_DIR[direction]}"
            if name not in self.out.chains:
                rules = [f"meta mark set meta mark & {~PASS_MARK & 0xFFFFFFFF:#x}"]
                on_pass = f"goto {chain}" if chain else "return"
                for p in tier:
                    rules.append(f"jump {self.policy_chain(p, direction)}")
                    if any(r.action == "Pass" for r in p.rules(direction)):
                        rules.append(f"meta mark & {PASS_MARK:#x} != 0 {on_pass}")
                rules.append("drop")  # end of tier
                self.out.chains[name] = rules
            chain = name
        return chain

    def compile(self, local: list[Endpoint]) -> Ruleset:
        out = self.out
        out.chains["egress"] = _base_chain("forward", 0, "iifname")
        out.chains["ingress"] = _base_chain("forward", 1, "oifname")
        out.sets["pods"] = ("ifname", sorted(_quote(ep.interface) for ep in local))
        for direction, mapname in ((EGRESS, "egress-map"), (INGRESS, "ingress-map")):
            elements = []
            for ep in sorted(local, key=lambda e: e.interface):
                chain = self.group_chain(applicable(self.policies, ep, direction, self.namespaces), direction)
                elements.append(f"{_quote(ep.interface)} : {'jump ' + chain if chain else 'accept'}")
            out.maps[mapname] = elements
        return out


class NodeTable:
    """A compiled table that pods can be added to and removed from one at a time: each
    change returns the few nft commands (one transaction) that make the kernel's table
    follow, and the Ruleset stays what a full compile of the same pods gives (a removal
    may leave a chain or set nobody uses any more, until the next full render)."""

    def __init__(self, policies: list[Policy], endpoints: Iterable[Endpoint],
                 namespaces: Mapping[str, Mapping[str, str]], local: Iterable[Endpoint]):
        endpoints = list(endpoints)
        self._c = _Compiler(policies, endpoints, namespaces, _families(policies, endpoints))
        self.ruleset = self._c.compile(list(local))

    def covers(self, ep: Endpoint) -> bool:
        """False if adding ep needs a full compile (an address family the rules lack)."""
        return {_version(a) for a in ep.addresses} <= self._c.families

    def add(self, ep: Endpoint, local: bool) -> list[str]:
        """Commands that add ep: its addresses to the sets that select it, and if it is
        local its interface to the maps (and any new group chain) and to @pods."""
        c, out = self._c, self.ruleset
        sets, chains = set(out.sets), list(out.chains)
        c.endpoints.append(ep)
        elements = [(name, e) for name in sorted(sets - {"pods"}) for e in sorted(c._elements(name, [ep]))]
        if local:
            for direction, mapname in ((EGRESS, "egress-map"), (INGRESS, "ingress-map")):
                chain = c.group_chain(applicable(c.policies, ep, direction, c.namespaces), direction)
                elements.append((mapname, f"{_quote(ep.interface)} : {'jump ' + chain if chain else 'accept'}"))
            elements.append(("pods", _quote(ep.interface)))
        head = f"{FAMILY} {TABLE}"
        cmds = [f"add {_set_decl(name, *out.sets[name])}".replace("add set ", f"add set {head} ", 1)
                for name in sorted(set(out.sets) - sets)]
        new_chains = [name for name in out.chains if name not in chains]
        cmds += [f"add chain {head} {name}" for name in new_chains]
        cmds += [f"add rule {head} {name} {rule}" for name in new_chains for rule in out.chains[name]]
        for name, e in elements:
            held = out.maps[name] if name in out.maps else out.sets[name][1]
            i = bisect.bisect_left(held, e)
            if i == len(held) or held[i] != e:
                held.insert(i, e)
                cmds.append(f"add element {head} {name} {{ {e} }}")
        return cmds

    def remove(self, ep: Endpoint, local: bool) -> list[str]:
        """Commands that take ep's elements out (its chains stay until a full render)."""
        c, out = self._c, self.ruleset
        if ep in c.endpoints:
            c.endpoints.remove(ep)
        elements = [(name, e) for name in sorted(set(out.sets) - {"pods"}) for e in sorted(c._elements(name, [ep]))]
        if local:
            prefix = f"{_quote(ep.interface)} : "
            elements += [(m, e) for m in ("egress-map", "ingress-map") for e in out.maps[m] if e.startswith(prefix)]
            elements.append(("pods", _quote(ep.interface)))
        cmds = []
        for name, e in elements:
            held = out.maps[name] if name in out.maps else out.sets[name][1]
            if e in held:
                held.remove(e)
                cmds.append(f"delete element {FAMILY} {TABLE} {name} {{ {e.split(' : ')[0]} }}")
        return cmds


def _base_chain(hook: str, offset: int, iface: str) -> list[str]:
    return [
        f"type filter hook {hook} priority filter + {offset}; policy accept;",
        "ct state established,related accept",
        f'{iface} "cali*" {iface} != @pods drop',
        f"{iface} vmap @{'egress' if iface == 'iifname' else 'ingress'}-map",
    ]


def _ports(ranges) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _icmp_family(rule: Rule) -> int | None:
    return {1: 4, 58: 6}.get(rule.protocol or 0)


def _icmp_matches(rule: Rule) -> list[str]:
    out = []
    word = _ICMP.get(rule.protocol or 0)
    if word is None:
        return out
    for match, op in ((rule.icmp, ""), (rule.not_icmp, "!= ")):
        if match is None:
            continue
        kind, code = match
        if code is None:
            out.append(f"{word} type {op}{kind}")
        elif op:
            out.append(f"{word} type . {word} code != {{ {kind} . {code} }}")
        else:
            out.append(f"{word} type {kind} {word} code {code}")
    return out


def _version(address: str) -> int:
    return 6 if ":" in address else 4


def compile_node(policies: list[Policy], endpoints: Iterable[Endpoint], namespaces: Mapping[str, Mapping[str, str]],
                 local: Iterable[Endpoint]) -> Ruleset:
    """The table for the pods in ``local`` (this node's, with interfaces), given every
    endpoint of the cluster (the addresses sets are made of)."""
    return NodeTable(policies, endpoints, namespaces, local).ruleset


def _families(policies: list[Policy], endpoints: list[Endpoint]) -> set[int]:
    families = {_version(a) for ep in endpoints for a in ep.addresses} or {4}
    for p in policies:
        for d in (INGRESS, EGRESS):
            for r in p.rules(d) or ():
                families |= {n.version for n in (*r.source.nets, *r.destination.nets)}
    return families


__all__ = ["Ruleset", "NodeTable", "compile_node", "TABLE", "FAMILY"]
