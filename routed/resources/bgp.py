"""BGPConfiguration (global and per-node settings) and BGPPeer (explicit sessions)."""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from routed.resources.base import (
    CIDR,
    ASNumber,
    Model,
    Resource,
    SelectorText,
    check_dns_subdomain,
    dns_subdomain_problem,
    field_error,
)

# --- BGPConfiguration -----------------------------------------------------------------


# Routes one peer may have kept when nothing sets a limit: far above what a mesh or
# reflector peer sends in a large cluster (a block per 64 pods), yet a bound on memory.
DEFAULT_MAX_PREFIXES = 100_000


class ServiceCIDR(Model):
    """One entry of serviceClusterIPs / serviceExternalIPs / serviceLoadBalancerIPs, as Calico's."""

    cidr: CIDR


def _distinct_cidrs(entries: list[ServiceCIDR]) -> list[ServiceCIDR]:
    seen = set()
    for entry in entries:
        if entry.cidr in seen:
            raise field_error(f"{entry.cidr} is listed twice")
        seen.add(entry.cidr)
    return entries


ServiceCIDRs = Annotated[list[ServiceCIDR], AfterValidator(_distinct_cidrs)]


# A community as Calico spells it: standard "aa:nn" (16-bit parts) or large "aa:nn:mm" (32-bit).
_COMMUNITY = re.compile(r"(\d+):(\d+)(?::(\d+))?")
_COMMUNITY_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?")


def community_problem(value: str) -> str | None:
    """Why value is not a BGP community literal; None when it is one."""
    found = _COMMUNITY.fullmatch(value)
    if not found:
        return f'"{value}" is not a community: aa:nn (standard) or aa:nn:mm (large)'
    parts = [int(p) for p in found.groups() if p is not None]
    top = 0xFFFF if len(parts) == 2 else 0xFFFFFFFF
    if any(p > top for p in parts):
        kind = "standard community aa:nn" if len(parts) == 2 else "large community aa:nn:mm"
        return f'"{value}": each part of a {kind} is at most {top}'
    return None


class Community(Model):
    """A named community value, for prefixAdvertisements to refer to."""

    name: str
    value: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _COMMUNITY_NAME.fullmatch(name) or _COMMUNITY.fullmatch(name):
            raise field_error(f'"{name}" is not a community name: letters, digits, "-", "_", "." '
                              "(and not itself a community value)")
        return name

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: str) -> str:
        problem = community_problem(value)
        if problem:
            raise field_error(problem)
        return value


class PrefixAdvertisement(Model):
    """Communities for every announced prefix inside cidr (the cidr itself included)."""

    cidr: CIDR
    communities: list[str] = Field(min_length=1)


class BGPConfigurationSpec(Model):
    as_number: ASNumber = 64512
    node_to_node_mesh_enabled: bool = Field(True, alias="nodeToNodeMeshEnabled")
    listen_port: int = Field(179, ge=1, le=65535)
    log_severity: Literal["Debug", "Info", "Warning", "Error", "Fatal"] = "Info"
    # The receive limit of every peer without its own: mesh, reflectors, BGPPeers with maxPrefixes 0.
    max_prefixes: int = Field(DEFAULT_MAX_PREFIXES, ge=1)
    # Pod traffic between nodes over WireGuard (routed/agent/wireguard.py). Enabled: nodes
    # that can (and did not opt out) encrypt between themselves, and reach the others in
    # clear; Required: never in clear, a node without WireGuard is unreachable for pods.
    # Read from the "default" BGPConfiguration only: one setting for the cluster. Unset:
    # Disabled, port 51820.
    wireguard: Literal["Enabled", "Disabled", "Required"] | None = None
    wireguard_listen_port: int | None = Field(None, ge=1, le=65535)
    # Service addresses announced over BGP (routed/agent/services.py), both families: every
    # node announces the cluster-IP CIDRs; Services' external and LoadBalancer IPs inside
    # these CIDRs go out as /32 (/128). Only on "default", as Calico has it. None: [] (and
    # left out of the stored document, as every unset field is).
    service_cluster_ips: ServiceCIDRs | None = Field(None, alias="serviceClusterIPs")
    service_external_ips: ServiceCIDRs | None = Field(None, alias="serviceExternalIPs")
    service_load_balancer_ips: ServiceCIDRs | None = Field(None, alias="serviceLoadBalancerIPs")


    # Unset (None) rather than empty, so a configuration without them reads as before.
    communities: list[Community] | None = None
    prefix_advertisements: list[PrefixAdvertisement] | None = None

    @model_validator(mode="after")
    def _check_communities(self) -> BGPConfigurationSpec:
        names = set()
        for i, community in enumerate(self.communities or ()):
            if community.name in names:
                raise field_error(f'community name "{community.name}" is defined twice', f"communities[{i}].name")
            names.add(community.name)
        for i, advertisement in enumerate(self.prefix_advertisements or ()):
            for j, item in enumerate(advertisement.communities):
                if item not in names and community_problem(item):
                    raise field_error(f'"{item}" is neither a name in spec.communities nor a community '
                                      "value aa:nn or aa:nn:mm", f"prefixAdvertisements[{i}].communities[{j}]")
        return self

    def community_values(self) -> list[tuple[str, tuple[str, ...]]]:
        """(cidr, community values) per prefixAdvertisement, names resolved."""
        named = {c.name: c.value for c in self.communities or ()}
        return [(a.cidr, tuple(named.get(c, c) for c in a.communities)) for a in self.prefix_advertisements or ()]


