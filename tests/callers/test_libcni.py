"""routed under the reference CNI library: our own Go program built on libcni (as
containerd, CRI-O and podman embed it) runs the installed conflist — the routed plugin,
then Debian's portmap and bandwidth — inside the node's host netns.

The caller runs with an IPv4-only PATH (no ip6tables): Debian's portmap 1.1.1 cannot
CHECK an IPv4-only pod otherwise (containernetworking/plugins#819). Bandwidth limits are
always given: its CHECK crashes without them (containernetworking/plugins#1221).
"""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from tests.support.wait import eventually

from tests.callers.callers import (
    HostSnapshot,
    Libcni,
    addresses,
    host_routes,
    iptables_save,
    libcni_caller,  # noqa: F401  (session fixture: the built Go caller)
    link_debian_plugins,
    link_names,
    routed_node,
    wait_for,
)
from tests.support.netns import Netns

pytestmark = pytest.mark.root

POOL = ipaddress.ip_network("10.60.0.0/16")
NODE_IP = "192.0.2.10"
HOST_PORT, CONTAINER_PORT = 8080, 80
RATE = 100_000_000  # bits/s
CAPS = {"portMappings": [{"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": RATE, "ingressBurst": 1_000_000, "egressRate": RATE, "egressBurst": 1_000_000}}


@pytest.fixture
def node(root, etcd, tmp_path):
    with routed_node(etcd, tmp_path, chain=True, node_ip=NODE_IP) as node:
        link_debian_plugins(node.bin_dir, "portmap", "bandwidth")
        yield node


@pytest.fixture
def cni(node, libcni_caller, tmp_path):  # noqa: F811
    return Libcni(libcni_caller, node, tmp_path)


@pytest.fixture
def pod():
    ns = Netns("pod")
    try:
        yield ns
    finally:
        ns.delete()


def _add(cni, node, container, pod):
    code, result, out = cni("add", container, pod.path, caps=CAPS)
    assert code == 0, f"{out}\n{node.agent_log()}"
    assert result["cniVersion"] == "1.0.0"
    (ip,) = [ipaddress.ip_interface(i["address"]) for i in result["ips"]]
    host_ifs = [i["name"] for i in result["interfaces"] if i["name"].startswith("cali")]
    assert len(host_ifs) == 1 and "sandbox" not in result["interfaces"][0], result
    return result, ip, host_ifs[0]


def _dnat_rules(netns: str | None) -> list[str]:
    return [line for line in iptables_save(netns).splitlines() if f"--dport {HOST_PORT}" in line]


def test_add_check_del_through_libcni_with_portmap_and_bandwidth(node, cni, pod):
    real_host = HostSnapshot.take()
    result, ip, host_if = _add(cni, node, "web-1", pod)

    # routed's part: a /32 from the pool, in the pod and in etcd, routed by the host.
    assert ip.ip in POOL and ip.network.prefixlen == 32
    assert addresses(pod.name, "eth0") == [str(ip.ip)]
    assert host_if in link_names(node.host.name)
    assert f"{ip.ip} dev {host_if} proto 201 scope link" in host_routes(node.host.name)
    handle = "k8s-pod-network.web-1.eth0"
    assert [str(a) for a in node.held_by(handle)] == [str(ip.ip)]
    assert node.handles() == [f"/routed/v1/ipam/handles/{handle}"]

    # portmap's part: the DNAT rule, in the node's host netns and not on the real host.
    dnat = _dnat_rules(node.host.name)
    assert any(f"-j DNAT --to-destination {ip.ip}:{CONTAINER_PORT}" in rule for rule in dnat), dnat
    assert _dnat_rules(None) == [] and "CNI-HOSTPORT" not in iptables_save()

    # bandwidth's part: a token bucket on the host veth (pod ingress) and on an ifb (egress).
    ifb = [i["name"] for i in result["interfaces"] if i["name"].startswith("bwp")]
    assert len(ifb) == 1 and ifb[0] in link_names(node.host.name)
    assert "tbf" in node.host.run("tc", "qdisc", "show", "dev", host_if).stdout
    assert "tbf" in node.host.run("tc", "qdisc", "show", "dev", ifb[0]).stdout

    # CHECK walks the whole chain with the cached result as prevResult.
    code, _, out = cni("check", "web-1", pod.path, caps=CAPS)
    assert code == 0, f"{out}\n{node.agent_log()}"

    code, _, out = cni("del", "web-1", pod.path, caps=CAPS)
    assert code == 0, f"{out}\n{node.agent_log()}"
    host_links = link_names(node.host.name)
    assert host_if not in host_links and ifb[0] not in host_links
    assert link_names(pod.name) == {"lo"}
    assert str(ip.ip) + " " not in host_routes(node.host.name)
    assert _dnat_rules(node.host.name) == []
    eventually(lambda: node.held_by(handle) == [] and node.handles() == [], "address released")
    real_host.assert_unchanged()


def test_host_port_reaches_the_pod(node, cni, pod):
    """The DNAT portmap wrote in the host netns carries a connection to <node IP>:8080
    through the routed veth to the pod's port 80; after DEL nothing answers there."""
    _, ip, _ = _add(cni, node, "web-2", pod)
    server = subprocess.Popen(
        ["ip", "netns", "exec", pod.name, "/usr/bin/python3", "-c",
         "import socket\n"
         "s = socket.create_server(('0.0.0.0', %d))\n"
         "c, peer = s.accept()\n"
         "c.sendall(('hello from the pod, you are %%s' %% peer[0]).encode())\n"
         "c.close()\n" % CONTAINER_PORT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = ["/usr/bin/python3", "-c",
              "import socket, sys\n"
              "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
              "print(s.recv(100).decode())\n", NODE_IP, str(HOST_PORT)]
    try:
        assert wait_for(lambda: f":{CONTAINER_PORT} " in pod.run("ss", "-ltnH").stdout), "pod server not listening"
        answer = node.host.run(*client, check=False)
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() == f"hello from the pod, you are {NODE_IP}"
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    code, _, out = cni("del", "web-2", pod.path, caps=CAPS)
    assert code == 0, out
    after = node.host.run(*client, check=False)
    assert after.returncode != 0 and "ConnectionRefusedError" in after.stderr


def test_check_reports_a_broken_pod_and_del_still_cleans_up(node, cni, pod):
    _, ip, host_if = _add(cni, node, "web-3", pod)
    node.host.run("ip", "route", "del", f"{ip.ip}/32", "dev", host_if)

    code, error, out = cni("check", "web-3", pod.path, caps=CAPS)
    assert code == 1 and error["code"] == 103, out  # routed's CHECK_FAILED, through libcni
    assert "route" in error["msg"] and str(ip.ip) in error["msg"]

    code, _, out = cni("del", "web-3", pod.path, caps=CAPS)
    assert code == 0, out
    assert host_if not in link_names(node.host.name)
    assert _dnat_rules(node.host.name) == []
    eventually(lambda: node.handles() == [], "every address released")


def test_del_after_the_netns_is_gone_and_again(node, cni, pod):
    """A runtime may tear the sandbox down first and repeat DEL: both succeed, and the
    address, the route and the port mapping are all gone."""
    _, ip, host_if = _add(cni, node, "web-4", pod)
    pod.delete()  # the kernel destroys the netns, its veth and so the host end, a little later
    assert wait_for(lambda: host_if not in link_names(node.host.name)), "the pod netns was never destroyed"

    for attempt in (1, 2):
        code, _, out = cni("del", "web-4", pod.path, caps=CAPS)
        assert code == 0, f"DEL #{attempt}: {out}\n{node.agent_log()}"
        assert str(ip.ip) + " " not in host_routes(node.host.name)
        assert _dnat_rules(node.host.name) == []
        eventually(lambda: node.handles() == [], "every address released")
