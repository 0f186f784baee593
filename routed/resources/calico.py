"""projectcalico.org/v3 documents turned into routed.io/v1 ones, for operators coming from Calico.

    doc = to_routed(doc) if is_calico(doc) else doc     # InvalidResource on a field routed lacks

Pure: dict in, dict out; the routed models validate the result as they validate anything else.

Every Calico field has one of three fates, and none is silent:
- it maps to a routed field (same meaning, maybe another name),
- it is accepted only at the value that means what routed does anyway (Calico's default), and
  refused by name at any other value,
- it is refused by name (routed has no such feature).
The one documented exception is metadata the Calico datastore wrote (uid, resourceVersion,
creationTimestamp, generation...), which names the object in *that* datastore: the routed object
is new, so it gets its own. That is what lets `calicoctl get ippools -o yaml` output be applied.
(A policy rule's own ``metadata.annotations``, which Calico's samples write, are notes with no
effect on any verdict; they are dropped the same way.)
"""

from __future__ import annotations

import json
from typing import Any, Callable

from routed.errors import InvalidResource
from routed.resources.base import API_VERSION, describe

CALICO_API_VERSION = "projectcalico.org/v3"

# Identity the Calico datastore assigned; meaningless in routed's (see the module docstring).
_DATASTORE_METADATA = {"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
                       "selfLink", "namespace"}
_KEPT_METADATA = {"name", "labels", "annotations"}


