"""routedctl apply/get/delete of network policies (routed's and Kubernetes') and
Namespaces, as the installed console script against a real etcd."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli import dump, fails, ok
from tests.unit.test_calico_policy import SAMPLE_NETWORKPOLICY

pytestmark = pytest.mark.etcd

ROUTED_NP = {"apiVersion": "routed.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "db", "namespace": "x"},
             "spec": {"order": 100, "selector": "app == 'db'",
                      "ingress": [{"action": "Allow", "protocol": "TCP",
                                   "source": {"selector": "app == 'api'"}, "destination": {"ports": [5432]}}]}}
KUBE_NP = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "db", "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]}}
GNP = {"apiVersion": "routed.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "deny-icmp"},
       "spec": {"egress": [{"action": "Deny", "protocol": "ICMP"}, {"action": "Pass"}]}}
NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}}


@pytest.fixture
def env(etcd):
    return etcd.env()


def test_policies_and_namespaces_apply_get_delete(env, tmp_path):
    f = tmp_path / "policies.yaml"
    f.write_text(dump(ROUTED_NP, KUBE_NP, GNP, NS))
    out = ok(env, "apply", "-f", str(f)).stdout.split("\n")
    assert out[:4] == ["networkpolicy/x/db created", "networkpolicy.networking.k8s.io/x/db created",
                       "globalnetworkpolicy/deny-icmp created", "namespace/x created"]
    # Same name and namespace, two kinds: both stored, each under its own key.
    mine = json.loads(ok(env, "get", "networkpolicy", "db", "-n", "x", "-o", "json").stdout)
    assert mine["spec"]["order"] == 100 and mine["metadata"]["namespace"] == "x"
    theirs = json.loads(ok(env, "get", "knp", "db", "-n", "x", "-o", "json").stdout)
    assert theirs["apiVersion"] == "networking.k8s.io/v1" and theirs["spec"]["policyTypes"] == ["Ingress"]
    table = ok(env, "get", "networkpolicies").stdout
    assert table.split("\n")[0].split() == ["NAMESPACE", "NAME", "ORDER", "SELECTOR"]
    assert "x" in table and "app == 'db'" in table
    assert "team=a" in ok(env, "get", "ns").stdout
    assert fails(env, "get", "networkpolicy", "db") == 'routedctl: NetworkPolicy "default/db" not found'
    assert ok(env, "delete", "networkpolicy", "db", "-n", "x").stdout.strip() == "networkpolicy/x/db deleted"
    assert ok(env, "get", "knp", "db", "-n", "x")  # the other kind is untouched
    assert ok(env, "delete", "-f", str(f), "--skip-not-found").stdout.split("\n")[:3] == [
        "networkpolicy.networking.k8s.io/x/db deleted", "globalnetworkpolicy/deny-icmp deleted",
        "namespace/x deleted"]


def test_a_bad_policy_is_refused_naming_the_field_and_nothing_is_written(env, tmp_path):
    bad = json.loads(json.dumps(ROUTED_NP))
    bad["spec"]["ingress"][0]["destination"]["ports"] = ["99999"]
    f = tmp_path / "bad.yaml"
    f.write_text(dump(GNP, bad))
    line = fails(env, "apply", "-f", str(f))
    assert "document 2" in line and "spec.ingress[0].destination.ports" in line and "99999" in line, line
    assert json.loads(ok(env, "get", "gnp", "-o", "json").stdout)["items"] == []


CALICO_POLICIES = SAMPLE_NETWORKPOLICY.lstrip() + """\
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: deny-blue
spec:
  order: 10
  selector: color == 'red'
  ingress:
    - action: Deny
      protocol: TCP
      source:
        selector: color == 'blue'
        namespaceSelector: projectcalico.org/name == 'dev'
"""


def test_calico_policies_apply_as_routed_ones(env, tmp_path):
    f = tmp_path / "calico.yaml"
    f.write_text(CALICO_POLICIES)
    assert ok(env, "apply", "-f", str(f)).stdout.split("\n")[:2] == [
        "networkpolicy/production/allow-tcp-6379 created", "globalnetworkpolicy/deny-blue created"]
    np = json.loads(ok(env, "get", "networkpolicy", "allow-tcp-6379", "-n", "production", "-o", "json").stdout)
    assert np["apiVersion"] == "routed.io/v1" and np["spec"]["ingress"][0]["destination"]["ports"] == [6379]
    assert "metadata" not in np["spec"]["ingress"][0]
    gnp = json.loads(ok(env, "get", "gnp", "deny-blue", "-o", "json").stdout)
    assert gnp["spec"]["ingress"][0]["source"]["namespaceSelector"] == "projectcalico.org/name == 'dev'"
    # convert prints the same routed form without a datastore.
    converted = ok({**env, "ROUTED_ETCD_ENDPOINTS": "http://127.0.0.1:1"}, "convert", "-f", str(f)).stdout
    assert "apiVersion: routed.io/v1" in converted and "namespace: production" in converted


def test_a_calico_policy_routed_cannot_honour_is_refused_by_path_and_nothing_is_written(env, tmp_path):
    f = tmp_path / "calico.yaml"
    f.write_text(CALICO_POLICIES.replace("        selector: color == 'blue'\n",
                                         "        serviceAccounts:\n          names: [api]\n"))
    line = fails(env, "apply", "-f", str(f))
    assert 'GlobalNetworkPolicy "deny-blue" (projectcalico.org/v3): spec.ingress[0].source.serviceAccounts: ' \
           "not supported by routed" in line, line
    assert json.loads(ok(env, "get", "networkpolicies", "-o", "json").stdout)["items"] == []
