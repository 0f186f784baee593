"""Pod labels for policy without Kubernetes: `routed lab pod add --labels` passes them in
runtimeConfig, the plugin hands them to the agent's workload endpoint."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from cni.plugin import _runtime_labels
from cni.spec import CNIError
from routed.errors import RoutedError
from routed.lab.cli import _labels
from routed.lab.pods import plugin_stdin


def test_lab_passes_labels_in_runtime_config():
    conflist = {"name": "k8s-pod-network", "cniVersion": "1.0.0"}
    plugin = {"type": "routed", "runtimeConfig": {"IPs": ["10.0.0.1/32"]}}
    conf = json.loads(plugin_stdin(conflist, plugin, None, {"app": "web"}))
    assert conf["runtimeConfig"] == {"IPs": ["10.0.0.1/32"], "labels": {"app": "web"}}
    assert "runtimeConfig" not in json.loads(plugin_stdin(conflist, {"type": "routed"}))


def test_lab_labels_option():
    assert _labels("app=web, tier=fe") == {"app": "web", "tier": "fe"}
    assert _labels("") == {}
    with pytest.raises(RoutedError, match="--labels: 'app' is not KEY=VALUE"):
        _labels("app")


def test_plugin_reads_labels_or_leaves_them_to_the_pod_cache():
    conf = lambda rc: SimpleNamespace(runtime_config=rc)  # noqa: E731
    assert _runtime_labels(conf({"labels": {"app": "web"}})) == {"app": "web"}
    assert _runtime_labels(conf({})) is None
    with pytest.raises(CNIError):
        _runtime_labels(conf({"labels": {"app": 1}}))


def test_lab_status_marks_policy_blocked_pairs():
    from routed import resources as r
    from routed.lab.cli import matrix_section
    from routed.render import Output, render
    from routed.lab.status import blocked_pairs
    from routed.policy import model
    from routed.policy.evaluate import Cluster

    a = model.Endpoint("default", "a", {"app": "a"}, ("10.0.0.1",))
    b = model.Endpoint("default", "b", {"app": "b"}, ("10.0.0.2",))
    deny_a = r.parse({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "metadata": {"name": "deny", "namespace": "default"},
                      "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": []}})
    assert blocked_pairs(Cluster([a, b], {}, model.convert([deny_a]))) == {("10.0.0.2", "10.0.0.1")}
    reach = {"pods": ["n1/a", "n1/b"], "matrix": {"n1/a": {"n1/a": None, "n1/b": True},
                                                  "n1/b": {"n1/a": "policy", "n1/b": None}},
             "ok": 1, "failed": 0, "blocked": 1, "untested": 0, "seconds": 0.1}
    text, _ = render(Output(sections=[matrix_section(reach)]))
    assert "1/2 pod pairs answer ping, 1 blocked by policy (pol) (ALL REACHABLE THAT POLICY ALLOWS" in text
    assert "pol" in text.splitlines()[-1] and "NO" not in text
