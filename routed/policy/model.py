"""One model for every policy routed enforces, and the conversion into it.

Kubernetes NetworkPolicies become Allow-only policies, as calico-kube-controllers converts
them; routed.io policies keep their actions. Evaluation order (see evaluate.py):

    tier 0: routed.io NetworkPolicy and GlobalNetworkPolicy, by order (absent = last), then name
    tier 1: Kubernetes NetworkPolicies
    then the profile: allow

Within a tier the first Allow or Deny decides, Log goes on, Pass skips to the next tier; a
tier that selected the endpoint but had no matching rule denies (Calico's end-of-tier
drop). Two fixed tiers is what routed chose until it has a Tier resource: Calico puts
Kubernetes policies in its default tier at order 1000 beside its own, where a Pass would
skip them; here a routed policy that passes hands the decision to the Kubernetes ones.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from routed.resources import policy as res
from routed.resources.selector import All, And, Equals, Has, In, Not, Selector, parse_selector

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# The labels Calico gives every namespace (its name) and every pod (its namespace's name),
# which its documentation selects namespaces with.
CALICO_NAMESPACE_NAME_LABEL = "projectcalico.org/name"
CALICO_POD_NAMESPACE_LABEL = "projectcalico.org/namespace"
ROUTED_TIER, KUBE_TIER = 0, 1
INGRESS, EGRESS = "Ingress", "Egress"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: int
    port: int


@dataclass(frozen=True)
class Endpoint:
    """A pod as policy sees it, wherever it runs."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    addresses: tuple[str, ...]  # without prefix length
    interface: str = ""  # host side veth, on its own node
    node: str = ""
    ports: tuple[NamedPort, ...] = ()

    def __hash__(self) -> int:
        return hash((self.namespace, self.name))


@dataclass(frozen=True)
class Selection:
    """Which endpoints one side of a rule (or a policy) is about. An empty selection
    (no selector, no namespace selector) constrains nothing."""

    selector: str | None = None
    not_selector: str | None = None
    namespace_selector: str | None = None
    namespace: str | None = None  # only endpoints of this namespace

    @property
    def constrains(self) -> bool:
        return any(x is not None for x in (self.selector, self.not_selector, self.namespace_selector))

    @property
    def key(self) -> str:
        """A stable name for the set of addresses this selection picks."""
        text = repr((self.selector, self.not_selector, self.namespace_selector, self.namespace))
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def matches(self, ep: Endpoint, namespaces: Mapping[str, Mapping[str, str]]) -> bool:
        if self.namespace is not None and ep.namespace != self.namespace:
            return False
        if self.namespace_selector is not None and not _sel(self.namespace_selector).matches(
            namespace_labels(ep.namespace, namespaces)
        ):
            return False
        if self.selector is not None and not _sel(self.selector).matches(_pod_labels(ep, self.selector)):
            return False
        return self.not_selector is None or not _sel(self.not_selector).matches(_pod_labels(ep, self.not_selector))


def _pod_labels(ep: Endpoint, selector: str) -> Mapping[str, str]:
    """ep's labels, with Calico's implicit namespace label when the selector asks for it
    (the check spares a copy per match for every other selector)."""
    if CALICO_POD_NAMESPACE_LABEL not in selector:
        return ep.labels
    return {**ep.labels, CALICO_POD_NAMESPACE_LABEL: ep.namespace}


_SELECTORS: dict[str, Selector] = {}


def _sel(text: str) -> Selector:
    # Selectors were validated when the resource was; parse each text once.
    if text not in _SELECTORS:
        _SELECTORS[text] = parse_selector(text)
    return _SELECTORS[text]


