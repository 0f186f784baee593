"""Table columns of each resource kind for `routedctl get` (-o table and -o wide)."""

from __future__ import annotations

from routed import resources as r
from routed.render import Table


def _pool(p):
    s = p.spec
    return [p.metadata.name, s.cidr, s.node_selector], [s.block_size, s.ipip_mode, s.vxlan_mode,
                                                       s.nat_outgoing, s.disabled]


def _peer(p):
    s = p.spec
    scope = f"node={s.node}" if s.node else (s.node_selector or "(global)")
    # A peerSelector peer's address and AS are each selected node's own.
    peer = s.peer_ip or f"nodes: {s.peer_selector}"
    return [p.metadata.name, peer, s.as_number or "(node's)", scope], [s.hold_time, s.keepalive_time,
                                                              s.graceful_restart, "yes" if s.password else ""]


def _bgpconfig(c):
    s = c.spec
    return [c.metadata.name, s.as_number, s.node_to_node_mesh_enabled], [s.listen_port, s.log_severity]


def _ipamconfig(c):
    s = c.spec
    return [c.metadata.name, s.strict_affinity, s.max_blocks_per_host], [s.auto_allocate_blocks]


def _node(n):
    bgp = n.spec.bgp
    return ([n.metadata.name, bgp.ipv4_address if bgp else "", (bgp.as_number if bgp else None) or "(global)"],
            [bgp.route_reflector_cluster_id if bgp else "",
             ",".join(f"{k}={v}" for k, v in sorted((n.metadata.labels or {}).items()))])


def _labels(labels) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def _policy(p):
    s = p.spec
    scope = [p.namespace] if p.namespaced else []
    return [*scope, p.metadata.name, "" if s.order is None else s.order, s.selector], [
        ",".join(s.types), len(s.ingress), len(s.egress)]


def _kube_policy(p):
    s = p.spec
    sel = s.pod_selector
    return [p.namespace, p.metadata.name, _labels(sel.match_labels) or "{}"], [
        ",".join(s.policy_types), len(s.ingress or []), len(s.egress or [])]


def _namespace(n):
    return [n.metadata.name, _labels(n.metadata.labels)], []


def _service(s):
    spec = s.spec
    return [s.namespace, s.metadata.name, spec.type, ",".join(spec.all_cluster_ips())], [
        ",".join(spec.external_ips), ",".join(s.load_balancer_ips()), spec.external_traffic_policy or "Cluster"]


def _endpointslice(e):
    return [e.namespace, e.metadata.name, e.service_name or "", e.address_type], [
        ",".join(sorted(e.ready_nodes()))]


COLUMNS = {
    r.IPPool: (["NAME", "CIDR", "SELECTOR"], ["BLOCKSIZE", "IPIP", "VXLAN", "NAT", "DISABLED"], _pool),
    r.BGPPeer: (["NAME", "PEERIP", "ASN", "NODE"], ["HOLD", "KEEPALIVE", "GRACEFUL", "PASSWORD"], _peer),
    r.BGPConfiguration: (["NAME", "ASN", "MESH"], ["PORT", "LOGSEVERITY"], _bgpconfig),
    r.IPAMConfig: (["NAME", "STRICTAFFINITY", "MAXBLOCKSPERHOST"], ["AUTOALLOCATEBLOCKS"], _ipamconfig),
    r.Node: (["NAME", "IPV4", "ASN"], ["RRCLUSTERID", "LABELS"], _node),
    r.NetworkPolicy: (["NAMESPACE", "NAME", "ORDER", "SELECTOR"], ["TYPES", "INGRESS", "EGRESS"], _policy),
    r.GlobalNetworkPolicy: (["NAME", "ORDER", "SELECTOR"], ["TYPES", "INGRESS", "EGRESS"], _policy),
    r.KubeNetworkPolicy: (["NAMESPACE", "NAME", "PODSELECTOR"], ["TYPES", "INGRESS", "EGRESS"], _kube_policy),
    r.Namespace: (["NAME", "LABELS"], [], _namespace),
    r.Service: (["NAMESPACE", "NAME", "TYPE", "CLUSTERIP"], ["EXTERNALIPS", "LOADBALANCERIPS", "TRAFFICPOLICY"],
                _service),
    r.EndpointSlice: (["NAMESPACE", "NAME", "SERVICE", "ADDRESSTYPE"], ["READYNODES"], _endpointslice),
}


def resource_table(cls, items) -> Table:
    headers, wide_headers, row = COLUMNS[cls]
    rows = [row(i) for i in items]
    return Table(headers, [a for a, _ in rows], wide_headers, [b for _, b in rows])
