"""What the lab looks like: nodes, BGP sessions (each agent's and each ToR's view),
blocks, pods, and a reachability matrix where every pod pings every other pod.

Data only; routed.lab.cli renders it. The matrix is measured in parallel, retried for
failing pairs until a deadline (routes may still be converging), and reports progress
through a callback while it runs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from routed.errors import RoutedError

from . import cluster, etcd, procs, routers, topology
from .cluster import Lab

Progress = Callable[[int, int, int], None]  # (checked, total, failing)


def ping(netns: str, ip: str, wait: float = 1.0) -> bool:
    try:
        return subprocess.run(["ip", "netns", "exec", netns, "ping", "-c1", "-q", "-W", str(max(1, int(wait))), ip],
                              capture_output=True, timeout=wait + 5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def reachability(pods: list[dict], timeout: float = 20.0, workers: int = 16,
                 progress: Progress | None = None, blocked: frozenset = frozenset(), address: str = "ip") -> dict:
    """Every pod pings every other pod's IP (address "ip6": its IPv6 address); failing pairs are
    retried until timeout.

    Returns {"pods": [labels], "matrix": {src: {dst: true|false|"policy"|null}}, "ok",
    "failed", "blocked", "untested", "seconds"}; null means the deadline came before that
    pair was tried. A pair in ``blocked`` (source IP, destination IP) is one a network
    policy denies: tried once, and when it does not answer it is "policy", not a failure."""
    label = {id(p): f"{p['node']}/{p['name']}" for p in pods}
    pairs = [(s, d) for s in pods for d in pods if s is not d and s.get(address) and d.get(address)]
    result: dict[tuple[int, int], bool | None] = {(id(s), id(d)): None for s, d in pairs}
    start = time.monotonic()
    deadline = start + timeout
    todo = list(pairs)
    done_once: set[tuple[int, int]] = set()
    def attempt(s: dict, d: dict) -> bool | None:
        return ping(s["netns"], d[address]) if time.monotonic() < deadline else None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        while todo and time.monotonic() < deadline:
            futures = [(s, d, pool.submit(attempt, s, d)) for s, d in todo]
            todo = []
            for s, d, future in futures:
                key = (id(s), id(d))
                ok = future.result()
                if ok is None:  # the deadline came first: keep what an earlier round found
                    continue
                policy = (s[address], d[address]) in blocked
                result[key] = "policy" if policy and not ok else ok
                done_once.add(key)
                if not ok and not policy:
                    todo.append((s, d))
                if progress:
                    progress(len(done_once), len(pairs), sum(v is False for v in result.values()))
            if todo:
                time.sleep(0.5)
    matrix = {label[id(s)]: {label[id(d)]: (None if s is d else result.get((id(s), id(d)))) for d in pods}
              for s in pods}
    values = list(result.values())
    return {"pods": [label[id(p)] for p in pods], "matrix": matrix, "ok": sum(v is True for v in values),
            "failed": sum(v is False for v in values), "blocked": sum(v == "policy" for v in values),
            "untested": sum(v is None for v in values),
            "seconds": round(time.monotonic() - start, 1)}


def nodes(lab: Lab, state: dict, registered: dict) -> list[dict]:
    rows = []
    for n in state["nodes"]:
        code, body = cluster.agent_get(n, "/readyz", timeout=1.0)
        node = registered.get(n["name"])
        rows.append({"name": n["name"], "rack": n["rack"], "address": n["address"], "netns": n["netns"],
                     **({"address6": n["address6"]} if n.get("address6") else {}),
                     "agent": "ready" if code == 200 else ("running" if procs.alive(n["pids"].get("agent"),
                                                                                  lab.marker) else "dead"),
                     "speaker": "running" if procs.alive(n["pids"].get("speaker"), lab.marker) else "dead",
                     "registered": node is not None, "healthPort": n["health_port"],
                     "why": "" if code == 200 else body.strip()[:80]})
    return rows


def sessions(state: dict) -> list[dict]:
    rows = []
    for n in state["nodes"]:
        peers = cluster.node_sessions(n)
        if peers is None:
            rows.append({"speaker": n["name"], "peer": "", "name": "", "type": "", "state": "agent not answering",
                         "since": "", "info": "", "accepted": 0})
            continue
        for p in peers:
            rows.append({"speaker": n["name"], "peer": p["address"], "name": p["name"], "type": p["type"],
                         "state": p["state"], "since": p.get("since", ""), "info": p.get("info", ""),
                         "accepted": p.get("accepted", 0)})
    for rack in state["racks"]:
        for s in cluster.router_sessions(state, rack):
            rows.append({"speaker": rack["tor"], "peer": s["peer"], "name": s["name"],
                         "type": "ebgp-" + s["kind"], "state": s["state"], "since": "", "info": s["info"],
                         "accepted": None})
    return rows


def wireguard(state: dict) -> list[dict]:
    """Every node's WireGuard peers: handshake (seconds ago) and bytes."""
    rows = []
    for n in state["nodes"]:
        doc = cluster.node_wireguard(n)
        if doc is None or not doc.get("enabled"):
            rows.append({"node": n["name"], "peer": "", "endpoint": "",
                         "state": "agent not answering" if doc is None else "off", "rx": 0, "tx": 0})
            continue
        for p in doc["peers"]:
            seen = p["latestHandshake"]
            rows.append({"node": n["name"], "peer": p.get("node") or p["publicKey"][:8], "endpoint": p["endpoint"] or "",
                         "state": "no handshake" if seen is None else f"handshake {seen}s ago",
                         "rx": p["rxBytes"], "tx": p["txBytes"]})
    return rows


