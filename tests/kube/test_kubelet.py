"""Real kubelets: every node of the cluster (a network and mount namespace running
containerd and kubelet) registers its Node and runs pods that the API asks for."""

from __future__ import annotations

import json

from routed.lab.kubecluster import BUSYBOX_IMAGE
from tests.support.wait import eventually


def host_pod(name: str, node: str) -> dict:
    """A host-network pod bound to node: it needs no CNI, so it runs before routed does."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "hostNetwork": True, "tolerations": [{"operator": "Exists"}],
                     "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
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
        manifest.write_text(json.dumps(host_pod(pod, node)))
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
