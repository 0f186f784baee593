"""Pods in the lab: a network namespace per pod, plugged by the installed CNI plugin called
exactly as kubelet (through containerd and libcni) calls it.

What the runtime does, and so what this does:
- it finds the plugin binary by the conflist's `type` in CNI_PATH (the lab's
  `<state>/cni/bin`, see below) and execs it with CNI_COMMAND, CNI_CONTAINERID,
  CNI_NETNS, CNI_IFNAME=eth0, CNI_PATH and containerd's CNI_ARGS
  (`IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`);
- stdin is one plugin of the node's conflist with the list's `name` and `cniVersion`
  added (and `prevResult` for a chained plugin, or on DEL);
- ADD runs the plugins in order, DEL in reverse order.

Where the files are: the plugin is installed by `routed install-cni` into the lab's state
directory, `<state>/cni/bin/routed`, and each node has its own conflist,
`<state>/nodes/<node>/net.d/10-routed.conflist`, naming that node's agent socket. A real
node has one /opt/cni/bin and one /etc/cni/net.d; the lab has several nodes on one
machine, and must not replace (or leave behind) the CNI files of a real node, so its
CNI_PATH points at its own bin directory. The exec is the same as kubelet's.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import uuid
from pathlib import Path

from routed.errors import RoutedError

from . import topology
from .cluster import Lab

POD_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
CONFLIST = "10-routed.conflist"


def pod_netns(prefix: str, node: str, name: str) -> str:
    return f"{prefix}pod-{node}-{name}"


def _node(state: dict, name: str) -> dict:
    for node in state["nodes"]:
        if node["name"] == name:
            return node
    raise RoutedError(f"no node {name!r} in the lab (nodes: {', '.join(n['name'] for n in state['nodes'])})")


def cni_args(namespace: str, name: str, container_id: str, uid: str) -> str:
    """containerd's CNI_ARGS."""
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
            f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}")


def plugin_stdin(conflist: dict, plugin: dict, prev_result: dict | None = None,
                 labels: dict | None = None) -> str:
    """What libcni writes to a plugin's stdin for one plugin of a conflist; the pod's
    labels go in runtimeConfig (there is no Kubernetes API in the lab)."""
    conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    if labels is not None:
        conf["runtimeConfig"] = {**conf.get("runtimeConfig", {}), "labels": labels}
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return json.dumps(conf)


def exec_plugin(cni_path: str, plugin_type: str, env: dict, stdin: str, timeout: float = 120.0) -> tuple[int, dict]:
    """Find the plugin in CNI_PATH and run it; (exit code, parsed stdout)."""
    binary = next((Path(d) / plugin_type for d in cni_path.split(":") if (Path(d) / plugin_type).is_file()), None)
    if binary is None:
        raise RoutedError(f"CNI plugin {plugin_type!r} not found in CNI_PATH {cni_path}")
    full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
    try:
        proc = subprocess.run([str(binary)], input=stdin, env=full_env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RoutedError(f"{binary} did not answer within {timeout:.0f}s") from None
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        out = {"msg": proc.stdout.strip() or proc.stderr.strip()}
    return proc.returncode, out


def _call(state: dict, node: dict, command: str, pod: dict, prev_result: dict | None = None) -> dict:
    conflist = json.loads((Path(node["conf_dir"]) / CONFLIST).read_text())
    cni_path = state["cni"]["bin_dir"]
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": pod["containerID"],
           "CNI_NETNS": f"{topology.NETNS_DIR}/{pod['netns']}", "CNI_IFNAME": "eth0", "CNI_PATH": cni_path,
           "CNI_ARGS": cni_args(pod["namespace"], pod["name"], pod["containerID"], pod["uid"])}
    plugins = conflist["plugins"] if command == "ADD" else list(reversed(conflist["plugins"]))
    result = prev_result
    for plugin in plugins:
        code, out = exec_plugin(cni_path, plugin["type"], env,
                                plugin_stdin(conflist, plugin, result, pod.get("labels")))
        if code != 0:
            raise RoutedError(f"CNI {command} of pod {pod['name']} on {node['name']} failed "
                              f"(plugin {plugin['type']}, exit {code}): code {out.get('code')}: {out.get('msg')}"
                              + (f" ({out['details']})" if out.get("details") else ""))
        if command == "ADD":
            result = out
    return result or {}


def add(lab: Lab, node_name: str, name: str, namespace: str = "default", labels: dict | None = None) -> dict:
    """Create the pod's namespace and run CNI ADD; returns the pod's record (with its IP)."""
    if not POD_NAME.match(name):
        raise RoutedError(f"pod name {name!r}: lower-case letters, digits and '-', at most 32")
    if not POD_NAME.match(namespace):
        raise RoutedError(f"namespace {namespace!r}: lower-case letters, digits and '-', at most 32")
    with lab.locked():
        state = lab.load()
        node = _node(state, node_name)
        if any(p["node"] == node_name and p["name"] == name for p in state["pods"]):
            raise RoutedError(f"pod {name} already exists on {node_name}")
        pod = {"node": node_name, "name": name, "namespace": namespace,
               "netns": pod_netns(state["prefix"], node_name, name), "containerID": secrets.token_hex(32),
               "uid": str(uuid.uuid4()), "ip": "", "result": None, "labels": labels or {}}
        state["pods"].append(pod)  # recorded first: down removes its namespace whatever happens
        lab.save(state)
    try:
        topology.add_netns(pod["netns"], forward=False)
        result = _call(state, node, "ADD", pod)
    except RoutedError:
        # As kubelet does after a failed ADD: a DEL, so whatever the ADD did before it
        # failed (an address whose answer was lost, say) is undone. A DEL never fails for
        # what is not there; if the agent is away it is spooled and replayed.
        try:
            _call(state, node, "DEL", pod)
        except RoutedError:
            pass  # the ADD's error is the one to report
        _forget(lab, pod)
        topology.del_netns(pod["netns"])
        raise
    pod["result"] = result
    addresses = [ip.get("address", "").split("/")[0] for ip in result.get("ips") or []]
    pod["ip"] = next((a for a in addresses if "." in a), addresses[0] if addresses else "")
    pod["ip6"] = next((a for a in addresses if ":" in a), "")  # dual stack
    with lab.editing() as current:
        for i, p in enumerate(current["pods"]):
            if p["node"] == node_name and p["name"] == name:
                current["pods"][i] = pod
    return pod


def delete(lab: Lab, node_name: str, name: str) -> dict:
    """CNI DEL (with the ADD result as prevResult, as the runtime caches it), then the namespace."""
    state = lab.load()
    node = _node(state, node_name)
    pod = next((p for p in state["pods"] if p["node"] == node_name and p["name"] == name), None)
    if pod is None:
        raise RoutedError(f"no pod {name} on {node_name}")
    _call(state, node, "DEL", pod, prev_result=pod.get("result") or None)
    topology.del_netns(pod["netns"])
    _forget(lab, pod)
    return pod


def _forget(lab: Lab, pod: dict) -> None:
    with lab.editing() as state:
        state["pods"] = [p for p in state["pods"] if not (p["node"] == pod["node"] and p["name"] == pod["name"])]