def router_routes(state: dict) -> dict[str, dict[str, str]]:
    """ToR name -> {prefix: next hop} from the router's own RIB."""
    return {rack["tor"]: routers.routes(rack["kind"], cluster.router_spec(state, rack), Path(rack["dir"]),
                                        rack["tor_ns"])
            for rack in state["racks"]}


def service_routes(state: dict) -> dict[str, dict[str, list[str]]]:
    """ToR name -> {service prefix: the next hops it spreads traffic over (ECMP)}."""
    cidrs = [ipaddress.ip_network(c) for c in (*cluster.SERVICE_CIDRS.values(), *cluster.SERVICE_CIDRS6.values())]
    out = {}
    for rack in state["racks"]:
        table = routers.ecmp(rack["kind"], cluster.router_spec(state, rack), Path(rack["dir"]), rack["tor_ns"])
        out[rack["tor"]] = {prefix: sorted(hops, key=ipaddress.ip_address) for prefix, hops in sorted(table.items())
                            if _inside(prefix, cidrs)}
    return out


def _inside(prefix: str, cidrs: list) -> bool:
    try:
        net = ipaddress.ip_network(prefix)
    except ValueError:
        return False
    return any(net.version == c.version and net.subnet_of(c) for c in cidrs)


def ipam(state: dict) -> tuple[list[dict], dict]:
    """(block rows, Node resources by name), from etcd at one revision."""
    from ipam import usage
    from routed import resources as r
    from routed.datastore.etcd import EtcdKV
    from routed.datastore.resources import ResourceStore

    kv = EtcdKV([state["etcd"]["endpoint"]], timeout=3.0)
    try:
        blocks = usage.block_usage(kv)
        registered = {n.metadata.name: n for n in ResourceStore(kv).list(r.Node)}
    finally:
        kv.close()
    return blocks, registered


def policy_blocked(state: dict, family: int = 4) -> frozenset:
    """(source IP, destination IP) pairs whose ping the network policy in etcd denies,
    by routed's reference evaluator (routed/policy/evaluate.py)."""
    from routed import resources as r
    from routed.datastore import keys
    from routed.datastore.etcd import EtcdKV
    from routed.datastore.resources import ResourceStore
    from routed.policy import model
    from routed.policy.enforcer import endpoint_from_json
    from routed.policy.evaluate import Cluster

    kv = EtcdKV([state["etcd"]["endpoint"]], timeout=3.0)
    try:
        store = ResourceStore(kv)
        docs = [p for cls in (r.NetworkPolicy, r.GlobalNetworkPolicy, r.KubeNetworkPolicy) for p in store.list(cls)]
        namespaces = {n.name: dict(n.metadata.labels) for n in store.list(r.Namespace)}
        endpoints = [endpoint_from_json(item.value) for item in kv.list(keys.WORKLOADS).items]
    finally:
        kv.close()
    return blocked_pairs(Cluster(endpoints, namespaces, model.convert(docs)), family)


