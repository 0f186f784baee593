"""The Kubernetes documents service advertisement reads: v1 Service and
discovery.k8s.io/v1 EndpointSlice, as the API serves them and as `routedctl apply` stores
them (a cluster without Kubernetes declares its services that way).

Service objects are untrusted (anyone who can create a Service writes them): every
address is checked here, and routed/agent/services.py decides which ones a node may
announce. Only the fields routed reads are kept; the rest of a Kubernetes object (ports,
selectors, managedFields, ...) is ignored, so `kubectl get -o yaml` output applies as it is.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field

from routed.resources.base import MODEL_CONFIG, NAMESPACE_NAME, Model, field_error
from routed.resources.policy import KubeObjectMeta, NamespacedResource

_LENIENT = ConfigDict(**{**MODEL_CONFIG, "extra": "ignore"})


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise field_error(f'"{text}" is not an IP address') from None


IPText = Annotated[str, AfterValidator(_ip)]


def _cluster_ip(text: str) -> str:
    # "None": a headless Service; "": not allocated yet. Neither is an address to announce.
    return text if text in ("None", "") else _ip(text)


ClusterIPText = Annotated[str, AfterValidator(_cluster_ip)]


class _Lenient(Model):
    model_config = _LENIENT


class ServiceSpec(_Lenient):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    cluster_ip: ClusterIPText | None = Field(None, alias="clusterIP")
    cluster_ips: list[ClusterIPText] = Field(default_factory=list, alias="clusterIPs")
    external_ips: list[IPText] = Field(default_factory=list, alias="externalIPs")
    external_traffic_policy: Literal["Cluster", "Local"] | None = None

    @property
    def local(self) -> bool:
        return self.external_traffic_policy == "Local"

    def all_cluster_ips(self) -> list[str]:
        ips = [*self.cluster_ips, *([self.cluster_ip] if self.cluster_ip else [])]
        return sorted({ip for ip in ips if ip not in ("None", "")})


class LoadBalancerIngress(_Lenient):
    ip: IPText | None = None
    hostname: str | None = None


class LoadBalancerStatus(_Lenient):
    ingress: list[LoadBalancerIngress] | None = None


class ServiceStatus(_Lenient):
    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)


class Service(NamespacedResource):
    kind_name = "Service"
    plural = "services"
    aliases = ("service", "svc")
    api_group: ClassVar[str] = "v1"
    model_config = _LENIENT

    api_version: Literal["v1"] = "v1"
    kind: Literal["Service"] = "Service"
    metadata: KubeObjectMeta
    spec: ServiceSpec = Field(default_factory=ServiceSpec)
    status: ServiceStatus = Field(default_factory=ServiceStatus)

    def load_balancer_ips(self) -> list[str]:
        return sorted({i.ip for i in self.status.load_balancer.ingress or [] if i.ip})


class EndpointConditions(_Lenient):
    # As kube-proxy reads it: an unset `ready` means ready.
    ready: bool | None = None


class Endpoint(_Lenient):
    addresses: list[str] = Field(default_factory=list)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    node_name: str | None = None

    @property
    def ready(self) -> bool:
        return self.conditions.ready is not False


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class EndpointSlice(NamespacedResource):
    kind_name = "EndpointSlice"
    plural = "endpointslices"
    aliases = ("endpointslice", "eps")
    api_group: ClassVar[str] = "discovery.k8s.io/v1"
    model_config = _LENIENT

    api_version: Literal["discovery.k8s.io/v1"] = "discovery.k8s.io/v1"
    kind: Literal["EndpointSlice"] = "EndpointSlice"
    metadata: KubeObjectMeta
    spec: None = None  # an EndpointSlice has no spec: its fields are at the top
    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: list[Endpoint] | None = None  # the API sends null for none

    @property
    def service_name(self) -> str | None:
        """The Service this slice belongs to (the label the EndpointSlice controller sets)."""
        name = (self.metadata.labels or {}).get(SERVICE_NAME_LABEL)
        return name if name and NAMESPACE_NAME.fullmatch(name) else None

    def ready_nodes(self) -> set[str]:
        """The nodes holding a ready endpoint of this slice (FQDN slices name no pod:
        kube-proxy ignores them, and so does routed)."""
        if self.address_type == "FQDN":
            return set()
        return {e.node_name for e in self.endpoints or [] if e.ready and e.node_name}


def from_api(cls: type[Service] | type[EndpointSlice], obj: Any) -> Service | EndpointSlice:
    """A Service or EndpointSlice from an object the API listed (list items carry no
    apiVersion and kind); raises pydantic.ValidationError."""
    if not isinstance(obj, dict):
        raise TypeError(f"{cls.kind_name}: not an object")
    return cls.model_validate({**obj, "apiVersion": cls.api_group, "kind": cls.model_fields["kind"].default})
