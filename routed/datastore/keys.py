"""Every etcd key routed reads or writes is built here, and only here.

Layout (all under one root so a cluster can share an etcd with other users):

    /routed/v1/resources/<plural>/<name>        IPPool, BGPPeer, Node, ... (JSON)
    /routed/v1/resources/<plural>/<ns>/<name>   namespaced kinds (NetworkPolicy)
    /routed/v1/ipam/blocks/<block>              allocation state of one block
    /routed/v1/ipam/affinity/<node>/<block>     the node a block is affine to
    /routed/v1/ipam/handles/<handle>            the blocks a handle holds addresses in
    /routed/v1/workloads/<node>/<ns>/<pod>      a pod as policy sees it (labels, addresses), by its node
    /routed/v1/liveness/<node>                  under the node agent's lease while it runs

One key sits outside the layout, so that every version of routed finds it:

    /routed/schema                              the layout version (routed.datastore.schema)

A block CIDR is written with "-" for "/" (10.0.0.0-26, fd00::-122) since "/" separates
key levels.
"""

from __future__ import annotations

import functools
import ipaddress
import re

SCHEMA = "/routed/schema"
ROOT = "/routed/v1/"
RESOURCES = ROOT + "resources/"
IPAM = ROOT + "ipam/"
BLOCKS = IPAM + "blocks/"
AFFINITIES = IPAM + "affinity/"
HANDLES = IPAM + "handles/"
LEADER = ROOT + "leader/"
WORKLOADS = ROOT + "workloads/"
LIVENESS = ROOT + "liveness/"

# What may stand in one key segment: resource names, node names, handle ids.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}$")


def segment(text: str, what: str = "name") -> str:
    if not _SEGMENT.match(text):
        raise ValueError(f"invalid {what} {text!r}: use letters, digits, '.', '-', '_', ':' (max 253)")
    return text


def resource(plural: str, name: str = "", namespace: str | None = None) -> str:
    """The key of one resource, or with no name the prefix of its kind (of one
    namespace, if given)."""
    base = f"{RESOURCES}{segment(plural, 'kind')}/"
    if namespace:
        base += segment(namespace, "namespace") + "/"
    return base + segment(name) if name else base


def cidr_segment(cidr) -> str:
    return str(cidr).replace("/", "-")


@functools.lru_cache(maxsize=1 << 16)
def cidr_from_segment(text: str):
    # Cached: a claim parses every block key of the cluster, and an agent every block key
    # it hears of; ipaddress objects are immutable, so callers may share them.
    return ipaddress.ip_network(text.replace("-", "/"), strict=True)


def block(cidr) -> str:
    return BLOCKS + cidr_segment(cidr)


def affinity(node: str, cidr=None) -> str:
    """A node's affinity to one block, or with no block the prefix of all its affinities."""
    base = f"{AFFINITIES}{segment(node, 'node name')}/"
    return base + cidr_segment(cidr) if cidr is not None else base


def handle(handle_id: str) -> str:
    return HANDLES + segment(handle_id, "handle")


def workload(node: str, namespace: str, pod: str) -> str:
    # Under the node, as Calico keys its workload endpoints: a node writes only its own
    # records, and two nodes never overwrite each other's (the lab names pods per node).
    return f"{workloads_of(node)}{segment(namespace, 'namespace')}/{segment(pod, 'pod name')}"


def workloads_of(node: str) -> str:
    """The prefix of one node's workload records."""
    return f"{WORKLOADS}{segment(node, 'node name')}/"


def leader(name: str) -> str:
    return LEADER + segment(name)


def liveness(node: str) -> str:
    return LIVENESS + segment(node, "node name")


def last_segment(key: str) -> str:
    return key.rsplit("/", 1)[1]


# Taking routed off the cluster (routed.datastore.uninstall): one marker, one done key per node.
UNINSTALL = ROOT + "uninstall/"
UNINSTALL_REQUESTED = UNINSTALL + "requested"
UNINSTALL_DONE = UNINSTALL + "done/"


def uninstall_done(node: str) -> str:
    return UNINSTALL_DONE + segment(node, "node name")