class BGPConfiguration(Resource):
    """Named "default" for the cluster, or "node.<nodename>" to override some of it for one node."""

    kind_name = "BGPConfiguration"
    plural = "bgpconfigurations"
    aliases = ("bgpconfiguration", "bgpconfig", "bgpconfigs")

    kind: Literal["BGPConfiguration"] = "BGPConfiguration"
    spec: BGPConfigurationSpec = Field(default_factory=BGPConfigurationSpec)

    @property
    def node_name(self) -> str | None:
        """The node a per-node override applies to; None for the global one."""
        return self.name.removeprefix("node.") if self.name != "default" else None

    @model_validator(mode="after")
    def _default_or_node(self) -> BGPConfiguration:
        if self.name != "default" and not (
            self.name.startswith("node.") and len(self.name) > len("node.")
        ):
            raise field_error(
                f'BGPConfiguration must be named "default" or "node.<nodename>", '
                f'not "{self.name}"',
                "metadata.name",
            )
        if self.name != "default":
            for field in ("serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs"):
                if getattr(self.spec, SERVICE_FIELDS[field]):
                    raise field_error('Service advertisement is cluster-wide: set it on the "default" '
                                      "BGPConfiguration only", f"spec.{field}")
            cluster_wide = BGPConfigurationSpec()
            for name in sorted(self.spec.model_fields_set - NODE_OVERRIDES.keys()):
                value = getattr(self.spec, name)
                if value not in (None, [], getattr(cluster_wide, name)):
                    wire = BGPConfigurationSpec.model_fields[name].alias or name
                    raise field_error(
                        f'{wire} is cluster-wide: set it on the "default" BGPConfiguration (a node overrides '
                        f"only {', '.join(sorted(NODE_OVERRIDES.values()))}"
                        + ("; a node's own AS is its Node's spec.bgp.asNumber)" if name == "as_number" else ")"),
                        f"spec.{wire}")
        return self

    def overriding(self, default: BGPConfigurationSpec) -> BGPConfigurationSpec:
        """The configuration of this one's node: default, with what this one sets of
        NODE_OVERRIDES (Calico's node.<name> semantics); communities merged by name."""
        update = {name: getattr(self.spec, name) for name in self.spec.model_fields_set & NODE_OVERRIDES.keys()}
        if "communities" in update:
            mine = {c.name for c in update["communities"] or ()}
            update["communities"] = [c for c in default.communities or () if c.name not in mine] + \
                list(update["communities"] or ())
        return default.model_copy(update=update)


SERVICE_FIELDS = {"serviceClusterIPs": "service_cluster_ips", "serviceExternalIPs": "service_external_ips",
                  "serviceLoadBalancerIPs": "service_load_balancer_ips"}
# What a node.<name> BGPConfiguration may set, over "default": Calico's three (listenPort,
# logSeverityScreen, prefixAdvertisements), and communities, so that its prefixAdvertisements
# can name their own (field name -> wire name).
NODE_OVERRIDES = {"listen_port": "listenPort", "log_severity": "logSeverity",
                  "prefix_advertisements": "prefixAdvertisements", "communities": "communities"}


# --- BGPPeer --------------------------------------------------------------------------

_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:h|ms|m|s))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": Decimal(3600), "m": Decimal(60), "s": Decimal(1), "ms": Decimal("0.001")}


