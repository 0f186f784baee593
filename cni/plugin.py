"""The CNI commands, run inside the node agent: cmd_add, cmd_del, cmd_check, cmd_status, cmd_gc.

dispatch() takes the caller's environment and stdin (as forwarded by the plugin) and
returns (exit code, stdout): the agent's CNI server is a thin socket loop around it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ipam.allocator import Allocation
from ipam.blockmath import handle_id
from ipam.errors import AddressInUse, AddressNotInPool, NoMatchingPool, PoolExhausted, TooManyBlocks
from routed.dataplane import names
from routed.dataplane.errors import InterfaceExists, NetnsNotFound, RouteConflict
from routed.errors import Conflict, DatastoreUnavailable, RoutedError
from routed.k8s import AnnotationError, PodNotKnown

from . import spec
from .spec import CNIError, Request

log = logging.getLogger("routed.cni")


class PodNetwork(Protocol):
    """The dataplane as the CNI commands need it (implemented over netlink by the agent)."""

    def setup(self, netns: str, ifname: str, host_ifname: str, ips: list, mtu: int) -> dict: ...

    def teardown(self, netns: str | None, ifname: str, host_ifname: str, ips: list | None) -> None: ...

    def check(self, netns: str, ifname: str, host_ifname: str, ips: list, mtu: int) -> list[str]: ...


class Addresses(Protocol):
    """IPAM as the CNI commands use it (ipam.allocator.IPAM)."""

    def allocate(self, handle: str, node: str, attrs: dict | None = None, num: int = 1,
                 pools: list[str] | None = None, version: int = 4,
                 node_labels: dict | None = None) -> Allocation: ...

    def assign_ip(self, ip: str, handle: str, node: str, attrs: dict | None = None,
                  node_labels: dict | None = None) -> Allocation: ...

    def release_handle(self, handle: str) -> list: ...

    def held_by(self, handle: str) -> list: ...

    def handles_on_node(self, node: str, prefix: str = "") -> set[str]: ...

    def pools_for(self, node_labels: dict, names: list[str] | None = None, version: int = 4,
                  fresh: bool = False) -> list: ...


class PodAnnotations(Protocol):
    """The agent's cache of this node's pods (routed.k8s.podinfo.PodInfo)."""

    def addresses_for(self, namespace: str, pod: str) -> list[str] | None: ...

    def pools_for(self, namespace: str, pod: str, version: int = 4) -> list[str] | None: ...


@dataclass
class Context:
    ipam: Addresses
    node: str
    pods: PodNetwork
    node_labels: Callable[[], dict] = dict
    # The agent's durable release queue (done at once by a worker, retried while etcd is
    # away). DEL hands every release to it; other releases fall back to it when etcd
    # cannot be reached. None: DEL releases before it answers, and a failed release is lost.
    release_later: Callable[[str], None] | None = None
    # Finish a release queued for this handle now (raises while etcd is away). ADD calls
    # it first: a queued release done after the ADD reused the handle would free the
    # address under the new pod.
    settle_release: Callable[[str], None] | None = None
    # With Kubernetes: the agent's cache of this node's pods, whose annotations choose
    # pools and fixed addresses. Read from the cache, never the API.
    pod_info: PodAnnotations | None = None
    # The pods' MTU when the conflist leaves it 0 (the agent's, derived from the uplink).
    pod_mtu: Callable[[], int] = lambda: 1500
    # Network policy (routed.policy.enforcer.PolicyEnforcer): ADD records the pod and programs
    # its policy before answering; DEL forgets it before the addresses are released.
    endpoints: object | None = None
    stats: dict = field(default_factory=dict)


def host_veth_name(req: Request) -> str:
    """cali + 11 hex of sha1("<namespace>.<pod>"), as Calico names it; the container ID
    stands in for runtimes that do not pass Kubernetes names."""
    if req.pod_name:
        return names.host_veth_name(req.pod_namespace, req.pod_name)
    return names.host_veth_name_for_container(req.container_id)


def handle_of(req: Request) -> str:
    return handle_id(req.conf.name, req.container_id, req.ifname)


def cmd_add(req: Request, ctx: Context) -> str:
    if not os.path.exists(req.netns):
        raise CNIError(spec.INVALID_ENVIRONMENT, f"CNI_NETNS {req.netns} does not exist")
    handle, host_if, conf = handle_of(req), host_veth_name(req), req.conf
    if ctx.settle_release is not None:
        ctx.settle_release(handle)
    mtu = conf.mtu or ctx.pod_mtu()
    attrs = {k: v for k, v in (("pod", req.pod_name), ("namespace", req.pod_namespace),
                               ("container", req.container_id[:64])) if v}
    static = conf.runtime_config.get("ips") or []
    annotated: dict[int, list[str] | None] = {}
    if not static:
        static, annotated = _from_annotations(req, ctx)
    allocations = []
    try:
        if static:
            for text in static:
                ip = ipaddress.ip_interface(str(text)).ip
                allocations.append(ctx.ipam.assign_ip(str(ip), handle, ctx.node, attrs,
                                                      node_labels=ctx.node_labels()))
        else:
            for version, wanted, pools in ((4, conf.assign_ipv4, conf.ipv4_pools), (6, conf.assign_ipv6, conf.ipv6_pools)):
                if wanted:
                    pools = annotated.get(version) or pools
                    allocations.append(ctx.ipam.allocate(handle, ctx.node, attrs, pools=pools or None,
                                                         version=version, node_labels=ctx.node_labels()))
        ips = [ip for a in allocations for ip in a.ips]
        pod_if = ctx.pods.setup(req.netns, req.ifname, host_if, ips, mtu)
    except BaseException:
        # Give back what this call took; a retried request's addresses belong to the first one.
        if any(not a.reused for a in allocations):
            _release_quietly(ctx, handle)
        raise
    if ctx.endpoints is not None:
        # Outside the try: a failure leaves the pod closed (its interface is not in the
        # policy table), and the runtime's DEL cleans up as for any failed ADD.
        ctx.endpoints.added(*_endpoint_id(req), host_if, ips, labels=_runtime_labels(conf))
    log.info("ADD %s pod=%s/%s ips=%s", handle, req.pod_namespace, req.pod_name, ",".join(map(str, ips)))
    host = {"name": host_if, "mac": pod_if["host_mac"]}
    pod = {"name": req.ifname, "mac": pod_if["mac"], "sandbox": req.netns}
    return json.dumps(spec.add_result(conf.cni_version, host, pod, ips, mtu))


def _runtime_labels(conf) -> dict | None:
    """Pod labels from runtimeConfig "labels" (the lab, runtimes without Kubernetes);
    None: the agent reads them from its pod cache."""
    labels = conf.runtime_config.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise CNIError(spec.INVALID_CONFIG, 'runtimeConfig "labels" must map strings to strings')
    return labels


def _endpoint_id(req: Request) -> tuple[str, str, str]:
    """(namespace, pod, container) of the workload endpoint."""
    return req.pod_namespace or "default", req.pod_name or req.container_id[:63], req.container_id


def _from_annotations(req: Request, ctx: Context) -> tuple[list[str], dict[int, list[str] | None]]:
    """Fixed addresses (routed.io/ipAddrs), else the pools per IP version (routed.io/ipv4pools,
    ipv6pools; the pod's, else its namespace's) from the pod cache; None: the conflist's."""
    if ctx.pod_info is None or not (req.pod_name and req.pod_namespace):
        return [], {}
    fixed = ctx.pod_info.addresses_for(req.pod_namespace, req.pod_name)
    if fixed:
        return fixed, {}
    conf = req.conf
    return [], {version: ctx.pod_info.pools_for(req.pod_namespace, req.pod_name, version)
                for version, wanted in ((4, conf.assign_ipv4), (6, conf.assign_ipv6)) if wanted}