def namespace_labels(namespace: str, namespaces: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    # The API server sets this label on every namespace; a namespace routed has not
    # heard of yet still has it.
    return {**namespaces.get(namespace, {}), NAMESPACE_NAME_LABEL: namespace, CALICO_NAMESPACE_NAME_LABEL: namespace}


@dataclass(frozen=True)
class Entity:
    """One side (source or destination) of a rule."""

    selection: Selection = Selection()
    nets: tuple[Network, ...] = ()
    not_nets: tuple[Network, ...] = ()
    ports: tuple[PortRange | str, ...] = ()  # a str is a named port
    not_ports: tuple[PortRange | str, ...] = ()


@dataclass(frozen=True)
class Rule:
    action: str  # Allow, Deny, Log, Pass
    protocol: int | None = None
    not_protocol: int | None = None
    icmp: tuple[int | None, int | None] | None = None  # (type, code)
    not_icmp: tuple[int | None, int | None] | None = None
    ip_version: int | None = None
    source: Entity = Entity()
    destination: Entity = Entity()


@dataclass(frozen=True)
class Policy:
    tier: int
    order: float
    name: str  # unique across kinds: "np/<ns>/<name>", "gnp/<name>", "knp/<ns>/<name>"
    selection: Selection  # the endpoints it applies to
    ingress: tuple[Rule, ...] | None = None  # None: the policy does not apply to ingress
    egress: tuple[Rule, ...] | None = None
    key: str = field(default="", compare=False)

    def rules(self, direction: str) -> tuple[Rule, ...] | None:
        return self.ingress if direction == INGRESS else self.egress

    @property
    def sort_key(self) -> tuple:
        return (self.tier, self.order, self.name)


def _make(tier: int, order: float, name: str, selection: Selection, ingress, egress) -> Policy:
    return Policy(tier, order, name, selection, ingress, egress, key=hashlib.sha1(name.encode()).hexdigest()[:12])


# --- routed.io policies -----------------------------------------------------------------


def _ports(items: list) -> tuple[PortRange | str, ...]:
    return tuple(res.parse_port(p) for p in items)


def _nets(items: list[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n) for n in items)


def _icmp(m: res.ICMPMatch | None):
    return None if m is None else (m.type, m.code)


def _entity(e: res.EntityRule, namespace: str | None) -> Entity:
    # A namespaced policy's selector picks endpoints of its own namespace unless the rule
    # names namespaces itself; a global one's picks from every namespace.
    scoped = namespace if (e.selector or e.not_selector) and e.namespace_selector is None else None
    return Entity(
        Selection(e.selector, e.not_selector, e.namespace_selector, scoped),
        _nets(e.nets), _nets(e.not_nets), _ports(e.ports), _ports(e.not_ports),
    )


def _rule(r: res.PolicyRule, namespace: str | None) -> Rule:
    return Rule(
        r.action, res.protocol_number(r.protocol), res.protocol_number(r.not_protocol),
        _icmp(r.icmp), _icmp(r.not_icmp), r.ip_version,
        _entity(r.source, namespace), _entity(r.destination, namespace),
    )


def from_routed(p: res.NetworkPolicy | res.GlobalNetworkPolicy) -> Policy:
    s = p.spec
    if isinstance(p, res.NetworkPolicy):
        name, ns, ns_sel = f"np/{p.namespace}/{p.name}", p.namespace, None
    else:
        name, ns, ns_sel = f"gnp/{p.name}", None, s.namespace_selector
    rules = {d: tuple(_rule(r, ns) for r in getattr(s, d.lower())) if d in s.types else None
             for d in (INGRESS, EGRESS)}
    order = float("inf") if s.order is None else float(s.order)
    return _make(ROUTED_TIER, order, name, Selection(s.selector, None, ns_sel, ns), rules[INGRESS], rules[EGRESS])


# --- Kubernetes NetworkPolicy -------------------------------------------------------------


def label_selector(sel: res.LabelSelector) -> str:
    """A Kubernetes LabelSelector in the selector language (an empty one selects all)."""
    terms = [Equals(k, v) for k, v in sorted(sel.match_labels.items())]
    for req in sel.match_expressions:
        values = tuple(req.values)
        terms.append({"In": lambda: In(req.key, values), "NotIn": lambda: Not(In(req.key, values)),
                      "Exists": lambda: Has(req.key), "DoesNotExist": lambda: Not(Has(req.key))}[req.operator]())
    if not terms:
        return str(All())
    node = terms[0]
    for term in terms[1:]:
        node = And(node, term)
    return str(node)


def _peer(peer: res.KubePeer | None, namespace: str) -> Entity:
    if peer is None:
        return Entity()  # no peers listed: every source or destination
    if peer.ip_block:
        return Entity(nets=_nets([peer.ip_block.cidr]), not_nets=_nets(peer.ip_block.except_))
    pods = label_selector(peer.pod_selector) if peer.pod_selector else None
    if peer.namespace_selector is None:
        return Entity(Selection(pods or "all()", None, None, namespace))
    return Entity(Selection(pods, None, label_selector(peer.namespace_selector), None))


_KUBE_PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}


def _by_protocol(ports: list[res.KubePort]) -> list[tuple[int | None, tuple]]:
    """Ports grouped by protocol: one rule per protocol, not per port. A port-less entry
    opens its whole protocol; no entries at all open every protocol."""
    if not ports:
        return [(None, ())]
    grouped: dict[int, list | None] = {}
    for p in ports:
        proto = _KUBE_PROTOCOLS[p.protocol]
        if p.port is None:
            grouped[proto] = None
        elif grouped.get(proto, []) is not None:
            item = res.parse_port(p.port)
            if p.end_port is not None:
                item = (item[0], p.end_port)
            grouped.setdefault(proto, []).append(item)
    return [(proto, tuple(items or ())) for proto, items in grouped.items()]


def from_kube(p: res.KubeNetworkPolicy) -> Policy:
    s, ns = p.spec, p.namespace
    directions = {}
    for direction, rules, peers_of in ((INGRESS, s.ingress, lambda r: r.from_), (EGRESS, s.egress, lambda r: r.to)):
        if direction not in s.policy_types:
            directions[direction] = None
            continue
        out = []
        for kr in rules or []:
            for peer in peers_of(kr) or [None]:
                remote = _peer(peer, ns)
                for proto, ports in _by_protocol(kr.ports):
                    if direction == INGRESS:  # ports are the (local) destination's
                        src, dst = remote, Entity(ports=ports)
                    else:
                        src, dst = Entity(), Entity(remote.selection, remote.nets, remote.not_nets, ports)
                    out.append(Rule("Allow", protocol=proto, source=src, destination=dst))
        directions[direction] = tuple(out)
    selection = Selection(label_selector(s.pod_selector), None, None, ns)
    return _make(KUBE_TIER, 0.0, f"knp/{ns}/{p.name}", selection, directions[INGRESS], directions[EGRESS])


def convert(resources) -> list[Policy]:
    """Every policy among ``resources`` (other kinds are skipped), in evaluation order."""
    out = []
    for r in resources:
        if isinstance(r, (res.NetworkPolicy, res.GlobalNetworkPolicy)):
            out.append(from_routed(r))
        elif isinstance(r, res.KubeNetworkPolicy):
            out.append(from_kube(r))
    return sorted(out, key=lambda p: p.sort_key)


def applicable(policies: list[Policy], ep: Endpoint, direction: str,
               namespaces: Mapping[str, Mapping[str, str]]) -> list[list[Policy]]:
    """The policies that apply to ``ep`` in ``direction``, per tier, in order."""
    tiers: list[list[Policy]] = [[], []]
    for p in policies:
        if p.rules(direction) is not None and p.selection.matches(ep, namespaces):
            tiers[p.tier].append(p)
    return tiers
