"""A cluster of real kubelets (each node a network and mount namespace running containerd
and kubelet) registers its Nodes and runs the pods the API asks for; and the chart,
installed for real with Helm into it: the DaemonSet's init container writes the conflist
and the plugin on every node, agents and speakers become Ready, a Deployment's pods
spread over the nodes, get routed addresses and all reach one another over the BGP mesh;
deleting pods releases their addresses and deleting a Node (whose machine left) releases
its blocks; `helm uninstall` leaves the nodes without routed. The tests run in this order
on one cluster (the second last removes a node, the last uninstalls routed).

Helm through helm-python-sdk's install (Helm 4's own code, no helm binary): unlike
render + `kubectl apply`, it runs the chart's hooks (the post-install job that creates the
IP pool) and keeps a release that `uninstall` removes, which is what users run. With
`--wait`, as the README installs (and `helm upgrade --wait` later): Helm runs the
post-install job only once the DaemonSet and the controller are Ready, so none of them may
need the pool that job creates (the controller runs on the host network).

The routed image comes from the image lane: scripts/build-image.sh writes
$ROUTED_IMAGE_DIR/routed.tar (default build/image). The lab's controller runs with
--grace=2 --interval=2."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from routed.datastore.etcd import EtcdKV
from routed.lab import kubeplane, procs
from tests.support.wait import eventually

POOL = "10.244.0.0/16"
REPLICAS = 4


@pytest.fixture
def release(kube_lab):
    """routed, installed by `routed lab up --kubernetes` (kubecluster.install_routed)."""
    return kube_lab


@pytest.fixture(scope="module")
def kv(kube_lab):
    client = EtcdKV([kube_lab.cluster.etcd_host_url], timeout=5.0)
    yield client
    client.close()


def get(cluster, *args) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def describe(cluster, *args):
    return lambda: cluster.kubectl("describe", *args, check=False).stdout[-3000:]


def ds_ready(cluster) -> bool:
    status = get(cluster, "-n", "kube-system", "daemonset", "routed")["status"]
    want = len(cluster.nodes())
    return status.get("desiredNumberScheduled") == want and status.get("numberReady") == want


def nodes_ready(cluster) -> bool:
    return all(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
               for n in get(cluster, "nodes")["items"])


def pinger_pods(cluster) -> list[dict]:
    return get(cluster, "-n", "default", "pods", "-l", "app=pinger")["items"]


# -- real kubelets ---------------------------------------------------------------------------

def pod_image(cluster) -> str:
    return cluster.state["images"]["testpod"]


def host_pod(name: str, node: str, image: str) -> dict:
    """A host-network pod bound to node: it needs no CNI, so it runs before routed does."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "hostNetwork": True, "tolerations": [{"operator": "Exists"}],
                     "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                                     "command": ["sleep", "3600"]}]}}


def pod_status(cluster, name: str) -> dict:
    out = cluster.kubectl("get", "pod", name, "-o", "json", check=False)
    return json.loads(out.stdout)["status"] if out.returncode == 0 else {}