def _release_quietly(ctx: Context, handle: str) -> None:
    try:
        ctx.ipam.release_handle(handle)
    except (DatastoreUnavailable, Conflict) as err:
        if ctx.release_later is not None:
            try:
                ctx.release_later(handle)
                return
            except RoutedError as queue_err:
                err = queue_err
        log.error("release of %s lost: %s", handle, err)


def cmd_del(req: Request, ctx: Context) -> str:
    """Never fails for what is already gone: containerd calls DEL twice, the second time
    with no netns. The pod's routes go first, so a released address is never routed to
    two pods; once they are gone, when the release happens no longer matters, only that
    it does (ctx.release_later queues it durably)."""
    handle = handle_of(req)
    netns = req.netns if req.netns and os.path.exists(req.netns) else None
    ips = None
    if netns is None:
        try:
            # Without its netns, the addresses are what proves a veth is this sandbox's.
            ips = ctx.ipam.held_by(handle)
        except (DatastoreUnavailable, Conflict):
            pass
    ctx.pods.teardown(netns, req.ifname, host_veth_name(req), ips)
    if ctx.endpoints is not None:
        try:
            ctx.endpoints.removed(*_endpoint_id(req))
        except RoutedError as err:  # DEL never fails; the record stays until the next DEL
            log.warning("DEL %s: workload endpoint not removed: %s", handle, err)
    if ctx.release_later is None:
        _release_quietly(ctx, handle)
        log.info("DEL %s: released", handle)
        return ""
    try:
        ctx.release_later(handle)
    except RoutedError as err:
        # The queue cannot be written (a full disk): release now, or fail and the runtime retries.
        log.warning("DEL %s: %s; releasing at once", handle, err)
        ctx.ipam.release_handle(handle)
        log.info("DEL %s: released", handle)
        return ""
    log.info("DEL %s: release queued", handle)
    return ""


