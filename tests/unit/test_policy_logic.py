"""Policy semantics without I/O: the reference evaluator against the conformance table
and Calico's evaluation order, and the shape (rule count) of the compiled nftables table."""

from __future__ import annotations

import pytest

from routed import resources as r
from routed.policy import model, nft
from routed.policy.evaluate import Cluster, Packet
from tests.support import netpol


def cluster_of(case: netpol.Case) -> Cluster:
    return Cluster(endpoints_of(case), namespaces_of(case), model.convert(r.parse(d) for d in case.policies))


def endpoints_of(case: netpol.Case, interfaces: dict[str, str] | None = None) -> list[model.Endpoint]:
    ports = tuple(model.NamedPort(n, netpol.PROTOS[p], port) for n, p, port in netpol.named_ports())
    return [model.Endpoint(pod.split("/")[0], pod.split("/")[1],
                           {**netpol.pod_labels(pod), **case.pod_labels.get(pod, {})},
                           (netpol.address(pod),), (interfaces or {}).get(pod, ""), ports=ports)
            for pod in netpol.ALL]


def namespaces_of(case: netpol.Case) -> dict[str, dict[str, str]]:
    return {ns: {"ns": ns, **case.namespace_labels.get(ns, {})} for ns in netpol.NAMESPACES}


@pytest.mark.parametrize("case", netpol.CASES, ids=[c.name for c in netpol.CASES])
def test_conformance_table_reference_evaluator(case):
    cluster = cluster_of(case)
    wrong = []
    for probe in case.probes:
        for (src, dst), want in probe.expected.m.items():
            if src == dst:
                continue  # loopback is undefined in the e2e suite, and never forwarded
            pkt = Packet(netpol.address(src), netpol.address(dst), netpol.PROTOS[probe.protocol], 40000, probe.port)
            if cluster.allowed(pkt) != want:
                wrong.append(f"{src}->{dst} {probe.port}/{probe.protocol}: expected {want}")
    assert not wrong, wrong


def test_the_table_is_the_e2e_suite_size():
    assert len(netpol.CASES) >= 40


# --- Calico's order for routed.io policies -------------------------------------------------

A = model.Endpoint("x", "a", {"app": "a"}, ("10.0.0.1",))
B = model.Endpoint("x", "b", {"app": "b"}, ("10.0.0.2",))
C = model.Endpoint("y", "c", {"app": "c"}, ("10.0.1.3",))


def gnp(name, order, ingress=None, egress=None, selector="app == 'a'", **spec) -> dict:
    body = {"selector": selector, **spec}
    if order is not None:
        body["order"] = order
    if ingress is not None:
        body["ingress"] = ingress
    if egress is not None:
        body["egress"] = egress
    return {"apiVersion": "routed.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": name}, "spec": body}


def allowed(docs, src=B, dst=A, proto=6, dport=80, **kw) -> bool:
    cluster = Cluster([A, B, C], {"x": {"team": "one"}, "y": {}}, model.convert(r.parse(d) for d in docs))
    return cluster.allowed(Packet(src.addresses[0], dst.addresses[0], proto, 40000, dport, **kw))


def test_lower_order_decides_first():
    deny, allow = [{"action": "Deny"}], [{"action": "Allow"}]
    assert not allowed([gnp("z-deny", 10, deny), gnp("a-allow", 20, allow)])
    assert allowed([gnp("z-deny", 30, deny), gnp("a-allow", 20, allow)])
    # No order is last; equal orders go by name.
    assert allowed([gnp("deny", None, deny), gnp("allow", 100, allow)])
    assert not allowed([gnp("a", 5, deny), gnp("b", 5, allow)])


def test_end_of_tier_denies_when_a_policy_applied_and_no_rule_matched():
    only_udp = [{"action": "Allow", "protocol": "UDP"}]
    assert not allowed([gnp("p", 1, only_udp)])
    assert allowed([gnp("p", 1, only_udp)], proto=17)
    assert allowed([gnp("p", 1, only_udp)], src=A, dst=B)  # B is not selected: open


def test_log_goes_on_and_pass_hands_over_to_kubernetes_policies():
    knp_deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}, "ingress": []}}
    assert allowed([gnp("log", 1, [{"action": "Log"}, {"action": "Allow"}])])
    assert not allowed([gnp("pass", 1, [{"action": "Pass"}]), knp_deny])
    assert allowed([gnp("pass", 1, [{"action": "Pass"}])])  # nothing in the next tier: the profile allows
    assert allowed([gnp("allow", 1, [{"action": "Allow"}]), knp_deny])  # an Allow decides before Kubernetes'


