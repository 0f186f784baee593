"""The conformance table: Kubernetes' network-policy e2e cases (test/e2e/network/netpol),
restated as data for routed. Three namespaces x, y, z with pods a, b, c each; servers on
80 and 81 over TCP, UDP and SCTP; every case gives policies and the full expected
reachability matrix for the probes it makes. Used by the pure evaluator's test and by the
real-traffic test, so both are held to the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
ALL = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]
NS_LABEL = "kubernetes.io/metadata.name"
PROTOS = {"TCP": 6, "UDP": 17, "SCTP": 132}


def address(pod: str) -> str:
    ns, name = pod.split("/")
    return f"10.66.{NAMESPACES.index(ns)}.{PODS.index(name) + 2}"


def pod_labels(pod: str) -> dict[str, str]:
    return {"pod": pod.split("/")[1]}


def named_ports() -> list[tuple[str, str, int]]:
    """(name, protocol, port) every pod serves, named as the e2e suite names them."""
    return [(f"serve-{port}-{proto.lower()}", proto, port) for port in (80, 81) for proto in PROTOS]


class Reachability:
    """Expected outcome per (client, server); starts all-true or all-false."""

    def __init__(self, default: bool = True):
        self.m = {(s, d): default for s in ALL for d in ALL}

    def expect(self, src: str, dst: str, value: bool) -> Reachability:
        """``src``/``dst``: "x/a", "x/*", "*/a" or "*/*"."""
        for (s, d) in self.m:
            if _match(src, s) and _match(dst, d):
                self.m[(s, d)] = value
        return self


def _match(pattern: str, pod: str) -> bool:
    pns, pname = pattern.split("/")
    ns, name = pod.split("/")
    return pns in ("*", ns) and pname in ("*", name)


@dataclass
class Probe:
    port: int
    protocol: str
    expected: Reachability


@dataclass
class Case:
    name: str
    policies: list[dict]
    probes: list[Probe]
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    pod_labels: dict[str, dict[str, str]] = field(default_factory=dict)


def knp(name: str, ns: str, pod_selector: dict | None = None, ingress=None, egress=None, types=None) -> dict:
    spec: dict = {"podSelector": {"matchLabels": pod_selector} if pod_selector else {}}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if types is not None:
        spec["policyTypes"] = types
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def pods(**labels) -> dict:
    return {"podSelector": {"matchLabels": labels}}


def nss(**labels) -> dict:
    return {"namespaceSelector": {"matchLabels": labels}}


def ns_expr(op: str, *values: str) -> dict:
    return {"matchExpressions": [{"key": NS_LABEL, "operator": op, "values": list(values)}]}


def ip_block(cidr: str, *excepted: str) -> dict:
    return {"ipBlock": {"cidr": cidr, **({"except": list(excepted)} if excepted else {})}}


def tcp(port, end: int | None = None, proto: str = "TCP") -> dict:
    return {"protocol": proto, "port": port, **({"endPort": end} if end else {})}


def R(default: bool = True) -> Reachability:
    return Reachability(default)


def _tcp80(reach: Reachability) -> list[Probe]:
    return [Probe(80, "TCP", reach)]


def _cases() -> list[Case]:
    c: list[Case] = []
    add = lambda name, policies, probes, **kw: c.append(Case(name, policies, probes, **kw))  # noqa: E731
    xa = "x/a"
    add("default-deny-ingress", [knp("deny-ingress", "x", ingress=[])], _tcp80(R().expect("*/*", "x/*", False)))
    add("default-deny-all", [knp("deny-all", "x", ingress=[], egress=[], types=["Ingress", "Egress"])],
        _tcp80(R().expect("*/*", "x/*", False).expect("x/*", "*/*", False)))
    add("allow from pods within server namespace by podSelector",
        [knp("x-a-allows-x-b", "x", {"pod": "a"}, ingress=[{"from": [pods(pod="b")]}])],
        _tcp80(R().expect("*/*", xa, False).expect("x/b", xa, True)))
    add("allow ingress for a target",
        [knp("deny-all", "x", ingress=[]),
         knp("allow-all-to-a", "x", {"pod": "a"}, ingress=[{"from": [{"podSelector": {}, "namespaceSelector": {}}]}])],
        _tcp80(R().expect("*/*", "x/b", False).expect("*/*", "x/c", False)))
    add("allow ingress from pods in all namespaces",
        [knp("allow-from-another-ns", "x", {"pod": "a"}, ingress=[{"from": [{"namespaceSelector": {}}]}])],
        _tcp80(R()))
    add("allow only from a different namespace by namespaceSelector",
        [knp("allow-ns-y", "x", {"pod": "a"}, ingress=[{"from": [nss(**{NS_LABEL: "y"})]}])],
        _tcp80(R().expect("x/*", xa, False).expect("z/*", xa, False)))
    add("podSelector with matchExpressions",
        [knp("x-a-allows-x-b", "x", {"pod": "a"}, ingress=[{"from": [{"podSelector": {"matchExpressions": [
            {"key": "pod", "operator": "In", "values": ["b"]}]}}]}])],
        _tcp80(R().expect("*/*", xa, False).expect("x/b", xa, True)))
    add("namespaceSelector with matchExpressions",
        [knp("allow-ns-y", "x", {"pod": "a"}, ingress=[{"from": [{"namespaceSelector": ns_expr("In", "y")}]}])],
        _tcp80(R().expect("x/*", xa, False).expect("z/*", xa, False)))
    add("podSelector or namespaceSelector",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [{"namespaceSelector": ns_expr("NotIn", "x")},
                                                         pods(pod="b")]}])],
        _tcp80(R().expect("x/a", xa, False).expect("x/c", xa, False)))
    add("podSelector and namespaceSelector",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [{"namespaceSelector": ns_expr("NotIn", "x"),
                                                          "podSelector": {"matchLabels": {"pod": "b"}}}]}])],
        _tcp80(R().expect("*/*", xa, False).expect("y/b", xa, True).expect("z/b", xa, True)))
    add("multiple podSelectors and namespaceSelectors",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [{"namespaceSelector": ns_expr("NotIn", "x"),
                                                          "podSelector": {"matchExpressions": [
                                                              {"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}])],
        _tcp80(R().expect("x/*", xa, False).expect("y/a", xa, False).expect("z/a", xa, False)))
    add("any podSelectors",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [pods(pod="b"), pods(pod="c")]}])],
        _tcp80(R().expect("*/*", xa, False).expect("x/b", xa, True).expect("x/c", xa, True)))
    add("only from a pod in a different namespace by podSelector and namespaceSelector",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {NS_LABEL: "y"}},
                                                          "podSelector": {"matchLabels": {"pod": "a"}}}]}])],
        _tcp80(R().expect("*/*", xa, False).expect("y/a", xa, True)))
    add("ingress by ports (81 open, 80 closed)",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [nss(**{NS_LABEL: "y"})], "ports": [tcp(81)]}])],
        [Probe(80, "TCP", R().expect("*/*", xa, False)),
         Probe(81, "TCP", R().expect("*/*", xa, False).expect("y/*", xa, True))])
    add("multiple stacked policies with overlapping podSelectors",
        [knp("p80", "x", {"pod": "a"}, ingress=[{"from": [nss(**{NS_LABEL: "y"})], "ports": [tcp(80)]}]),
         knp("p81", "x", {"pod": "a"}, ingress=[{"from": [nss(**{NS_LABEL: "y"})], "ports": [tcp(81)]}])],
        [Probe(p, "TCP", R().expect("*/*", xa, False).expect("y/*", xa, True)) for p in (80, 81)])
    add("allow-all policy",
        [knp("allow-all", "x", ingress=[{}])], _tcp80(R()))
    add("ingress on one named port",
        [knp("p", "x", ingress=[{"ports": [tcp("serve-81-tcp")]}])],
        [Probe(81, "TCP", R()), Probe(80, "TCP", R().expect("*/*", "x/*", False))])
    add("ingress from a namespace on one named port",
        [knp("p", "x", ingress=[{"from": [nss(**{NS_LABEL: "y"})], "ports": [tcp("serve-80-tcp")]}])],
        [Probe(80, "TCP", R().expect("*/*", "x/*", False).expect("y/*", "x/*", True)),
         Probe(81, "TCP", R().expect("*/*", "x/*", False))])
    add("egress on one named port",
        [knp("p", "x", egress=[{"ports": [tcp("serve-80-udp", proto="UDP"), tcp("serve-80-tcp")]}],
             types=["Egress"])],
        [Probe(80, "TCP", R()), Probe(81, "TCP", R().expect("x/*", "*/*", False))])
    add("deny ingress from pods on other namespaces",
        [knp("p", "x", ingress=[{"from": [{"podSelector": {}}]}])],
        _tcp80(R().expect("y/*", "x/*", False).expect("z/*", "x/*", False)))
    add("deny egress from pods by podSelector",
        [knp("p", "x", {"pod": "a"}, egress=[], types=["Egress"])], _tcp80(R().expect(xa, "*/*", False)))
    add("deny egress from all pods in a namespace",
        [knp("p", "x", egress=[], types=["Egress"])], _tcp80(R().expect("x/*", "*/*", False)))
    add("ingress and egress specified together",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [pods(pod="b")]}],
             egress=[{"to": [nss(**{NS_LABEL: "y"})]}], types=["Ingress", "Egress"])],
        _tcp80(R().expect("*/*", xa, False).expect("x/b", xa, True).expect(xa, "*/*", False)
               .expect(xa, "y/*", True)))
    add("egress denied on the client side even if the server allows it",
        [knp("deny-egress", "x", {"pod": "a"}, egress=[], types=["Egress"]),
         knp("allow-ingress", "y", ingress=[{"from": [nss(**{NS_LABEL: "x"})]}])],
        _tcp80(R().expect(xa, "*/*", False).expect("*/*", "y/*", False).expect("x/b", "y/*", True)
               .expect("x/c", "y/*", True).expect("y/*", "y/*", False)))
    add("egress to a server in a different namespace by podSelector and namespaceSelector",
        [knp("p", "x", {"pod": "a"}, egress=[{"to": [{"namespaceSelector": {"matchLabels": {NS_LABEL: "y"}},
                                                        "podSelector": {"matchLabels": {"pod": "b"}}}]}],
             types=["Egress"])],
        _tcp80(R().expect(xa, "*/*", False).expect(xa, "y/b", True)))
    add("multiple ingress policies, allow-all takes precedence",
        [knp("only-80", "x", ingress=[{"ports": [tcp(80)]}]), knp("allow-all", "x", ingress=[{}])],
        [Probe(80, "TCP", R()), Probe(81, "TCP", R())])
    add("multiple egress policies, allow-all takes precedence",
        [knp("only-80", "x", egress=[{"ports": [tcp(80)]}], types=["Egress"]),
         knp("allow-all", "x", egress=[{}], types=["Egress"])],
        [Probe(80, "TCP", R()), Probe(81, "TCP", R())])
    add("egress to a server in a CIDR block",
        [knp("p", "x", {"pod": "a"}, egress=[{"to": [ip_block(address("y/b") + "/32")]}], types=["Egress"])],
        _tcp80(R().expect(xa, "*/*", False).expect(xa, "y/b", True)))
    add("except clause on egress to a CIDR block",
        [knp("p", "x", {"pod": "a"}, egress=[{"to": [ip_block("10.66.0.0/16", address("y/b") + "/32")]}],
             types=["Egress"])],
        _tcp80(R().expect(xa, "y/b", False)))
    add("an IP in both ipBlock.cidr and an except of another policy is allowed",
        [knp("except", "x", {"pod": "a"}, egress=[{"to": [ip_block("10.66.0.0/16", address("y/b") + "/32")]}],
             types=["Egress"]),
         knp("allow", "x", {"pod": "a"}, egress=[{"to": [ip_block(address("y/b") + "/32")]}], types=["Egress"])],
        _tcp80(R()))
    add("ingress and egress controlled independently",
        [knp("allow-to-a", "x", {"pod": "a"}, ingress=[{}], egress=[], types=["Ingress", "Egress"]),
         knp("deny-in", "x", {"pod": "b"}, ingress=[], types=["Ingress"])],
        _tcp80(R().expect(xa, "*/*", False).expect("*/*", "x/b", False)))
    add("SCTP is not TCP",
        [knp("p", "x", {"pod": "a"}, ingress=[{"ports": [tcp(80, proto="SCTP")]}])],
        [Probe(80, "TCP", R().expect("*/*", xa, False)), Probe(80, "SCTP", R())])
    add("TCP is not allowed by a UDP-only policy",
        [knp("p", "x", {"pod": "a"}, ingress=[{"ports": [tcp(81, proto="UDP")]}])],
        [Probe(81, "TCP", R().expect("*/*", xa, False)), Probe(81, "UDP", R())])
    add("default-deny-ingress [UDP]", [knp("deny", "x", ingress=[])],
        [Probe(80, "UDP", R().expect("*/*", "x/*", False))])
    add("ports [UDP]",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [nss(**{NS_LABEL: "y"})], "ports": [tcp(81, proto="UDP")]}])],
        [Probe(80, "UDP", R().expect("*/*", xa, False)),
         Probe(81, "UDP", R().expect("*/*", xa, False).expect("y/*", xa, True))])
    add("ports [SCTP]",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [nss(**{NS_LABEL: "y"})], "ports": [tcp(81, proto="SCTP")]}])],
        [Probe(80, "SCTP", R().expect("*/*", xa, False)),
         Probe(81, "SCTP", R().expect("*/*", xa, False).expect("y/*", xa, True))])
    add("default-deny-ingress [SCTP]", [knp("deny", "x", ingress=[])],
        [Probe(80, "SCTP", R().expect("*/*", "x/*", False))])
    add("only from a pod in a different namespace by podSelector and namespaceSelector [SCTP]",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {NS_LABEL: "y"}},
                                                          "podSelector": {"matchLabels": {"pod": "a"}}}]}])],
        [Probe(80, "SCTP", R().expect("*/*", xa, False).expect("y/a", xa, True))])
    add("multiple ports with endPort [SCTP]",
        [knp("p", "x", {"pod": "a"}, ingress=[{"ports": [tcp(70, 79, proto="SCTP"), tcp(81, 90, proto="SCTP")]}])],
        [Probe(80, "SCTP", R().expect("*/*", xa, False)), Probe(81, "SCTP", R()),
         Probe(81, "TCP", R().expect("*/*", xa, False))])
    add("ingress on one named port [SCTP]",
        [knp("p", "x", ingress=[{"ports": [tcp("serve-81-sctp", proto="SCTP")]}])],
        [Probe(81, "SCTP", R()), Probe(80, "SCTP", R().expect("*/*", "x/*", False)),
         Probe(81, "TCP", R().expect("*/*", "x/*", False))])
    add("any port on a specific protocol",
        [knp("p", "x", {"pod": "a"}, ingress=[{"ports": [{"protocol": "UDP"}]}])],
        [Probe(80, "TCP", R().expect("*/*", xa, False)), Probe(80, "UDP", R()), Probe(81, "UDP", R())])
    add("endPort range",
        [knp("p", "x", {"pod": "a"}, ingress=[{"ports": [tcp(80, 81)]}])],
        [Probe(80, "TCP", R()), Probe(81, "TCP", R()), Probe(80, "UDP", R().expect("*/*", xa, False))])
    add("multiple ports with endPort",
        [knp("p", "x", {"pod": "a"}, ingress=[{"ports": [tcp(70, 79), tcp(81, 90)]}])],
        [Probe(80, "TCP", R().expect("*/*", xa, False)), Probe(81, "TCP", R())])
    add("namespace labels: allow from namespaces labelled ns2=updated",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [nss(ns2="updated")]}])],
        _tcp80(R().expect("*/*", xa, False).expect("y/*", xa, True)),
        namespace_labels={"y": {"ns2": "updated"}})
    add("pod labels: allow from pods labelled pod2=updated",
        [knp("p", "x", {"pod": "a"}, ingress=[{"from": [{"namespaceSelector": {},
                                                          "podSelector": {"matchLabels": {"pod2": "updated"}}}]}])],
        _tcp80(R().expect("*/*", xa, False).expect("z/b", xa, True)),
        pod_labels={"z/b": {"pod2": "updated"}})
    add("deny ingress to a pod by its updated label",
        [knp("p", "x", {"target": "isolated"}, ingress=[])],
        _tcp80(R().expect("*/*", "x/c", False)), pod_labels={"x/c": {"target": "isolated"}})
    return c


CASES = _cases()


def expected_of(case: Case) -> Callable[[str, str, Probe], bool]:
    return lambda src, dst, probe: probe.expected.m[(src, dst)]
