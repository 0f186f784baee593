"""routed under podman's CNI backend: podman runs in the real host netns, creates each
container's netns itself and runs our conflist (no portmap/bandwidth: they would program
the real host); the routed plugin puts the host end of each veth in the node's host
netns (the agent's --netns). podman probes VERSION first and sends only K8S_POD_NAME.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from tests.support.wait import eventually

from tests.callers.callers import (
    NETWORK,
    HostSnapshot,
    Podman,
    busybox_rootfs,
    host_routes,
    link_names,
    routed_node,
)

pytestmark = pytest.mark.root

POOL = ipaddress.ip_network("10.60.0.0/16")


@pytest.fixture
def real_host(root):
    """The real host before anything of the test exists; checked after everything is gone."""
    snapshot = HostSnapshot.take()
    yield snapshot
    snapshot.assert_unchanged()


@pytest.fixture
def node(real_host, etcd, tmp_path):
    with routed_node(etcd, tmp_path, chain=False) as node:
        conflist = node.conflist.read_text()
        assert '"portmap"' not in conflist and '"bandwidth"' not in conflist
        yield node


@pytest.fixture
def podman(node, tmp_path):
    pm = Podman(node, tmp_path / "podman")
    try:
        yield pm
    finally:
        pm.close()


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    return busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


def _start(podman, node, name, rootfs):
    """Run a container on our network; (ID, IP, host veth, sandbox netns path)."""
    try:
        cid = podman.run(name, rootfs, "sleep", "300")
    except AssertionError as err:
        raise AssertionError(f"{err}\nagent log:\n{node.agent_log()}") from None
    info = podman.inspect(name)
    assert info["State"]["Running"], info["State"]
    sandbox = info["NetworkSettings"]["SandboxKey"]
    podman.sandboxes.append(sandbox)
    net = info["NetworkSettings"]["Networks"][NETWORK]
    ip = ipaddress.ip_address(net["IPAddress"])
    assert ip in POOL and net["IPPrefixLen"] == 32, net
    # What the container itself sees.
    inside = podman("exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"inet {ip}/32 " in inside, inside
    # The host end is in the node's host netns, routed to the container.
    routes = [line for line in host_routes(node.host.name).splitlines() if line.startswith(f"{ip} ")]
    assert len(routes) == 1 and "proto 201" in routes[0], host_routes(node.host.name)
    host_if = routes[0].split(" dev ")[1].split()[0]
    assert host_if.startswith("cali") and host_if in link_names(node.host.name)
    # The address is held in etcd by this container's handle.
    assert [str(a) for a in node.held_by(f"{NETWORK}.{cid}.eth0")] == [str(ip)]
    return cid, ip, host_if, sandbox


def test_two_podman_containers_get_pod_addresses_and_reach_each_other(node, podman, rootfs):
    c1, ip1, if1, sb1 = _start(podman, node, "c1", rootfs)
    c2, ip2, if2, sb2 = _start(podman, node, "c2", rootfs)
    assert ip1 != ip2 and if1 != if2
    assert sorted(node.handles()) == sorted(f"/routed/v1/ipam/handles/{NETWORK}.{c}.eth0" for c in (c1, c2))
    # The veths' host ends are not on the real host.
    real_links = link_names()
    assert if1 not in real_links and if2 not in real_links

    for src, dst in (("c1", ip2), ("c2", ip1)):
        proc = podman("exec", src, "ping", "-c1", "-W2", str(dst), check=False)
        assert proc.returncode == 0 and "1 packets received" in proc.stdout, proc.stdout + proc.stderr

    podman("rm", "-f", "-t", "0", "c1", "c2")
    assert podman("ps", "-a", "-q").stdout.strip() == ""
    eventually(lambda: node.handles() == [], "every address released")
    eventually(lambda: node.held_by(f"{NETWORK}.{c1}.eth0") == [] and node.held_by(f"{NETWORK}.{c2}.eth0") == [],
               "both released")
    assert not [name for name in link_names(node.host.name) if name.startswith("cali")]
    routes = host_routes(node.host.name)
    assert f"{ip1} " not in routes and f"{ip2} " not in routes
    assert not os.path.exists(sb1) and not os.path.exists(sb2)


def test_podman_restart_gives_the_network_back_and_leaks_nothing(node, podman, rootfs):
    """stop runs DEL, start runs ADD again for the same container: one handle, one veth."""
    cid, ip, host_if, sandbox = _start(podman, node, "r1", rootfs)
    peer_id, peer_ip, _, _ = _start(podman, node, "r2", rootfs)

    podman("stop", "-t", "0", "r1")
    eventually(lambda: node.held_by(f"{NETWORK}.{cid}.eth0") == [], "released")
    assert host_if not in link_names(node.host.name)
    assert f"{ip} " not in host_routes(node.host.name)
    assert not os.path.exists(sandbox)

    podman("start", "r1")
    info = podman.inspect("r1")
    assert info["State"]["Running"]
    podman.sandboxes.append(info["NetworkSettings"]["SandboxKey"])
    new_ip = ipaddress.ip_address(info["NetworkSettings"]["Networks"][NETWORK]["IPAddress"])
    assert new_ip in POOL
    assert [str(a) for a in node.held_by(f"{NETWORK}.{cid}.eth0")] == [str(new_ip)]
    assert sorted(node.handles()) == sorted(f"/routed/v1/ipam/handles/{NETWORK}.{c}.eth0" for c in (cid, peer_id))
    assert len([n for n in link_names(node.host.name) if n.startswith("cali")]) == 2
    proc = podman("exec", "r1", "ping", "-c1", "-W2", str(peer_ip), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    podman("rm", "-f", "-t", "0", "r1", "r2")
    eventually(lambda: node.handles() == [], "every address released")
    assert not [n for n in link_names(node.host.name) if n.startswith("cali")]
