"""Which Service addresses a node announces (pure logic), as Calico's BGPConfiguration
fields serviceClusterIPs, serviceExternalIPs and serviceLoadBalancerIPs say:

- every node announces each serviceClusterIPs CIDR as it is;
- a Service's external IPs (spec.externalIPs) inside serviceExternalIPs and its
  LoadBalancer IPs (status.loadBalancer.ingress[].ip) inside serviceLoadBalancerIPs go
  out as /32 (/128): from every node with `externalTrafficPolicy: Cluster`, and only
  from the nodes holding a ready endpoint of it with `Local` (then its cluster IPs too,
  as Calico does, so traffic for them also lands where an endpoint is);
- nothing else: an address outside the configured CIDRs, or inside an IP pool (pod
  addresses belong to the node IPAM gives them to), is never announced, whatever a
  Service says. Service objects are untrusted; each one is judged alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from routed.resources.service import EndpointSlice, Service

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Advertisement:
    """The CIDRs of the "default" BGPConfiguration."""

    cluster: tuple[Network, ...] = ()
    external: tuple[Network, ...] = ()
    load_balancer: tuple[Network, ...] = ()

    @classmethod
    def from_spec(cls, spec) -> Advertisement:
        def nets(entries) -> tuple[Network, ...]:
            return tuple(ipaddress.ip_network(e.cidr) for e in entries or ())

        return cls(nets(spec.service_cluster_ips), nets(spec.service_external_ips),
                   nets(spec.service_load_balancer_ips))

    @property
    def cidrs(self) -> tuple[Network, ...]:
        """Every configured CIDR: what the nodes' routes for service addresses fall in."""
        return self.cluster + self.external + self.load_balancer


@dataclass
class Plan:
    prefixes: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)  # what was not announced -> why


def _host(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"{ip}/{ip.max_prefixlen}"


def _inside(net, cidrs) -> bool:
    return any(net.version == c.version and net.subnet_of(c) for c in cidrs)


def _overlaps(net, cidrs) -> bool:
    return any(net.version == c.version and net.overlaps(c) for c in cidrs)


def ready_nodes(slices: list[EndpointSlice]) -> dict[tuple[str, str], set[str]]:
    """(namespace, service) -> the nodes holding a ready endpoint of it."""
    out: dict[tuple[str, str], set[str]] = {}
    for s in slices:
        if s.service_name:
            out.setdefault((s.namespace or "default", s.service_name), set()).update(s.ready_nodes())
    return out


def plan(adv: Advertisement, services: list[Service], slices: list[EndpointSlice], node: str,
         pools: list[Network]) -> Plan:
    """The service prefixes `node` announces, and what was left out and why."""
    out = Plan()
    for cidr in adv.cluster:
        if _overlaps(cidr, pools):
            out.skipped[f"serviceClusterIPs {cidr}"] = "overlaps an IP pool"
        else:
            out.prefixes.add(str(cidr))
    endpoints = ready_nodes(slices)
    for svc in services:
        spec, name = svc.spec, f"Service {svc.namespace}/{svc.name}"
        if spec.type == "ExternalName":
            continue
        here = not spec.local or node in endpoints.get((svc.namespace or "default", svc.name), set())
        wanted = [(ip, adv.external, "serviceExternalIPs") for ip in spec.external_ips]
        wanted += [(ip, adv.load_balancer, "serviceLoadBalancerIPs") for ip in svc.load_balancer_ips()]
        if spec.local:
            # Only where an endpoint is: the cluster CIDR from every node covers the rest.
            wanted += [(ip, adv.cluster, "serviceClusterIPs") for ip in spec.all_cluster_ips()]
        for text, cidrs, field_name in wanted:
            ip = ipaddress.ip_address(text)
            host = ipaddress.ip_network(_host(ip))
            if not _inside(host, cidrs):
                if cidrs is not adv.cluster:  # a cluster IP outside them just has no /32
                    out.skipped[f"{name} {ip}"] = f"outside {field_name}"
            elif _overlaps(host, pools):
                out.skipped[f"{name} {ip}"] = "inside an IP pool"
            elif here:
                out.prefixes.add(str(host))
    return out