def cmd_check(req: Request, ctx: Context) -> str:
    if not os.path.exists(req.netns):
        raise CNIError(spec.UNKNOWN_CONTAINER, f"CNI_NETNS {req.netns} does not exist")
    expected = spec.result_ips(req.conf.prev_result)
    allocation = ctx.ipam.held_by(handle_of(req))
    problems = [f"address {ip} is not allocated to this container" for ip in expected if ip not in allocation]
    problems += ctx.pods.check(req.netns, req.ifname, host_veth_name(req), expected, req.conf.mtu or ctx.pod_mtu())
    if problems:
        raise CNIError(spec.CHECK_FAILED, "; ".join(problems))
    return ""


def cmd_status(req: Request, ctx: Context) -> str:
    conf = req.conf
    try:
        for version, wanted, pools in ((4, conf.assign_ipv4, conf.ipv4_pools), (6, conf.assign_ipv6, conf.ipv6_pools)):
            if wanted:
                ctx.ipam.pools_for(ctx.node_labels(), pools or None, version)
    except (NoMatchingPool, DatastoreUnavailable) as err:
        raise CNIError(spec.NOT_AVAILABLE, f"routed cannot assign addresses: {err}") from None
    return ""


def cmd_gc(req: Request, ctx: Context) -> str:
    """Release this node's handles of this network that the runtime no longer knows."""
    valid = {handle_id(req.conf.name, a["containerID"], a["ifname"]) for a in req.conf.valid_attachments}
    for handle in ctx.ipam.handles_on_node(ctx.node, prefix=req.conf.name + "."):
        if handle not in valid:
            log.info("GC %s: not a valid attachment, releasing", handle)
            _release_quietly(ctx, handle)
    return ""


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}

# Errors from below, as the CNI codes a runtime understands.
_CODES = [
    (PoolExhausted, spec.POOL_EXHAUSTED),
    (TooManyBlocks, spec.POOL_EXHAUSTED),
    (NoMatchingPool, spec.NO_MATCHING_POOL),
    (AddressNotInPool, spec.NO_MATCHING_POOL),
    (AddressInUse, spec.ADDRESS_IN_USE),
    (InterfaceExists, spec.INTERFACE_EXISTS),
    (RouteConflict, spec.ADDRESS_IN_USE),
    (NetnsNotFound, spec.INVALID_ENVIRONMENT),
    (DatastoreUnavailable, spec.TRY_AGAIN_LATER),
    (Conflict, spec.TRY_AGAIN_LATER),
    (AnnotationError, spec.INVALID_CONFIG),
    (PodNotKnown, spec.TRY_AGAIN_LATER),
]


def dispatch(env: dict, stdin: str, ctx: Context) -> tuple[int, str]:
    """One CNI request: (exit code, stdout). Never raises, never prints a traceback."""
    version = _version_of(stdin)
    try:
        req = spec.parse_request(env, stdin)
        if req.command == "VERSION":
            return 0, spec.version_result()
        version = req.conf.cni_version
        return 0, COMMANDS[req.command](req, ctx)
    except CNIError as err:
        return 1, err.to_json(version)
    except RoutedError as err:
        code = next((c for cls, c in _CODES if isinstance(err, cls)), spec.INTERNAL)
        return 1, CNIError(code, str(err)).to_json(version)
    except ValueError as err:  # e.g. a static address that does not parse
        return 1, CNIError(spec.INVALID_CONFIG, str(err)).to_json(version)
    except Exception as err:
        log.exception("CNI %s failed", env.get("CNI_COMMAND"))
        return 1, CNIError(spec.INTERNAL, f"internal error: {type(err).__name__}: {err}").to_json(version)


def _version_of(stdin: str) -> str:
    try:
        version = json.loads(stdin).get("cniVersion")
        return version if version in spec.SUPPORTED_VERSIONS else "1.1.0"
    except (ValueError, AttributeError):
        return "1.1.0"
