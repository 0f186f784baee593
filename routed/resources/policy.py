"""Network policy resources: routed.io/v1 NetworkPolicy and GlobalNetworkPolicy (Calico's
shape), and the Kubernetes documents routed stores as they are (networking.k8s.io/v1
NetworkPolicy, v1 Namespace) so that the lab and the controller feed one evaluator.

Only validation lives here; what the rules mean is routed/policy/model.py.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from routed.resources.base import (
    CIDR,
    ObjectMeta,
    Model,
    Resource,
    NAMESPACE_NAME,
    SelectorText,
    check_labels,
    field_error,
)

# Protocol names Calico accepts, with their IP protocol numbers.
PROTOCOLS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136}
PORT_PROTOCOLS = {6, 17, 132, 136}
ICMP_PROTOCOLS = {1, 58}

# An IANA service name, as Kubernetes' containerPort name: letters must be lower case.
_PORT_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?")


def protocol_number(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return PROTOCOLS[value]


def _check_protocol(value: Any) -> Any:
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise field_error(f"{value!r} is not a protocol")
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise field_error(f"protocol number {value} is out of range (1-255)")
        return value
    if value not in PROTOCOLS:
        raise field_error(f'unknown protocol "{value}" (one of {", ".join(PROTOCOLS)} or 1-255)')
    return value


def parse_port(value: Any) -> tuple[int, int] | str:
    """80 -> (80, 80); "8000:8080" -> (8000, 8080); "http" -> "http" (a named port)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise field_error(f"{value!r} is not a port, a range a:b or a port name")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise field_error(f"port {value} is out of range (1-65535)")
        return value, value
    low, colon, high = value.partition(":")
    if colon:
        if not (low.isdigit() and high.isdigit()):
            raise field_error(f'"{value}" is not a port range (e.g. 8000:8080)')
        first, last = int(low), int(high)
        if not 1 <= first <= last <= 65535:
            raise field_error(f'port range "{value}" must be ascending within 1-65535')
        return first, last
    if not _PORT_NAME.fullmatch(value):
        raise field_error(f'"{value}" is not a port name (1-15 lower-case letters, digits, "-")')
    return value


PortText = int | str


def _check_ports(ports: list[Any]) -> list[Any]:
    for port in ports:
        parse_port(port)
    return ports


# --- routed.io/v1 ---------------------------------------------------------------------


class ICMPMatch(Model):
    type: int | None = None
    code: int | None = None

    @model_validator(mode="after")
    def _check(self) -> ICMPMatch:
        if self.type is not None and not 0 <= self.type <= 254:
            raise field_error(f"ICMP type {self.type} is out of range (0-254)", "type")
        if self.code is not None:
            if self.type is None:
                raise field_error("an ICMP code needs a type", "code")
            if not 0 <= self.code <= 255:
                raise field_error(f"ICMP code {self.code} is out of range (0-255)", "code")
        return self


class EntityRule(Model):
    nets: list[CIDR] = Field(default_factory=list)
    not_nets: list[CIDR] = Field(default_factory=list)
    selector: SelectorText | None = None
    not_selector: SelectorText | None = None
    namespace_selector: SelectorText | None = None
    ports: list[PortText] = Field(default_factory=list)
    not_ports: list[PortText] = Field(default_factory=list)

    _ports = field_validator("ports", "not_ports")(_check_ports)


class PolicyRule(Model):
    action: Literal["Allow", "Deny", "Log", "Pass"]
    protocol: int | str | None = None
    not_protocol: int | str | None = None
    icmp: ICMPMatch | None = None
    not_icmp: ICMPMatch | None = Field(None, alias="notICMP")
    ip_version: Literal[4, 6] | None = None
    source: EntityRule = Field(default_factory=EntityRule)
    destination: EntityRule = Field(default_factory=EntityRule)

    _protocols = field_validator("protocol", "not_protocol")(_check_protocol)

    @model_validator(mode="after")
    def _check(self) -> PolicyRule:
        proto = protocol_number(self.protocol)
        for side in ("source", "destination"):
            entity = getattr(self, side)
            if (entity.ports or entity.not_ports) and proto not in PORT_PROTOCOLS:
                raise field_error(
                    "ports need protocol TCP, UDP, SCTP or UDPLite", f"{side}.ports"
                )
        for field in ("icmp", "notICMP"):
            if getattr(self, "icmp" if field == "icmp" else "not_icmp") and proto not in ICMP_PROTOCOLS:
                raise field_error("icmp needs protocol ICMP or ICMPv6", field)
        return self


def _default_types(spec: Any) -> None:
    """Calico's default: Egress alone if there are only egress rules, both if both, else Ingress."""
    if spec.types is None:
        if spec.egress and spec.ingress:
            spec.types = ["Ingress", "Egress"]
        elif spec.egress:
            spec.types = ["Egress"]
        else:
            spec.types = ["Ingress"]


