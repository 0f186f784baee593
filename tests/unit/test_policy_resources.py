"""Validation of network policy resources: routed.io NetworkPolicy/GlobalNetworkPolicy and
the Kubernetes NetworkPolicy/Namespace documents routedctl takes as they are."""

from __future__ import annotations

import pytest

from routed import resources as r
from routed.errors import InvalidResource


def np(spec: dict, kind: str = "NetworkPolicy", **meta) -> dict:
    return {"apiVersion": "routed.io/v1", "kind": kind, "metadata": {"name": "p", **meta}, "spec": spec}


def knp(spec: dict, **meta) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x", **meta}, "spec": spec}


def test_routed_policy_defaults_namespace_and_types():
    p = r.parse(np({"selector": "app == 'db'", "egress": [{"action": "Deny"}]}))
    assert isinstance(p, r.NetworkPolicy)
    assert p.namespace == "default" and p.spec.types == ["Egress"] and p.spec.order is None
    both = r.parse(np({"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}))
    assert both.spec.types == ["Ingress", "Egress"]
    assert r.parse(np({})).spec.types == ["Ingress"]


def test_routed_rule_fields_are_accepted():
    rule = {"action": "Allow", "protocol": "TCP",
            "source": {"selector": "role == 'fe'", "namespaceSelector": "team == 'a'",
                       "nets": ["10.0.0.0/8"], "notNets": ["10.1.0.0/16"]},
            "destination": {"ports": [80, "8000:8080", "http"], "notPorts": [81]}}
    p = r.parse(np({"order": 10, "ingress": [rule, {"action": "Log"}, {"action": "Pass"},
                                              {"action": "Deny", "protocol": "ICMP",
                                               "icmp": {"type": 8, "code": 0}},
                                              {"action": "Allow", "protocol": 132}]}))
    assert p.spec.ingress[0].destination.ports == [80, "8000:8080", "http"]
    g = r.parse(np({"namespaceSelector": "all()", "selector": "has(app)"}, kind="GlobalNetworkPolicy"))
    assert isinstance(g, r.GlobalNetworkPolicy) and g.namespace is None


@pytest.mark.parametrize("doc, message", [
    (np({"selector": "app =="}), "spec.selector: invalid selector"),
    (np({"ingress": [{"action": "Allo"}]}), "spec.ingress[0].action:"),
    (np({"ingress": [{"action": "Allow", "destination": {"ports": [80]}}]}),
     "spec.ingress[0].destination.ports: ports need protocol"),
    (np({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [0]}}]}),
     "spec.ingress[0].destination.ports: port 0 is out of range"),
    (np({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["90:80"]}}]}),
     "must be ascending"),
    (np({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["HTTP"]}}]}),
     "is not a port name"),
    (np({"ingress": [{"action": "Allow", "protocol": "GRE"}]}), 'spec.ingress[0].protocol: unknown protocol "GRE"'),
    (np({"ingress": [{"action": "Allow", "protocol": 256}]}), "protocol number 256 is out of range"),
    (np({"egress": [{"action": "Deny", "protocol": "ICMP", "icmp": {"code": 3}}]}),
     "spec.egress[0].icmp.code: an ICMP code needs a type"),
    (np({"egress": [{"action": "Deny", "protocol": "TCP", "icmp": {"type": 3}}]}), "spec.egress[0].icmp: icmp needs"),
    (np({"egress": [{"action": "Deny", "destination": {"nets": ["10.0.0.1/8"]}}]}),
     "spec.egress[0].destination.nets[0]: host bits set"),
    (np({"egress": [{"action": "Deny", "source": {"selector": "a in {"}}]}), "spec.egress[0].source.selector:"),
    (np({"types": ["Ingress", "Ingress"]}), "spec.types: a type appears twice"),
    (np({}, namespace="Bad_NS"), "metadata.namespace:"),
    (np({}, kind="GlobalNetworkPolicy", namespace="x"), "metadata.namespace: unknown field (GlobalNetworkPolicy is not namespaced)"),
    (knp({}), "spec.podSelector: field is required"),
    (knp({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
     "spec.ingress[0].from[0].ipBlock.except: 11.0.0.0/16 is not inside 10.0.0.0/8"),
    (knp({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
     "ipBlock cannot be combined"),
    (knp({"podSelector": {}, "egress": [{"ports": [{"port": "dns", "endPort": 60}]}]}),
     "spec.egress[0].ports[0].endPort: endPort needs a numeric port"),
    (knp({"podSelector": {}, "egress": [{"ports": [{"port": 80, "endPort": 70}]}]}), "endPort 70 must be within"),
    (knp({"podSelector": {}, "egress": [{"ports": [{"protocol": "ICMP"}]}]}), "spec.egress[0].ports[0].protocol:"),
    (knp({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
     "spec.podSelector.matchExpressions[0].values: operator In needs values"),
    # Label selectors take what the API server takes: keys and values as labels have them.
    (knp({"podSelector": {"matchLabels": {"app": "web server"}}}),
     'spec.podSelector.matchLabels: label "app": value "web server" must be'),
    (knp({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"-team": "a"}}}]}]}),
     'spec.ingress[0].from[0].namespaceSelector.matchLabels: label key "-team"'),
    (knp({"podSelector": {"matchExpressions": [{"key": "a b", "operator": "Exists"}]}}),
     'spec.podSelector.matchExpressions[0].key: label key "a b"'),
    (knp({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "y z"]}]}}),
     'spec.podSelector.matchExpressions[0].values: label "a": value "y z" must be'),
    ({"apiVersion": "networking.k8s.io/v2", "kind": "NetworkPolicy", "metadata": {"name": "p"}},
     'apiVersion: must be "routed.io/v1" or "networking.k8s.io/v1"'),
    ({"apiVersion": "routed.io/v1", "kind": "Namespace", "metadata": {"name": "x"}}, 'apiVersion: must be "v1"'),
])
def test_a_bad_policy_is_one_line_naming_the_field(doc, message):
    with pytest.raises(InvalidResource) as err:
        r.parse(doc)
    text = str(err.value)
    assert "\n" not in text and message in text, text


def test_kubernetes_policy_keeps_its_shape_and_defaults_policy_types():
    p = r.parse(knp({"podSelector": {"matchLabels": {"app": "a"}},
                     "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {}}],
                                  "ports": [{"port": 80, "endPort": 90}, {"protocol": "UDP", "port": "dns"}]}]},
                    generation=4, managedFields=[{"manager": "kubectl"}]))
    assert isinstance(p, r.KubeNetworkPolicy)
    assert p.spec.policy_types == ["Ingress"]
    assert p.to_dict()["spec"]["ingress"][0]["ports"][0] == {"protocol": "TCP", "port": 80, "endPort": 90}
    assert "generation" not in p.to_dict()["metadata"]  # what the API server adds is not stored
    egress = r.parse(knp({"podSelector": {}, "egress": [{}]}))
    assert egress.spec.policy_types == ["Ingress", "Egress"]
    assert r.parse(r.parse(knp({"podSelector": {}})).to_dict()).spec.ingress is None


def test_namespace_document():
    ns = r.parse({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}},
                  "status": {"phase": "Active"}})
    assert isinstance(ns, r.Namespace) and ns.metadata.labels == {"ns": "x"}
    assert r.resolve_kind("ns") is r.Namespace and r.resolve_kind("knp") is r.KubeNetworkPolicy
    assert r.resolve_kind("gnp") is r.GlobalNetworkPolicy and r.resolve_kind("networkpolicy") is r.NetworkPolicy
