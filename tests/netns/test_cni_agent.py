"""The CNI plugin end to end: the installed plugin as kubelet runs it, a real agent, real etcd,
a namespace playing the node's host, namespaces playing pods."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ipam.allocator import IPAM
from routed import resources as r
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from routed.dataplane.names import host_veth_name
from tests.support.agent import AgentProcess, cni
from tests.support.etcd import EtcdServer
from tests.support.netns import node_host
from tests.support.wait import eventually

pytestmark = pytest.mark.root

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
NODE_IP = "192.0.2.10"


def pool(name, cidr, **spec):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": name},
                    "spec": {"cidr": cidr, **spec}})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    if os.geteuid() != 0:
        pytest.fail("these tests need root (network namespaces)", pytrace=False)
    workdir = tmp_path_factory.mktemp("cni")
    etcd = EtcdServer(workdir / "etcd").start()
    host = node_host(f"{NODE_IP}/24")
    agent = None
    try:
        kv = etcd.client()
        store = ResourceStore(kv)
        store.create(pool("main", "10.50.0.0/16"))
        store.create(pool("tiny", "10.99.0.0/30", blockSize=30))
        store.create(pool("v6", "fd00:50::/64"))
        agent = AgentProcess(workdir / "agent", etcd.url, host, "node-1", f"{NODE_IP}/24").start()
        yield type("Cluster", (), {"etcd": etcd, "kv": kv, "host": host, "agent": agent, "workdir": workdir})
    finally:
        if agent:
            agent.stop()
        host.delete()
        etcd.stop()


def handles(kv) -> list[str]:
    return [keys.last_segment(k) for k in kv.keys(keys.HANDLES)]


def cali_links(host) -> list[str]:
    return [line.split(":")[1].split("@")[0].strip() for line in host.run("ip", "-o", "link").stdout.splitlines()
            if "cali" in line]


def our_routes(host) -> str:
    return (host.run("ip", "route", "show", "proto", "201").stdout
            + host.run("ip", "-6", "route", "show", "proto", "201").stdout)


def conf(cluster, version="1.0.0", **extra):
    return cluster.agent.conf(version, **extra)


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_in_every_version(cluster, pods, version):
    pod = pods()
    cid = f"c-{version.replace('.', '')}"
    code, result, raw = cni("ADD", conf(cluster, version), container=cid, netns=pod.path, pod=("ns1", cid))
    assert code == 0, raw
    assert result["cniVersion"] == version
    (entry,) = result["ips"]
    ip = entry["address"].split("/")[0]
    assert entry["address"].endswith("/32") and ip.startswith("10.50.")
    assert ("version" in entry) == version.startswith("0.")
    host_if = host_veth_name("ns1", cid)
    host_entry = result["interfaces"][0]
    assert (host_entry["name"], host_entry["mac"]) == (host_if, "ee:ee:ee:ee:ee:ee")
    assert host_entry.get("mtu") == (1450 if version == "1.1.0" else None)  # mtu came with 1.1.0
    assert result["interfaces"][1]["sandbox"] == pod.path
    assert f"{ip}/32" in pod.run("ip", "-o", "addr", "show", "eth0").stdout
    assert f"{ip} dev {host_if} scope link" in our_routes(cluster.host)  # the filter hides "proto 201"
    assert f"k8s-pod-network.{cid}.eth0" in handles(cluster.kv)

    code, _, raw = cni("CHECK", conf(cluster, version, prevResult=result), container=cid, netns=pod.path,
                       pod=("ns1", cid))
    if version in ("0.3.0", "0.3.1"):
        assert code == 0  # CHECK came with 0.4.0; older callers never send it, we answer it anyway
    else:
        assert code == 0, raw
    if version == "1.1.0":
        assert cni("STATUS", conf(cluster, version))[0] == 0

    code, _, raw = cni("DEL", conf(cluster, version, prevResult=result), container=cid, netns=pod.path,
                       pod=("ns1", cid))
    assert code == 0, raw
    # The route goes before DEL answers; the address and the veth follow in the background.
    assert f"{ip} " not in our_routes(cluster.host)
    eventually(lambda: f"k8s-pod-network.{cid}.eth0" not in handles(cluster.kv), "address not released")
    eventually(lambda: host_if not in cali_links(cluster.host), f"{host_if} was not deleted")


BAD_INPUT = [
    ("malformed JSON", {}, "{not json", 6),
    ("no container id", {"CNI_CONTAINERID": ""}, None, 4),
    ("unknown cniVersion", {}, {"cniVersion": "0.9.9"}, 1),
    ("netns that does not exist", {"CNI_NETNS": "/var/run/netns/rt-does-not-exist"}, None, 4),
    ("interface name too long", {"CNI_IFNAME": "eth0-far-too-long"}, None, 4),
    ("pool that does not exist", {}, {"ipam": {"ipv4_pools": ["nope"]}}, 101),
    ("no command", {"CNI_COMMAND": ""}, None, 4),
]


@pytest.mark.parametrize("case, env, stdin, code", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_its_code_and_leaves_nothing(cluster, pods, case, env, stdin, code):
    pod = pods()
    before = (sorted(handles(cluster.kv)), cali_links(cluster.host), our_routes(cluster.host))
    if isinstance(stdin, dict):
        stdin = {**conf(cluster), **stdin}
    elif stdin is None:
        stdin = conf(cluster)
    got, body, raw = cni("ADD", stdin, container="bad", netns=pod.path, pod=("ns1", "bad"), extra_env=env)
    assert got == 1 and body is not None, raw
    assert body["code"] == code and "\n" not in body["msg"], body
    assert (sorted(handles(cluster.kv)), cali_links(cluster.host), our_routes(cluster.host)) == before
    assert pod.run("ip", "-o", "link").stdout.count("eth0") == 0


def test_two_pods_reach_each_other_and_the_node(cluster, pods):
    a, b = pods(), pods()
    ips = []
    for name, pod in (("web-a", a), ("web-b", b)):
        code, result, raw = cni("ADD", conf(cluster), container=name, netns=pod.path, pod=("ns1", name))
        assert code == 0, raw
        ips.append(result["ips"][0]["address"].split("/")[0])
    try:
        assert a.run("ping", "-c1", "-W2", ips[1], check=False).returncode == 0
        assert b.run("ping", "-c1", "-W2", ips[0], check=False).returncode == 0
        assert a.run("ping", "-c1", "-W2", NODE_IP, check=False).returncode == 0
        assert cluster.host.run("ping", "-c1", "-W2", ips[0], check=False).returncode == 0
    finally:
        for name, pod in (("web-a", a), ("web-b", b)):
            cni("DEL", conf(cluster), container=name, netns=pod.path, pod=("ns1", name))


def test_containerd_deletes_twice_the_second_time_without_netns(cluster, pods):
    pod = pods()
    code, result, _ = cni("ADD", conf(cluster), container="ctrd", netns=pod.path, pod=("ns1", "ctrd"))
    assert code == 0
    assert cni("DEL", conf(cluster, prevResult=result), container="ctrd", netns=pod.path, pod=("ns1", "ctrd"))[0] == 0
    pod.delete()  # the runtime removes the sandbox, then calls DEL again
    assert cni("DEL", conf(cluster), container="ctrd", netns="", pod=("ns1", "ctrd"))[0] == 0
    eventually(lambda: "k8s-pod-network.ctrd.eth0" not in handles(cluster.kv), "address not released")
    eventually(lambda: host_veth_name("ns1", "ctrd") not in cali_links(cluster.host), "veth left behind")


def test_an_add_failing_half_way_leaves_nothing_allocated(cluster, pods):
    pod = pods()
    pod.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0")  # the spec: that is an error
    before = (sorted(handles(cluster.kv)), cali_links(cluster.host), our_routes(cluster.host))
    code, body, raw = cni("ADD", conf(cluster), container="half", netns=pod.path, pod=("ns1", "half"))
    assert code == 1 and body["code"] == 102, raw
    assert (sorted(handles(cluster.kv)), cali_links(cluster.host), our_routes(cluster.host)) == before
    assert "eth0" in pod.run("ip", "-o", "link").stdout  # the pod's own interface is untouched


def test_pool_exhaustion_is_a_clear_error(cluster, pods):
    tiny = conf(cluster, ipam={"ipv4_pools": ["tiny"]})
    made = []
    try:
        for i in range(4):
            pod = pods()
            code, _, raw = cni("ADD", tiny, container=f"t{i}", netns=pod.path, pod=("ns1", f"t{i}"))
            assert code == 0, raw
            made.append((f"t{i}", pod))
        pod = pods()
        code, body, raw = cni("ADD", tiny, container="t4", netns=pod.path, pod=("ns1", "t4"))
        assert code == 1 and body["code"] == 100 and "tiny" in body["msg"], raw
        assert "k8s-pod-network.t4.eth0" not in handles(cluster.kv)
    finally:
        for cid, pod in made:
            cni("DEL", tiny, container=cid, netns=pod.path, pod=("ns1", cid))


def test_check_reports_drift(cluster, pods):
    pod = pods()
    code, result, _ = cni("ADD", conf(cluster), container="drift", netns=pod.path, pod=("ns1", "drift"))
    assert code == 0
    address = result["ips"][0]["address"]
    pod.run("ip", "addr", "del", address, "dev", "eth0")
    code, body, raw = cni("CHECK", conf(cluster, prevResult=result), container="drift", netns=pod.path,
                          pod=("ns1", "drift"))
    assert code == 1 and body["code"] == 103 and address.split("/")[0] in body["msg"], raw
    assert cni("DEL", conf(cluster), container="drift", netns=pod.path, pod=("ns1", "drift"))[0] == 0


def test_gc_releases_what_the_runtime_no_longer_knows(cluster, pods):
    for cid in ("gc-keep", "gc-gone"):
        code, _, raw = cni("ADD", conf(cluster, "1.1.0"), container=cid, netns=pods().path, pod=("ns1", cid))
        assert code == 0, raw
    gc = conf(cluster, "1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "gc-keep", "ifname": "eth0"}]})
    kept_elsewhere = IPAM(cluster.kv).allocate("k8s-pod-network.other-node.eth0", "node-2")
    code, _, raw = cni("GC", gc)
    assert code == 0, raw
    now = handles(cluster.kv)
    assert "k8s-pod-network.gc-keep.eth0" in now and "k8s-pod-network.gc-gone.eth0" not in now
    assert "k8s-pod-network.other-node.eth0" in now  # another node's pods are not this runtime's to judge
    IPAM(cluster.kv).release_handle(kept_elsewhere.handle)


def test_status_says_whether_addresses_can_be_assigned(cluster):
    assert cni("STATUS", conf(cluster, "1.1.0"))[0] == 0
    code, body, _ = cni("STATUS", conf(cluster, "1.1.0", ipam={"ipv4_pools": ["nope"]}))
    assert code == 1 and body["code"] == 50


def test_dual_stack_pods(cluster, pods):
    a, b = pods(), pods()
    both = conf(cluster, ipam={"assign_ipv4": True, "assign_ipv6": True, "ipv6_pools": ["v6"]})
    v6 = []
    for cid, pod in (("ds-a", a), ("ds-b", b)):
        code, result, raw = cni("ADD", both, container=cid, netns=pod.path, pod=("ns1", cid))
        assert code == 0, raw
        addresses = [i["address"] for i in result["ips"]]
        assert any(x.endswith("/32") for x in addresses) and any(x.endswith("/128") for x in addresses)
        v6.append(next(x for x in addresses if ":" in x).split("/")[0])
    try:
        assert a.run("ping", "-6", "-c1", "-W2", v6[1], check=False).returncode == 0
    finally:
        for cid, pod in (("ds-a", a), ("ds-b", b)):
            assert cni("DEL", both, container=cid, netns=pod.path, pod=("ns1", cid))[0] == 0
    eventually(lambda: not any(h.startswith("k8s-pod-network.ds-") for h in handles(cluster.kv)),
               "dual-stack addresses not released")


def test_static_address_from_runtime_config(cluster, pods):
    pod = pods()
    static = conf(cluster, runtimeConfig={"IPs": ["10.50.200.7/32"]})  # containerd capitalises keys
    code, result, raw = cni("ADD", static, container="static", netns=pod.path, pod=("ns1", "static"))
    assert code == 0 and result["ips"][0]["address"] == "10.50.200.7/32", raw
    other = pods()
    code, body, raw = cni("ADD", static, container="static2", netns=other.path, pod=("ns1", "static2"))
    assert code == 1 and body["code"] == 104, raw
    assert cni("DEL", static, container="static", netns=pod.path, pod=("ns1", "static"))[0] == 0


def test_the_nodes_blocks_get_blackhole_routes_and_the_node_is_registered(cluster, pods):
    pod = pods()
    code, result, _ = cni("ADD", conf(cluster), container="bh", netns=pod.path, pod=("ns1", "bh"))
    assert code == 0
    blocks = [keys.last_segment(k).replace("-", "/") for k in cluster.kv.keys(keys.affinity("node-1"))]
    deadline = time.monotonic() + 10
    while not all(f"blackhole {b}" in our_routes(cluster.host) for b in blocks):
        assert time.monotonic() < deadline, our_routes(cluster.host)
        time.sleep(0.1)
    node = ResourceStore(cluster.kv).get(r.Node, "node-1")
    assert node.spec.bgp.ipv4_address == f"{NODE_IP}/24"
    metrics = cluster.agent.metrics()
    assert 'routed_cni_requests_total{command="ADD",result="ok"}' in metrics
    assert cni("DEL", conf(cluster), container="bh", netns=pod.path, pod=("ns1", "bh"))[0] == 0


def test_del_while_the_agent_is_away_is_spooled_and_replayed(tmp_path, etcd, pods):
    host = node_host("192.0.2.20/24")
    agent = None
    try:
        ResourceStore(etcd.client()).create(pool("main", "10.51.0.0/16"))
        agent = AgentProcess(tmp_path / "agent", etcd.url, host, "node-s", "192.0.2.20/24").start()
        pod = pods()
        code, result, _ = cni("ADD", agent.conf(), container="sp", netns=pod.path, pod=("ns1", "sp"))
        assert code == 0
        agent.stop()
        code, body, raw = cni("ADD", agent.conf(), container="sp2", netns=pods().path, pod=("ns1", "sp2"))
        assert code == 1 and body["code"] == 11 and agent.socket in body["msg"], raw
        assert cni("DEL", agent.conf(), container="sp", netns=pod.path, pod=("ns1", "sp"))[0] == 0
        assert len(list(Path(agent.spool).glob("*.req"))) == 1
        kv = etcd.client()
        assert "k8s-pod-network.sp.eth0" in handles(kv)
        agent.start()
        deadline = time.monotonic() + 15
        while "k8s-pod-network.sp.eth0" in handles(kv):
            assert time.monotonic() < deadline, "the spooled DEL was not replayed"
            time.sleep(0.1)
        assert list(Path(agent.spool).glob("*.req")) == []
        eventually(lambda: host_veth_name("ns1", "sp") not in cali_links(host), "veth left behind")
    finally:
        if agent is not None:
            agent.stop()
        host.delete()


def test_sigterm_leaves_pods_connected(tmp_path, etcd, pods):
    host = node_host("192.0.2.30/24")
    agent = None
    try:
        ResourceStore(etcd.client()).create(pool("main", "10.52.0.0/16"))
        agent = AgentProcess(tmp_path / "agent", etcd.url, host, "node-t", "192.0.2.30/24").start()
        a, b = pods(), pods()
        ips = []
        for cid, pod in (("t-a", a), ("t-b", b)):
            code, result, _ = cni("ADD", agent.conf(), container=cid, netns=pod.path, pod=("ns1", cid))
            assert code == 0
            ips.append(result["ips"][0]["address"].split("/")[0])
        agent.stop()
        assert a.run("ping", "-c1", "-W2", ips[1], check=False).returncode == 0
        agent.start()
        for cid, pod in (("t-a", a), ("t-b", b)):
            assert cni("DEL", agent.conf(), container=cid, netns=pod.path, pod=("ns1", cid))[0] == 0
    finally:
        if agent is not None:
            agent.stop()
        host.delete()