class NetworkPolicySpec(Model):
    order: float | int | None = None
    selector: SelectorText = "all()"
    types: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[PolicyRule] = Field(default_factory=list)
    egress: list[PolicyRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _types(self):
        _default_types(self)
        if len(set(self.types)) != len(self.types):
            raise field_error("a type appears twice", "types")
        return self


class GlobalNetworkPolicySpec(NetworkPolicySpec):
    namespace_selector: SelectorText | None = None


class NamespacedResource(Resource):
    namespaced: ClassVar[bool] = True

    @model_validator(mode="after")
    def _namespace(self):
        if self.metadata.namespace is None:
            self.metadata.namespace = "default"
        return self


class NetworkPolicy(NamespacedResource):
    kind_name = "NetworkPolicy"
    plural = "networkpolicies"
    aliases = ("networkpolicy", "netpol", "np", "policy", "policies")

    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)


class GlobalNetworkPolicy(Resource):
    kind_name = "GlobalNetworkPolicy"
    plural = "globalnetworkpolicies"
    aliases = ("globalnetworkpolicy", "gnp")

    kind: Literal["GlobalNetworkPolicy"] = "GlobalNetworkPolicy"
    spec: GlobalNetworkPolicySpec = Field(default_factory=GlobalNetworkPolicySpec)


# --- Kubernetes documents -------------------------------------------------------------


class KubeObjectMeta(ObjectMeta):
    # What the API server adds (managedFields, generation, ...) is not ours to judge.
    model_config = ConfigDict(**{**ObjectMeta.model_config, "extra": "ignore"})


class LabelSelectorRequirement(Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    _check_key = field_validator("key")(lambda key: check_labels({key: ""}) and key)

    @model_validator(mode="after")
    def _check(self):
        for value in self.values:  # a value no label can have would select nothing, silently
            try:
                check_labels({self.key: value})
            except PydanticCustomError as err:
                raise field_error(err.context["detail"], "values") from None
        if self.operator in ("In", "NotIn") and not self.values:
            raise field_error(f"operator {self.operator} needs values", "values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise field_error(f"operator {self.operator} takes no values", "values")
        return self


class LabelSelector(Model):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    _check_labels = field_validator("match_labels")(lambda labels: check_labels(labels))


class IPBlock(Model):
    cidr: CIDR
    except_: list[CIDR] = Field(default_factory=list, alias="except")

    @model_validator(mode="after")
    def _inside(self):
        import ipaddress

        net = ipaddress.ip_network(self.cidr)
        for text in self.except_:
            other = ipaddress.ip_network(text)
            if other.version != net.version or not other.subnet_of(net):
                raise field_error(f"{text} is not inside {self.cidr}", "except")
        return self


class KubePeer(Model):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        if self.ip_block and (self.pod_selector or self.namespace_selector):
            raise field_error("ipBlock cannot be combined with podSelector or namespaceSelector", "ipBlock")
        if not (self.ip_block or self.pod_selector or self.namespace_selector):
            raise field_error("a peer needs podSelector, namespaceSelector or ipBlock")
        return self


class KubePort(Model):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.port is not None:
            parsed = parse_port(self.port)
            if isinstance(parsed, tuple) and parsed[0] != parsed[1]:
                raise field_error("port must be one port (use endPort for a range)", "port")
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise field_error("endPort needs a numeric port", "endPort")
            if not self.port <= self.end_port <= 65535:
                raise field_error(f"endPort {self.end_port} must be within {self.port}-65535", "endPort")
        return self


class KubeIngressRule(Model):
    from_: list[KubePeer] = Field(default_factory=list, alias="from")
    ports: list[KubePort] = Field(default_factory=list)


class KubeEgressRule(Model):
    to: list[KubePeer] = Field(default_factory=list)
    ports: list[KubePort] = Field(default_factory=list)


class KubeNetworkPolicySpec(Model):
    pod_selector: LabelSelector
    policy_types: list[Literal["Ingress", "Egress"]] | None = None
    # None and [] differ: an absent ingress list with policyTypes [Ingress] denies all,
    # as an empty one does; only the egress default depends on presence.
    ingress: list[KubeIngressRule] | None = None
    egress: list[KubeEgressRule] | None = None

    @model_validator(mode="after")
    def _types(self):
        if self.policy_types is None:
            # As the API server defaults: Ingress always, Egress when egress rules exist.
            self.policy_types = ["Ingress"] + (["Egress"] if self.egress else [])
        return self


class KubeNetworkPolicy(NamespacedResource):
    kind_name = "NetworkPolicy.networking.k8s.io"
    plural = "k8snetworkpolicies"
    aliases = ("networkpolicies.networking.k8s.io", "networkpolicy.networking.k8s.io",
               "k8snetworkpolicy", "knp")
    api_group: ClassVar[str] = "networking.k8s.io/v1"

    api_version: Literal["networking.k8s.io/v1"] = "networking.k8s.io/v1"
    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    metadata: KubeObjectMeta
    spec: KubeNetworkPolicySpec


class NamespaceSpec(Model):
    finalizers: list[str] = Field(default_factory=list)


class Namespace(Resource):
    kind_name = "Namespace"
    plural = "namespaces"
    aliases = ("namespace", "ns")
    api_group: ClassVar[str] = "v1"

    api_version: Literal["v1"] = "v1"
    kind: Literal["Namespace"] = "Namespace"
    metadata: KubeObjectMeta
    spec: NamespaceSpec = Field(default_factory=NamespaceSpec)
    status: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _name(cls, meta: KubeObjectMeta) -> KubeObjectMeta:
        if not NAMESPACE_NAME.fullmatch(meta.name):
            raise field_error(f'"{meta.name}" is not a namespace name (a DNS label, at most 63 characters)')
        return meta
