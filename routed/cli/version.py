"""`routedctl version`: this client's version, the cluster's datastore, and the local agent's.

Each part that cannot be asked says why in its own row; the others are still shown (a version
command is what one runs when things are broken).
"""

from __future__ import annotations

from routed import resources as r
from routed.datastore import keys
from routed.errors import RoutedError
from routed.render import Output, Table
from routed.version import version as client_version

from .agentapi import add_agent_argument, agent_json

# The layout routed's keys follow (routed/datastore/keys.py): the version is the root's last part.
LAYOUT = keys.ROOT.strip("/")


def cluster_info(ctx) -> dict:
    """The datastore layout in use and the nodes registered in it."""
    try:
        nodes = sorted(n.metadata.name for n in ctx.store.list(r.Node))
        pools = ctx.store.list(r.IPPool)
        revision = ctx.kv.revision()
    except RoutedError as err:
        return {"error": str(err)}
    # "present": something was ever written under this layout's root (an empty etcd is not a cluster yet).
    return {"datastoreLayout": LAYOUT, "layoutPresent": bool(nodes or pools), "revision": revision,
            "nodes": nodes}


def agent_info(agent: str) -> dict:
    try:
        doc = agent_json(agent, "/version")
    except RoutedError as err:
        return {"url": agent, "error": str(err)}
    if not isinstance(doc, dict):
        return {"url": agent, "error": f"the routed agent at {agent} answered /version with {type(doc).__name__}"}
    return {"url": agent, "version": doc.get("version"), "node": doc.get("node")}


def versions(ctx, agent: str) -> dict:
    return {"client": {"version": client_version()}, "cluster": cluster_info(ctx), "agent": agent_info(agent)}


def show(ctx, args) -> Output:
    data = versions(ctx, args.agent)
    cluster, agent = data["cluster"], data["agent"]
    if "error" in cluster:
        cluster_row = ["cluster", "unknown", cluster["error"]]
    else:
        state = "in use" if cluster["layoutPresent"] else "empty"
        cluster_row = ["cluster", cluster["datastoreLayout"],
                       f"datastore {state} at revision {cluster['revision']}, "
                       f"{len(cluster['nodes'])} node(s) registered"]
    if "error" in agent:
        agent_row = ["agent", "unknown", agent["error"]]
    else:
        agent_row = ["agent", agent["version"], f"node {agent['node']} at {agent['url']}"]
    rows = [["client", data["client"]["version"], "routedctl"], cluster_row, agent_row]
    return Output(data=data, table=Table(["COMPONENT", "VERSION", "DETAIL"], rows))


def register(sub) -> None:
    p = sub.add_parser("version", help="client, cluster and agent versions")
    add_agent_argument(p)
    p.set_defaults(func=show)