def blocked_pairs(cluster, family: int = 4) -> frozenset:
    addrs = [a for ep in cluster.endpoints for a in ep.addresses if (":" in a) == (family == 6)]
    return frozenset((s, d) for s in addrs for d in addrs
                     if s != d and not cluster.allowed(_echo(s, d)))


def _echo(src: str, dst: str):
    from routed.policy.evaluate import Packet

    if ":" in src:
        return Packet(src, dst, 58, icmp_type=128, icmp_code=0)  # ICMPv6 echo request
    return Packet(src, dst, 1, icmp_type=8, icmp_code=0)


def _natural(name: str) -> tuple:
    """node2 before node10, p2 before p10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part)


def in_pools(routes: dict[str, str]) -> int:
    pools = [ipaddress.ip_network(cluster.POOL_CIDR), ipaddress.ip_network(cluster.POOL6_CIDR)]
    count = 0
    for prefix in routes:
        try:
            net = ipaddress.ip_network(prefix)
        except ValueError:
            continue
        count += any(net.version == pool.version and net.subnet_of(pool) for pool in pools)
    return count


def collect(lab: Lab, reach: bool = True, timeout: float = 20.0, progress: Progress | None = None) -> dict:
    state = lab.load()
    if not etcd.running_pid(lab.dir):
        raise RoutedError(f"the lab's etcd is not running (the lab at {lab.dir} crashed?): `routed lab up` "
                          "starts what died, `routed lab down` removes it all")
    blocks, registered = ipam(state)
    ordered = sorted(state["pods"], key=lambda p: (_natural(p["node"]), _natural(p["name"])))
    pods = [{"node": p["node"], "name": p["name"], "namespace": p["namespace"], "ip": p["ip"], "netns": p["netns"],
             "present": os.path.exists(f"{topology.NETNS_DIR}/{p['netns']}"),
             **({"ip6": p["ip6"]} if p.get("ip6") else {})} for p in ordered]
    tor_routes = router_routes(state)
    services = service_routes(state)
    out = {"lab": {"dir": str(lab.dir), "prefix": state["prefix"], "options": state["options"],
                   "etcd": state["etcd"]["endpoint"], "created": state.get("created", "")},
           "nodes": nodes(lab, state, registered),
           "routers": [{"name": rack["tor"], "rack": rack["index"], "kind": rack["kind"], "as": rack["as"], "netns": rack["tor_ns"],
                        "address": rack["gateway"], "coreAddress": rack["core_ip"],
                        **({"address6": rack["gateway6"], "coreAddress6": rack["core_ip6"]}
                           if rack.get("gateway6") else {}),
                        "running": all(procs.alive(p, lab.marker) for p in rack["pids"].values()),
                        "routes": tor_routes[rack["tor"]], "podRoutes": in_pools(tor_routes[rack["tor"]]),
                        "serviceRoutes": services[rack["tor"]]}
                       for rack in state["racks"]],
           "sessions": sessions(state), "blocks": blocks, "pods": pods}
    if reach:
        out["reachability"] = reachability([p for p in pods if p["present"]], timeout=timeout, progress=progress,
                                           blocked=policy_blocked(state))
        if state["options"].get("dual_stack"):  # every pair again over IPv6
            out["reachability6"] = reachability([p for p in pods if p["present"]], timeout=timeout,
                                                progress=progress, blocked=policy_blocked(state, family=6),
                                                address="ip6")
    if state["options"].get("wireguard"):  # after the pings: their handshakes and bytes show
        out["wireguard"] = wireguard(state)
    return out


def node_routes(state: dict, node_name: str) -> str:
    node = next((n for n in state["nodes"] if n["name"] == node_name), None)
    if node is None:
        raise RoutedError(f"no node {node_name!r} in the lab")
    return topology.ip("route", "show", netns=node["netns"]).stdout
