"""A `routed lab status -o json` document of a 3-node, 2-rack lab (the shape
routed.lab.status.collect returns), with one session not up and a matrix holding every
kind of answer: reachable, unreachable, blocked by policy, not tried."""

from __future__ import annotations

NODES = {"node1": (1, "10.10.1.11", "10.244.98.128"), "node2": (1, "10.10.1.12", "10.244.251.0"),
         "node3": (2, "10.10.2.13", "10.244.227.64")}
TORS = {"rack1-tor": (1, "10.10.1.1", "10.10.0.1"), "rack2-tor": (2, "10.10.2.1", "10.10.0.2")}


def _session(speaker: str, peer: str, name: str, kind: str, state: str = "up") -> dict:
    return {"speaker": speaker, "peer": peer, "name": name, "type": kind, "state": state, "since": "",
            "info": "", "accepted": None if speaker in TORS else 1}


def sample_status() -> dict:
    sessions = []
    for name, (rack, address, _) in NODES.items():
        tor = f"rack{rack}-tor"
        sessions.append(_session(name, TORS[tor][1], tor, "node"))
        sessions += [_session(name, other[1], peer, "mesh", "active" if (name, peer) == ("node1", "node2") else "up")
                     for peer, other in NODES.items() if peer != name]
        sessions.append(_session(tor, address, name, "ebgp-node"))
    sessions += [_session("rack1-tor", "10.10.0.2", "rack2-tor", "ebgp-tor"),
                 _session("rack2-tor", "10.10.0.1", "rack1-tor", "ebgp-tor")]
    labels = [f"{n}/p1" for n in NODES]
    matrix = {s: {d: (None if s == d else True) for d in labels} for s in labels}
    matrix["node1/p1"]["node2/p1"] = "policy"
    matrix["node1/p1"]["node3/p1"] = False
    matrix["node3/p1"]["node2/p1"] = None
    return {
        "lab": {"dir": "/tmp/routed-lab-sample", "prefix": "rl-s", "etcd": "http://127.0.0.1:23790",
                "created": "2026-11-27T20:24:22Z",
                "options": {"nodes": 3, "racks": 2, "encap": "crosssubnet", "tor": "bird", "wireguard": False}},
        "nodes": [{"name": n, "rack": rack, "address": f"{address}/24", "netns": f"rl-s{n}", "agent": "ready",
                   "speaker": "running", "registered": True, "healthPort": 31000 + i, "why": ""}
                  for i, (n, (rack, address, _)) in enumerate(NODES.items())],
        "routers": [{"name": t, "rack": rack, "kind": "bird", "as": 65000 + rack, "netns": f"rl-s{t}",
                     "address": gateway, "coreAddress": core, "running": True, "routes": {}, "podRoutes": 3}
                    for t, (rack, gateway, core) in TORS.items()],
        "sessions": sessions,
        "blocks": [{"cidr": f"{block}/26", "node": n, "inUse": 1, "free": 63} for n, (_, _, block) in NODES.items()],
        "pods": [{"node": n, "name": "p1", "namespace": "default", "ip": block, "netns": f"rl-spod-{n}-p1",
                  "present": True} for n, (_, _, block) in NODES.items()],
        "reachability": {"pods": labels, "matrix": matrix, "ok": 3, "failed": 1, "blocked": 1, "untested": 1,
                         "seconds": 2.5},
    }