def is_calico(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("apiVersion") == CALICO_API_VERSION


# --- what each Calico field becomes -----------------------------------------------------
# A rule takes the Calico value and returns {routed field: value} (empty: nothing to carry),
# or raises _Refused with why.


class _Refused(Exception):
    def __init__(self, why: str, at: str = ""):
        super().__init__(why)
        self.at = at  # where below the spec field, e.g. "[0].source.services"


def _same(routed_field: str) -> Callable[[Any], dict]:
    return lambda value: {routed_field: value}


def _only(expected: Any, why: str) -> Callable[[Any], dict]:
    """Accepted at ``expected`` (Calico's default, what routed always does); refused otherwise."""

    def rule(value: Any) -> dict:
        if value != expected and not (_empty(expected) and _empty(value)):
            raise _Refused(f"{_show(value)} is not supported by routed ({why}); only {_show(expected)} is")
        return {}

    return rule


def _show(value: Any) -> str:
    """A value as the manifest spells it (true, "Manual"), not as Python does (True, 'Manual')."""
    return json.dumps(value)


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {} or value == ""


def _refuse(why: str) -> Callable[[Any], dict]:
    def rule(value: Any) -> dict:
        if _empty(value):
            return {}  # an empty list/unset value asks for nothing routed lacks
        raise _Refused(f"not supported by routed ({why})")

    return rule


def _allowed_uses(value: Any) -> dict:
    # routed gives pool addresses to workloads only: its IPIP/VXLAN tunnels use the node's
    # own address, so "Tunnel" has nothing to allow and costs nothing; "LoadBalancer" would.
    uses = value if isinstance(value, list) else [value]
    if "Workload" not in uses:
        raise _Refused(f"{_show(value)} is not supported by routed: its pools always serve Workload")
    others = [u for u in uses if u not in ("Workload", "Tunnel")]
    if others:
        raise _Refused(f"{', '.join(map(str, others))} is not supported by routed (pools serve pods only)")
    return {}


def _restart_mode(value: Any) -> dict:
    if value == "GracefulRestart":
        return {"gracefulRestart": True}
    raise _Refused(f"{_show(value)} is not supported by routed; only \"GracefulRestart\" is")


_IPPOOL = {
    "cidr": _same("cidr"),
    "blockSize": _same("blockSize"),
    "ipipMode": _same("ipipMode"),
    "vxlanMode": _same("vxlanMode"),
    "natOutgoing": _same("natOutgoing"),
    "disabled": _same("disabled"),
    "nodeSelector": _same("nodeSelector"),
    "allowedUses": _allowed_uses,
    "disableBGPExport": _only(False, "every pool's blocks are announced over BGP"),
    "assignmentMode": _only("Automatic", "addresses are always assigned automatically"),
    "ipip": _refuse("deprecated in Calico; use ipipMode"),
    "nat-outgoing": _refuse("deprecated in Calico; use natOutgoing"),
}

_BGPPEER = {
    "peerIP": _same("peerIP"),
    "asNumber": _same("asNumber"),
    "node": _same("node"),
    "nodeSelector": _same("nodeSelector"),
    "password": _same("password"),
    "sourceAddress": _same("sourceAddress"),
    "keepaliveTime": _same("keepaliveTime"),
    "maxRestartTime": _same("maxRestartTime"),
    "restartMode": _restart_mode,
    "peerSelector": _same("peerSelector"),
    "reversePeering": _only("Auto", "a session with a node is always configured at both ends"),
    "keepOriginalNextHop": _only(False, "the next hop is always the node"),
    "nextHopMode": _only("Auto", "the next hop is always the node"),
    "localASNumber": _refuse("one local AS per node, from BGPConfiguration or the Node"),
    "failureDetectionMode": _only("None", "no BFD"),
    "birdGatewayMode": _only("Recursive", "no BIRD"),
    "numAllowedLocalASNumbers": _only(0, "routes carrying our own AS are always dropped"),
    "ttlSecurity": _only(0, "no GTSM"),
    "filters": _refuse("no BGP filters; routes are checked against the IP pools"),
    "reachableBy": _refuse("no gateway pinning for peers"),
    "localWorkloadSelector": _refuse("no peering with workloads"),
}

_BGPCONFIGURATION = {
    "asNumber": _same("asNumber"),
    "nodeToNodeMeshEnabled": _same("nodeToNodeMeshEnabled"),
    "logSeverityScreen": _same("logSeverity"),
    "listenPort": _same("listenPort"),
    # The same shape in both: a list of {cidr}; the routed model validates the entries.
    "serviceClusterIPs": _same("serviceClusterIPs"),
    "serviceExternalIPs": _same("serviceExternalIPs"),
    "serviceLoadBalancerIPs": _same("serviceLoadBalancerIPs"),
    "communities": _same("communities"),
    "prefixAdvertisements": _same("prefixAdvertisements"),
    "nodeMeshPassword": _refuse("no password on the node-to-node mesh"),
    "nodeMeshMaxRestartTime": _refuse("the mesh's restart time is not configurable"),
    "bindMode": _only("None", "the speaker listens on every address"),
    "ignoredInterfaces": _refuse("interfaces are not scanned for routes"),
    "localWorkloadPeeringIPV4": _refuse("no peering with workloads"),
    "localWorkloadPeeringIPV6": _refuse("no peering with workloads"),
}

_IPAMCONFIGURATION = {
    "strictAffinity": _same("strictAffinity"),
    "maxBlocksPerHost": _same("maxBlocksPerHost"),
    "autoAllocateBlocks": _same("autoAllocateBlocks"),
}

# --- policy: routed.io's NetworkPolicy and GlobalNetworkPolicy are Calico-shaped ---------


def _mapped(rules: dict[str, Callable[[Any], dict]], doc: Any) -> Any:
    """doc's fields through rules (anything not a mapping is left for the routed model to refuse)."""
    if not isinstance(doc, dict):
        return doc
    out: dict[str, Any] = {}
    for field, value in doc.items():
        rule = rules.get(field)
        if rule is None:
            raise _Refused("unknown Calico field, not supported by routed", f".{field}")
        try:
            out.update(rule(value))
        except _Refused as why:
            raise _Refused(str(why), f".{field}{why.at}") from None
    return out


def _each(rules: dict[str, Callable[[Any], dict]], field: str) -> Callable[[Any], dict]:
    def rule(value: Any) -> dict:
        if not isinstance(value, list):
            return {field: value}
        out = []
        for i, item in enumerate(value):
            try:
                out.append(_mapped(rules, item))
            except _Refused as why:
                raise _Refused(str(why), f"[{i}]{why.at}") from None
        return {field: out}

    return rule


def _notes(value: Any) -> dict:
    """A rule's metadata: annotations only, which change no verdict (dropped)."""
    extra = sorted(set(value) - {"annotations"}) if isinstance(value, dict) else []
    if extra or not isinstance(value, (dict, type(None))):
        raise _Refused("only annotations are taken (and dropped: they change no verdict)",
                       f".{extra[0]}" if extra else "")
    return {}


_ENTITY = {
    **{f: _same(f) for f in ("nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts")},
    "serviceAccounts": _refuse("no service account matches; select the pods by their labels"),
    "services": _refuse("no Service matches in rules; select the pods behind the Service by their labels"),
}

_RULE = {
    **{f: _same(f) for f in ("action", "protocol", "notProtocol", "icmp", "notICMP", "ipVersion")},
    "source": lambda value: {"source": _mapped(_ENTITY, value)},
    "destination": lambda value: {"destination": _mapped(_ENTITY, value)},
    "http": _refuse("no HTTP (layer 7) matches"),
    "metadata": _notes,
}


def _hints(value: Any) -> dict:
    # Felix's precomputation hint: it changes no verdict, and routed programs every policy anyway.
    if not isinstance(value, list) or any(h != "AssumeNeededOnEveryNode" for h in value):
        raise _Refused(f'{_show(value)} is not a list of known hints (only "AssumeNeededOnEveryNode")')
    return {}


_NETWORKPOLICY = {
    **{f: _same(f) for f in ("order", "selector", "types")},
    "ingress": _each(_RULE, "ingress"),
    "egress": _each(_RULE, "egress"),
    "tier": _only("default", "one tier of routed.io policies, ahead of Kubernetes ones; no Tier resource"),
    "serviceAccountSelector": _refuse("no service accounts; select the pods by their labels"),
    "performanceHints": _hints,
}

_GLOBALNETWORKPOLICY = {
    **_NETWORKPOLICY,
    "namespaceSelector": _same("namespaceSelector"),
    "doNotTrack": _only(False, "policy is for pods, after connection tracking"),
    "preDNAT": _only(False, "policy is for pods, after DNAT"),
    "applyOnForward": _only(False, "no host endpoints; pods' policy always applies to forwarded traffic"),
}

# Calico kind -> (routed kind, rules). calicoctl writes IPAMConfiguration; the CRD is IPAMConfig.
_KINDS: dict[str, tuple[str, dict[str, Callable[[Any], dict]]]] = {
    "IPPool": ("IPPool", _IPPOOL),
    "BGPPeer": ("BGPPeer", _BGPPEER),
    "BGPConfiguration": ("BGPConfiguration", _BGPCONFIGURATION),
    "IPAMConfiguration": ("IPAMConfig", _IPAMCONFIGURATION),
    "IPAMConfig": ("IPAMConfig", _IPAMCONFIGURATION),
    "NetworkPolicy": ("NetworkPolicy", _NETWORKPOLICY),
    "GlobalNetworkPolicy": ("GlobalNetworkPolicy", _GLOBALNETWORKPOLICY),
}
_NAMESPACED = {"NetworkPolicy"}  # their metadata.namespace is theirs, not the datastore's

# What each routed kind is allowed to carry over; documented in the README's "Coming from Calico".
SUPPORTED_KINDS = tuple(_KINDS)


def to_routed(doc: dict) -> dict:
    """The routed.io/v1 document for one projectcalico.org/v3 document."""
    kind = doc.get("kind")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    name = name if isinstance(name, str) else None
    if kind not in _KINDS:
        raise InvalidResource(
            f"{describe(str(kind), name) if kind else 'document'}: {CALICO_API_VERSION} kind "
            f"{_show(kind)} cannot be converted; routed takes {', '.join(SUPPORTED_KINDS)}")
    routed_kind, rules = _KINDS[kind]
    prefix = f"{describe(kind, name)} ({CALICO_API_VERSION})"

    unknown = sorted(set(doc) - {"apiVersion", "kind", "metadata", "spec"})
    if unknown:
        raise InvalidResource(f"{prefix}: {unknown[0]}: unknown field")
    if not isinstance(metadata, dict):
        raise InvalidResource(f"{prefix}: metadata: must be a mapping with a name")
    kept = _KEPT_METADATA | ({"namespace"} if kind in _NAMESPACED else set())
    extra = sorted(set(metadata) - kept - _DATASTORE_METADATA)
    if extra:
        raise InvalidResource(f"{prefix}: metadata.{extra[0]}: not supported by routed")
    spec = doc.get("spec") if doc.get("spec") is not None else {}
    if not isinstance(spec, dict):
        raise InvalidResource(f"{prefix}: spec: must be a mapping")

    routed_spec: dict[str, Any] = {}
    for field, value in spec.items():
        rule = rules.get(field)
        if rule is None:
            raise InvalidResource(f"{prefix}: spec.{field}: unknown Calico field, not supported by routed")
        try:
            routed_spec.update(rule(value))
        except _Refused as why:
            raise InvalidResource(f"{prefix}: spec.{field}{why.at}: {why}") from None
    return {
        "apiVersion": API_VERSION,
        "kind": routed_kind,
        "metadata": {k: v for k, v in metadata.items() if k in kept},
        "spec": routed_spec,
    }
