"""Least privilege between the DaemonSet's containers (issue 10.8), on the rendered chart.

The ExaBGP sidecar parses input from the network: it shares only the BGP configuration
directory with the agent (the files the agent writes for it and the socket its helper
reports through), never the CNI socket's directory, the agent's state, the host's
namespaces or any other host path. It runs with no capability but the one binding port
179 needs; on an unprivileged listen port it runs as a non-root user with none at all.
Its root filesystem is read-only. Each set is also validated against Kubernetes 1.32.
"""

from __future__ import annotations

import posixpath

import pytest

from tests.chart import chartutil as cu
from tests.chart.test_chart import _parse_routed

PORTS = {"port-179": {}, "port-1179": {"bgp": {"listenPort": 1179}},
         "port-1179-own-user": {"bgp": {"listenPort": 1179}, "bgpSpeaker": {"runAsUser": 4242, "runAsGroup": 4243}}}


def _under(path: str, directory: str) -> bool:
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _containers(values: dict):
    rendered = cu.render(values)
    ds = rendered.daemonset()
    return rendered, ds, rendered.container(ds, "agent"), rendered.container(ds, "bgp")


@pytest.mark.parametrize("name", sorted(PORTS))
def test_speaker_sees_only_the_bgp_configuration(name):
    rendered, ds, agent, bgp = _containers(PORTS[name])
    assert cu.validation_errors(rendered.docs) == []
    volumes = cu.volumes(ds)
    agent_args, bgp_args = _parse_routed(cu.argv(agent)), _parse_routed(cu.argv(bgp))
    bgp_mounts = cu.mounts(bgp)
    # one volume, shared with the agent, private to the pod (no host path at all)
    assert len(bgp_mounts) == 1, bgp_mounts
    (shared_path, shared), = bgp_mounts.items()
    assert "hostPath" not in volumes[shared["name"]] and "emptyDir" in volumes[shared["name"]]
    assert cu.mounts(agent)[shared_path]["name"] == shared["name"]
    # what the speaker needs is in it: the configuration and the helper's socket
    assert bgp_args.config_dir == agent_args.bgp_dir and _under(agent_args.bgp_dir, shared_path)
    assert _under(agent_args.bgp_socket, shared_path)
    # what it must not reach is not
    for private in (agent_args.cni_socket, agent_args.spool_dir, agent_args.state_dir, agent_args.secrets_dir):
        assert not _under(private, shared_path), private
    install = cu.argv(rendered.container(ds, "install-cni", init=True))
    assert install[install.index("--cni-socket") + 1] == agent_args.cni_socket  # the shim still finds the agent


@pytest.mark.parametrize("name", sorted(PORTS))
def test_speaker_runs_with_least_privilege(name):
    rendered, ds, agent, bgp = _containers(PORTS[name])
    sc = bgp["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged")
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    pod = cu.pod_spec(ds).get("securityContext") or {}
    if name == "port-179":
        # Kubernetes gives added capabilities to root only (a non-root process would need
        # file capabilities and privilege escalation): root with this one capability.
        assert sc["capabilities"]["add"] == ["NET_BIND_SERVICE"]
        assert "fsGroup" not in pod
    else:
        values = PORTS[name].get("bgpSpeaker", {})
        assert sc["runAsNonRoot"] is True and "add" not in sc["capabilities"]
        assert sc["runAsUser"] == values.get("runAsUser", 65532) != 0
        assert sc["runAsGroup"] == values.get("runAsGroup", 65532)
        assert pod["fsGroup"] == sc["runAsGroup"]  # the shared volume is the speaker's group's
    assert agent["securityContext"].get("privileged") is True  # the agent is who needs privilege


TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.mark.parametrize("name", ["defaults", "everything"])
def test_only_the_agent_holds_credentials(name):
    """The API token and the etcd client configuration and certificates are the agent's."""
    from tests.chart.test_chart import VALUE_SETS

    rendered = cu.render(VALUE_SETS[name])
    ds = rendered.daemonset()
    agent, bgp = rendered.container(ds, "agent"), rendered.container(ds, "bgp")
    assert cu.pod_spec(ds)["automountServiceAccountToken"] is False
    token = cu.volumes(ds)[cu.mounts(agent)[TOKEN]["name"]]["projected"]["sources"]
    assert any("serviceAccountToken" in s for s in token) and cu.mounts(agent)[TOKEN]["readOnly"] is True
    assert TOKEN not in cu.mounts(bgp)
    assert "envFrom" not in bgp and not any("ETCD" in e["name"] for e in bgp.get("env", []))
    assert agent["envFrom"]  # the agent does reach etcd


def test_speaker_user_must_not_be_root():
    assert "runAsUser" in cu.render_error({"bgp": {"listenPort": 1179}, "bgpSpeaker": {"runAsUser": 0}})