def test_every_kubelet_registers_and_runs_host_network_pods(kube_cluster, tmp_path):
    nodes = json.loads(kube_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    addresses = {n["metadata"]["name"]: {a["type"]: a["address"] for a in n["status"]["addresses"]} for n in nodes}
    assert addresses == {n["name"]: {"InternalIP": n["ip"], "Hostname": n["name"]} for n in kube_cluster.nodes()}
    for node in nodes:
        assert node["status"]["nodeInfo"]["kubeletVersion"] == kube_cluster.state["release"]
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")

    names = {n["name"]: f"hostpod-{n['name']}" for n in kube_cluster.nodes()}
    for node, pod in names.items():
        manifest = tmp_path / f"{pod}.json"
        manifest.write_text(json.dumps(host_pod(pod, node, pod_image(kube_cluster))))
        kube_cluster.kubectl("apply", "-f", str(manifest))
    try:
        for node in kube_cluster.nodes():
            pod = names[node["name"]]
            status = eventually(lambda: pod_status(kube_cluster, pod).get("phase") == "Running"
                                and pod_status(kube_cluster, pod), f"{pod} to run", timeout=180,
                                details=lambda: kube_cluster.kubectl("describe", "pod", pod, check=False).stdout)
            assert status["hostIP"] == status["podIP"] == node["ip"]
            # exec goes API server -> kubelet (its serving certificate) -> containerd
            out = kube_cluster.kubectl("exec", pod, "--", "ip", "-4", "-o", "addr", "show", "eth0")
            assert f"inet {node['ip']}/" in out.stdout
    finally:
        for pod in names.values():
            kube_cluster.kubectl("delete", "pod", pod, "--grace-period=0", "--force", check=False)


# -- routed, installed with Helm ------------------------------------------------------------

def test_lab_up_prints_how_to_use_kubectl(kube_lab):
    out = kube_lab.stdout
    assert f"export KUBECONFIG={kube_lab.cluster.kubeconfig}" in out and " get nodes -o wide" in out
    assert "make lab-down" in out
    env = {**kube_lab.env, "KUBECONFIG": kube_lab.cluster.kubeconfig}
    nodes = subprocess.run([kubeplane.binary("kubectl"), "get", "nodes", "-o", "name"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert nodes == [f"node/{n['name']}" for n in kube_lab.cluster.nodes()]


def controller_pods(cluster) -> list[dict]:
    return get(cluster, "-n", "kube-system", "pods", "-l", "app.kubernetes.io/component=controller")["items"]


def test_helm_install_wait_returned_with_everything_ready_and_the_pool_created(kube_cluster, release, kv):
    """`routed lab up --kubernetes` ran `helm install --wait`: it returned, so Helm saw the
    DaemonSet and the controller Ready and then ran the post-install job; nothing here waits."""
    from routed import resources as r
    from routed.datastore.resources import ResourceStore

    assert ds_ready(kube_cluster)
    (pod,) = controller_pods(kube_cluster)
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    assert pod["status"]["podIP"] == pod["status"]["hostIP"]  # the host network
    assert ResourceStore(kv).find(r.IPPool, "default-ipv4-ippool").spec.cidr == POOL
    assert not get(kube_cluster, "-n", "kube-system", "jobs")["items"]  # the hook job succeeded and went


def test_install_makes_every_node_ready(kube_cluster, release):
    eventually(lambda: ds_ready(kube_cluster), "the routed DaemonSet Ready on every node", timeout=300,
               details=describe(kube_cluster, "-n", "kube-system", "pods"))
    eventually(lambda: nodes_ready(kube_cluster), "every Node Ready (a CNI configuration exists)", timeout=120,
               details=describe(kube_cluster, "nodes"))
    for node in kube_cluster.nodes():
        d = Path(node["dir"])
        conflist = json.loads((d / "etc-cni-net.d" / "10-routed.conflist").read_text())
        assert conflist["plugins"][0]["type"] == "routed"
        assert os.access(d / "opt-cni-bin" / "routed", os.X_OK)
    pods = get(kube_cluster, "-n", "kube-system", "pods", "-l", "app.kubernetes.io/component=agent")["items"]
    for pod in pods:  # the agent and its ExaBGP sidecar
        assert sorted(c["name"] for c in pod["status"]["containerStatuses"] if c["ready"]) == ["agent", "bgp"]


def test_every_agents_and_the_controllers_metrics_are_reachable_through_their_services(kube_cluster, release):
    """metrics.enabled (the lab installs with it): each metrics Service has a ready endpoint
    per agent (the node's address, host network) and for the controller (its pod's
    address), and /metrics answers there from another node, as Prometheus would scrape."""
    eventually(lambda: ds_ready(kube_cluster), "the routed DaemonSet Ready", timeout=300)
    node = kube_cluster.nodes()[0]

    def endpoints(service: str) -> list[str]:
        slices = get(kube_cluster, "-n", "kube-system", "endpointslices", "-l",
                     f"kubernetes.io/service-name={service}")["items"]
        return sorted(address for s in slices for e in s.get("endpoints") or []
                      if (e.get("conditions") or {}).get("ready") for address in e["addresses"])

    def scrape(address: str, port: int) -> str:
        done = subprocess.run(["ip", "netns", "exec", node["netns"], "curl", "-sf", "--max-time", "5",
                               f"http://{address}:{port}/metrics"], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else ""

    agents = eventually(lambda: endpoints("routed-agent-metrics") == sorted(n["ip"] for n in kube_cluster.nodes())
                        and endpoints("routed-agent-metrics"), "an agent metrics endpoint per node", timeout=120,
                        details=describe(kube_cluster, "-n", "kube-system", "service", "routed-agent-metrics"))
    for address in agents:
        text = eventually(lambda: scrape(address, 9091), f"/metrics at {address}:9091", timeout=60)
        assert "# TYPE routed_bgp_session_up gauge" in text and "routed_cni_request_seconds" in text, text[:2000]
    (controller,) = eventually(lambda: endpoints("routed-controller-metrics"), "the controller's metrics endpoint",
                               timeout=120)
    assert controller in {n["ip"] for n in kube_cluster.nodes()}  # host network: no pod address needed
    text = eventually(lambda: 'routed_ipam_pool_size{pool="default-ipv4-ippool"}' in scrape(controller, 9094)
                      and scrape(controller, 9094), "the leader's IPAM metrics", timeout=120)
    assert "routed_controller_leader 1.0" in text, text[:2000]


def test_pods_spread_get_routed_addresses_and_reach_each_other(kube_cluster, release, tmp_path):
    import ipaddress

    eventually(lambda: ds_ready(kube_cluster), "the routed DaemonSet Ready", timeout=300)
    manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pinger", "namespace": "default"},
                "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "pinger"}},
                         "template": {"metadata": {"labels": {"app": "pinger"}}, "spec": {
                             "terminationGracePeriodSeconds": 1,
                             "topologySpreadConstraints": [{
                                 "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                 "whenUnsatisfiable": "DoNotSchedule",
                                 "labelSelector": {"matchLabels": {"app": "pinger"}}}],
                             "containers": [{"name": "c", "image": pod_image(kube_cluster), "imagePullPolicy": "Never",
                                             "command": ["sleep", "3600"]}]}}}}
    (tmp_path / "pinger.json").write_text(json.dumps(manifest))
    kube_cluster.kubectl("apply", "-f", str(tmp_path / "pinger.json"))

    def running():
        pods = pinger_pods(kube_cluster)
        return len(pods) == REPLICAS and all(p["status"].get("phase") == "Running" and p["status"].get("podIP")
                                             for p in pods) and pods

    pods = eventually(running, "the pinger pods running", timeout=300,
                      details=describe(kube_cluster, "-n", "default", "pods", "-l", "app=pinger"))
    by_node = {}
    for pod in pods:
        by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(POOL)
    assert sorted(len(v) for v in by_node.values()) == [REPLICAS // 2, REPLICAS // 2]
    failures = []
    for src in pods:
        for dst in pods:
            if src is dst:
                continue
            done = kube_cluster.kubectl("exec", "-n", "default", src["metadata"]["name"], "--",
                                        "ping", "-c", "1", "-W", "5", dst["status"]["podIP"], check=False)
            if done.returncode != 0:
                failures.append(f"{src['metadata']['name']} ({src['spec']['nodeName']}) -> "
                                f"{dst['status']['podIP']} ({dst['spec']['nodeName']})")
    assert failures == []
    # the other node's block is a BGP route (proto 202), not VXLAN: one subnet
    node = kube_cluster.nodes()[0]
    routes = subprocess.run(["ip", "-n", node["netns"], "route"], capture_output=True, text=True).stdout
    assert "proto 202" in routes and "blackhole" in routes


def test_deleting_pods_releases_their_addresses(kube_cluster, release, kv):
    from routed.datastore import keys

    pods = pinger_pods(kube_cluster)
    assert len(pods) == REPLICAS
    ips = {p["status"]["podIP"] for p in pods}

    def allocated() -> set[str]:
        from ipam.allocator import IPAM

        ipam = IPAM(kv)
        return {str(ip) for h in (keys.last_segment(k) for k in kv.keys(keys.HANDLES)) for ip in ipam.held_by(h)}

    assert ips <= allocated()
    kube_cluster.kubectl("delete", "-n", "default", "deployment", "pinger")
    eventually(lambda: not pinger_pods(kube_cluster), "the pinger pods gone", timeout=120)
    eventually(lambda: not (ips & allocated()), "their addresses released (CNI DEL)", timeout=60)


def test_helm_upgrade_wait_rolls_the_controller_and_applies_the_new_configuration(kube_cluster, release, kv):
    """`helm upgrade --wait --reuse-values`: a new controller pod (its arguments changed)
    on the host network Ready, then the post-upgrade job applies the new BGP setting."""
    from routed import resources as r
    from routed.datastore.resources import ResourceStore
    from routed.lab.kubecluster import upgrade_routed

    (before,) = controller_pods(kube_cluster)
    upgraded = upgrade_routed(kube_cluster, {
        "controller": {"extraArgs": ["--grace=2", "--interval=2", "--policy-interval=3"]},
        "bgp": {"maxPrefixes": 50000}})
    assert (upgraded["revision"], upgraded["status"]) == (2, "deployed")
    assert ResourceStore(kv).get(r.BGPConfiguration, "default").spec.max_prefixes == 50000
    after = [p for p in controller_pods(kube_cluster) if not p["metadata"].get("deletionTimestamp")]
    assert [p["metadata"]["name"] for p in after] != [before["metadata"]["name"]]
    (pod,) = after
    assert "--policy-interval=3" in pod["spec"]["containers"][0]["args"]
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    assert ds_ready(kube_cluster)


def test_deleted_node_releases_its_blocks(kube_cluster, release, kv):
    """node2 leaves (kubelet stopped, its pods gone with the machine), then its Node is
    deleted: the controller releases its block affinities and its routed Node."""
    from routed.datastore import keys

    node = kube_cluster.nodes()[-1]
    name = node["name"]
    eventually(lambda: kv.keys(keys.affinity(name)), f"{name} to own a block", timeout=60)
    kubelet = kube_cluster.state["pids"][f"{name}/kubelet"]
    assert procs.alive(kubelet, str(kube_cluster.dir))
    procs.terminate([kubelet])
    kube_cluster.crictl(node, "rmp", "--all", "--force")
    kube_cluster.kubectl("delete", "node", name)
    eventually(lambda: not kv.keys(keys.affinity(name)), f"{name}'s blocks released", timeout=120,
               details=lambda: kube_cluster.kubectl("-n", "kube-system", "logs", "deploy/routed-controller",
                                                    check=False).stdout[-3000:])
    from routed import resources as r
    from routed.datastore.resources import ResourceStore

    eventually(lambda: ResourceStore(kv).find(r.Node, name) is None, f"{name}'s routed Node removed", timeout=60)


def routed_leftovers(node: dict) -> list[str]:
    """What of routed is still on a node: proto 201/202 routes, vxlan.routed, the
    conflist, the plugin, the natOutgoing chain."""
    from routed.dataplane import nat

    def run(*argv):
        return subprocess.run(["ip", "netns", "exec", node["netns"], *argv], capture_output=True, text=True)

    found = [f"proto {p}: {line}" for p in ("201", "202")
             for line in run("ip", "route", "show", "table", "all", "proto", p).stdout.splitlines()]
    if run("ip", "link", "show", "vxlan.routed").returncode == 0:
        found.append("vxlan.routed")
    d = Path(node["dir"])
    found += [str(f) for f in (d / "etc-cni-net.d" / "10-routed.conflist", d / "opt-cni-bin" / "routed")
              if f.exists()]
    if nat.CHAIN in run("iptables-save", "-t", "nat").stdout:
        found.append(nat.CHAIN)
    return found


def test_helm_uninstall_leaves_the_nodes_without_routed(kube_cluster, release):
    """The pre-delete hook has every agent take routed off its node before Helm deletes
    the DaemonSet. node2's agent went with its machine (the test above): a node that did
    not answer is cleaned by hand with `routed cleanup-node`, as the hook's log says."""
    from routed.lab.kubecluster import uninstall_routed

    first, gone = kube_cluster.nodes()[0], kube_cluster.nodes()[-1]
    assert routed_leftovers(first)  # installed: there is something to remove
    kube_proxy_rules = subprocess.run(["ip", "netns", "exec", first["netns"], "iptables-save", "-t", "nat"],
                                      capture_output=True, text=True).stdout.count("10.96.0.1")
    uninstall_routed(kube_cluster)
    assert routed_leftovers(first) == []
    after = subprocess.run(["ip", "netns", "exec", first["netns"], "iptables-save", "-t", "nat"],
                           capture_output=True, text=True).stdout
    assert after.count("10.96.0.1") == kube_proxy_rules  # not ours: left alone
    assert not get(kube_cluster, "-n", "kube-system", "jobs")["items"]  # the hook job went (hook-succeeded)
    d = Path(gone["dir"])
    by_hand = subprocess.run([str(Path(sys.executable).with_name("routed")), "cleanup-node", "--netns", gone["netns"],
                              "--conf-dir", str(d / "etc-cni-net.d"), "--bin-dir", str(d / "opt-cni-bin")],
                             capture_output=True, text=True)
    assert by_hand.returncode == 0, by_hand.stdout + by_hand.stderr
    assert routed_leftovers(gone) == []