def test_rule_matches_ports_nets_selectors_namespaces_icmp():
    rule = lambda **kw: [gnp("p", 1, [{"action": "Allow", **kw}])]  # noqa: E731
    assert allowed(rule(protocol="TCP", destination={"ports": ["70:90"]}))
    assert not allowed(rule(protocol="TCP", destination={"notPorts": [80]}))
    assert allowed(rule(source={"nets": ["10.0.0.0/24"], "notNets": ["10.0.0.1/32"]}))
    assert not allowed(rule(source={"notNets": ["10.0.0.2/32"]}))
    assert allowed(rule(source={"selector": "app == 'b'"}))
    assert not allowed(rule(source={"selector": "app == 'b'"}), src=C)
    assert allowed(rule(source={"namespaceSelector": "team == 'one'"}))
    assert not allowed(rule(source={"namespaceSelector": "team == 'one'"}), src=C)
    assert allowed(rule(protocol="ICMP", icmp={"type": 8}), proto=1, icmp_type=8, icmp_code=0)
    assert not allowed(rule(protocol="ICMP", icmp={"type": 8, "code": 1}), proto=1, icmp_type=8, icmp_code=0)
    assert allowed(rule(protocol="ICMP", notICMP={"type": 0}), proto=1, icmp_type=8, icmp_code=0)


def test_namespaced_routed_policy_selects_its_own_namespace():
    np_doc = {"apiVersion": "routed.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "y"},
              "spec": {"selector": "all()", "ingress": [{"action": "Allow", "source": {"selector": "all()"}}]}}
    assert allowed([np_doc])  # A is in x: not selected
    assert not allowed([np_doc], dst=C)  # B is in x, the rule's selector means y's pods
    assert allowed([np_doc], src=C, dst=C)


def test_global_policy_namespace_selector_limits_the_endpoints():
    deny = gnp("p", 1, [{"action": "Deny"}], selector="all()", namespaceSelector="team == 'one'")
    assert not allowed([deny])
    assert allowed([deny], src=A, dst=C)


# --- the nftables table ------------------------------------------------------------------


def _population(pods: int, policies: int, selects_all: bool = False):
    apps = 20
    eps = [model.Endpoint(f"ns{i % 10}", f"p{i}", {"app": f"app{i % apps}", "tier": f"t{i % 3}"},
                          (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",), f"cali{i:011d}")
           for i in range(pods)]
    docs = [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": f"np{j}", "namespace": f"ns{j % 10}"},
             "spec": {"podSelector": {} if selects_all else {"matchLabels": {"app": f"app{j % apps}"}},
                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": f"t{j % 3}"}}}],
                                   "ports": [{"port": 80 + j}]}]}}
            for j in range(policies)]
    return model.convert(r.parse(d) for d in docs), eps


@pytest.mark.parametrize("selects_all", [False, True])
def test_rule_count_grows_with_pods_plus_policies_not_their_product(selects_all):
    counts = {}
    for pods in (100, 400):
        for policies in (20, 80):
            pols, eps = _population(pods, policies, selects_all)
            counts[(pods, policies)] = nft.compile_node(pols, eps, {}, eps).rule_count
    # Four times the pods add no rules (they are set and map elements)...
    assert counts[(400, 20)] == counts[(100, 20)]
    assert counts[(400, 80)] == counts[(100, 80)]
    # ...and four times the policies add about four times the policies' rules, not 16.
    assert counts[(100, 80)] <= 4.5 * counts[(100, 20)]


def test_table_shape():
    pols, eps = _population(10, 4)
    rs = nft.compile_node(pols, eps, {}, eps[:3])
    text = rs.render()
    assert text.startswith("table inet routed-policy\ndelete table inet routed-policy\n")
    assert rs.chains["egress"][1] == "ct state established,related accept"  # replies pass first
    assert rs.chains["ingress"][2] == 'oifname "cali*" oifname != @pods drop'  # unprogrammed pods are closed
    assert rs.sets["pods"][1] == ['"cali00000000000"', '"cali00000000001"', '"cali00000000002"']
    assert all("hook forward" in rs.chains[c][0] for c in ("egress", "ingress"))
    assert "hook input" not in text and "hook output" not in text  # the host's own traffic is never policed