def _seconds(value: Any) -> Any:
    """Whole seconds from an int or a Go duration ("90s", "1m30s", "1.5m")."""
    if not isinstance(value, str):
        return value  # ints (and wrong types) go on to the strict int check
    text = value.strip()
    if text.isdigit():
        return int(text)
    if not _DURATION.fullmatch(text):
        raise field_error(f'"{value}" is not a duration (e.g. 90 or "90s" or "1m30s")')
    total = sum(Decimal(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    if total != int(total):
        raise field_error(f'"{value}" is not a whole number of seconds')
    return int(total)


Seconds = Annotated[int, BeforeValidator(_seconds)]


def split_peer_ip(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
    """"10.0.0.1", "10.0.0.1:1179", "2001:db8::1" or "[2001:db8::1]:1179"."""
    bracketed = re.fullmatch(r"\[([^\]]*)\](?::(\d+))?", text)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        host, port = text.split(":")
    else:
        host, port = text, None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise field_error(f'"{text}" is not an IP address (or ip:port, [ipv6]:port)') from None
    if port is None:
        return address, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise field_error(f'"{text}": port must be 1-65535')
    return address, int(port)


_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


def secret_key_ok(key: str) -> bool:
    return bool(_SECRET_KEY.fullmatch(key)) and key not in (".", "..")


def secret_ref_ok(name: str, key: str) -> bool:
    """A Secret name and key that name one file <name>/<key>, nothing else."""
    return dns_subdomain_problem(name) is None and secret_key_ok(key)


class SecretKeyRef(Model):
    name: str
    key: str

    _check_name = field_validator("name")(check_dns_subdomain)

    @field_validator("key")
    @classmethod
    def _check_key(cls, key: str) -> str:
        # A Kubernetes Secret key: one file name in the mounted secret, never a path.
        if not secret_key_ok(key):
            raise field_error(f'"{key}" is not a Secret key: 1-253 letters, digits, "-", "_" or ".", '
                              'not "." or ".."')
        return key


class PeerPassword(Model):
    secret_key_ref: SecretKeyRef


DEFAULT_HOLD_TIME = 90


class BGPPeerSpec(Model):
    # peerIP (with asNumber): one router. peerSelector instead: the cluster's nodes it selects,
    # each with its own address, AS number and listen port (Calico's way to make nodes peers).
    peer_ip: str | None = Field(None, alias="peerIP")
    as_number: ASNumber | None = None
    peer_selector: SelectorText | None = None
    # node XOR nodeSelector says which nodes open this session; neither means all of them.
    node: str | None = None
    node_selector: SelectorText | None = None
    password: PeerPassword | None = None
    # Unset, both come from each other: hold time 3 x keepaliveTime (Calico's BGPPeer has only
    # keepaliveTime), keepaliveTime a third of holdTime; neither: 90s and 30s.
    hold_time: Seconds | None = None
    keepalive_time: Seconds | None = None
    graceful_restart: bool = True
    max_restart_time: Seconds = 120
    source_address: Literal["UseNodeIP", "None"] = "UseNodeIP"
    max_prefixes: int = Field(0, ge=0)  # 0 = the BGPConfiguration's maxPrefixes
    # Prefixes this peer may send us even when they are outside every pool.
    allowed_prefixes: list[CIDR] = Field(default_factory=list)

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return split_peer_ip(self.peer_ip)[0] if self.peer_ip else None

    @property
    def port(self) -> int | None:
        return split_peer_ip(self.peer_ip)[1] if self.peer_ip else None

    @field_validator("peer_ip")
    @classmethod
    def _check_peer_ip(cls, text: str | None) -> str | None:
        if text is not None:
            split_peer_ip(text)
        return text

    _check_node = field_validator("node")(check_dns_subdomain)

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline_password(cls, value: Any) -> Any:
        # A password in the resource would be readable by anyone who can list peers.
        if isinstance(value, str):
            raise field_error(
                "inline passwords are not allowed; use "
                "password: {secretKeyRef: {name: <secret>, key: <key>}}"
            )
        return value

    @field_validator("hold_time")
    @classmethod
    def _check_hold_time(cls, seconds: int | None) -> int | None:
        if seconds is not None and seconds != 0 and not 3 <= seconds <= 65535:
            raise field_error(f"hold time {seconds}s must be 0 (no keepalives) or 3-65535")
        return seconds

    @field_validator("keepalive_time")
    @classmethod
    def _check_keepalive_time(cls, seconds: int | None) -> int | None:
        if seconds is not None and seconds < 1:
            raise field_error(f"keepalive time {seconds}s must be at least 1s")
        return seconds

    @field_validator("max_restart_time")
    @classmethod
    def _check_restart_time(cls, seconds: int) -> int:
        # The graceful-restart capability carries the restart time in 12 bits.
        if not 0 <= seconds <= 4095:
            raise field_error(f"restart time {seconds}s must be 0-4095")
        return seconds

    @model_validator(mode="after")
    def _check_combinations(self) -> BGPPeerSpec:
        if self.node is not None and self.node_selector is not None:
            raise field_error(
                "set node (one node) or nodeSelector (several), not both", "nodeSelector"
            )
        if self.peer_selector is not None:
            if self.peer_ip is not None or self.as_number is not None:
                raise field_error("set peerIP and asNumber (a router), or peerSelector (nodes of the "
                                  "cluster, each with its own AS number), not both", "peerSelector")
        elif self.peer_ip is None:
            raise field_error("required (or peerSelector, for peerings with nodes of the cluster)", "peerIP")
        elif self.as_number is None:
            raise field_error("required with peerIP", "asNumber")
        if self.hold_time is None:
            self.hold_time = DEFAULT_HOLD_TIME if self.keepalive_time is None else min(3 * self.keepalive_time,
                                                                                       65535)
        if self.keepalive_time is None:
            self.keepalive_time = max(1, self.hold_time // 3)
        if self.hold_time > 0 and self.keepalive_time >= self.hold_time:
            raise field_error(
                f"keepalive time {self.keepalive_time}s must be less than hold time "
                f"{self.hold_time}s (usually a third of it)",
                "keepaliveTime",
            )
        return self


class BGPPeer(Resource):
    kind_name = "BGPPeer"
    plural = "bgppeers"
    aliases = ("bgppeer",)

    kind: Literal["BGPPeer"] = "BGPPeer"
    spec: BGPPeerSpec
