"""The CNI specification as routed speaks it: parsing requests, shaping results.

Pure logic, no I/O: the agent's CNI server calls parse_request() with the caller's
environment and stdin, and turns results and errors into the JSON the caller expects
for the cniVersion it asked for.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")

# Error codes of the spec, and routed's own (100 and above).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
POOL_EXHAUSTED = 100
NO_MATCHING_POOL = 101
INTERFACE_EXISTS = 102
CHECK_FAILED = 103
ADDRESS_IN_USE = 104
INTERNAL = 199

# Linux interface names are at most 15 bytes; the CNI spec lets container IDs be
# anything printable, we keep them to what fits in a key and a file name.
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}$")
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class CNIError(Exception):
    """An error answered to the caller as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, version: str) -> str:
        body = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return json.dumps(body)


@dataclass
class NetConf:
    cni_version: str
    name: str
    type: str
    mtu: int = 0  # 0: derived by the agent
    ipv4_pools: list[str] = field(default_factory=list)
    ipv6_pools: list[str] = field(default_factory=list)
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    prev_result: dict | None = None
    runtime_config: dict = field(default_factory=dict)
    valid_attachments: list[dict] | None = None  # GC
    raw: dict = field(default_factory=dict)


@dataclass
class Request:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: str
    conf: NetConf

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")


def parse_args(text: str) -> dict[str, str]:
    """CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p'."""
    out = {}
    for part in filter(None, (text or "").split(";")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _lower_keys(value):
    """runtimeConfig keys are matched case-insensitively: containerd capitalises them."""
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


def parse_conf(stdin: str | bytes, command: str) -> NetConf:
    try:
        doc = json.loads(stdin or b"")
    except (ValueError, UnicodeDecodeError) as err:
        raise CNIError(DECODE_FAILURE, f"network configuration on stdin is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise CNIError(DECODE_FAILURE, "network configuration on stdin must be a JSON object")
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CNIError(INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    if command in ("STATUS", "GC") and _vkey(version) < _vkey("1.1.0"):
        raise CNIError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0 or later, got {version}")
    name = doc.get("name")
    if not isinstance(name, str) or not _NETWORK_NAME.match(name):
        raise CNIError(INVALID_CONFIG, f"network configuration: invalid name {name!r}")
    ipam = doc.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "network configuration: ipam must be an object")
    conf = NetConf(cni_version=version, name=name, type=str(doc.get("type", "")), raw=doc)
    mtu = doc.get("mtu", 0)  # 0 or absent: the agent derives it from the uplink (dataplane/mtu.py)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not (mtu == 0 or 576 <= mtu <= 65535):
        raise CNIError(INVALID_CONFIG, f"network configuration: mtu must be 0 (derive) or an integer 576-65535, "
                                       f"got {mtu!r}")
    conf.mtu = mtu
    for key in ("ipv4_pools", "ipv6_pools"):
        pools = ipam.get(key, [])
        if not isinstance(pools, list) or not all(isinstance(p, str) and p for p in pools):
            raise CNIError(INVALID_CONFIG, f"network configuration: ipam.{key} must be a list of pool names")
        setattr(conf, key, pools)
    conf.assign_ipv4 = _flag(ipam, "assign_ipv4", True)
    conf.assign_ipv6 = _flag(ipam, "assign_ipv6", False)
    if not (conf.assign_ipv4 or conf.assign_ipv6):
        raise CNIError(INVALID_CONFIG, "network configuration: ipam assigns neither IPv4 nor IPv6")
    prev = doc.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CNIError(INVALID_CONFIG, "prevResult must be an object")
    conf.prev_result = prev
    runtime = doc.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise CNIError(INVALID_CONFIG, "runtimeConfig must be an object")
    conf.runtime_config = _lower_keys(runtime)
    if command == "GC":
        attachments = doc.get("cni.dev/valid-attachments", doc.get("cni.dev/attachments"))
        if not isinstance(attachments, list) or not all(
                isinstance(a, dict) and isinstance(a.get("containerID"), str) and isinstance(a.get("ifname"), str)
                for a in attachments):
            raise CNIError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments: a list of {containerID, ifname}")
        conf.valid_attachments = attachments
    return conf


def _flag(ipam: dict, key: str, default: bool) -> bool:
    value = ipam.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise CNIError(INVALID_CONFIG, f"network configuration: ipam.{key} must be true or false")
    return value


def parse_request(env: dict[str, str], stdin: str | bytes) -> Request:
    """Validate everything a caller sent. Raises CNIError with the spec's code."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    if command == "VERSION":
        return Request(command, "", "", "", {}, "", NetConf("1.1.0", "version", ""))
    conf = parse_conf(stdin, command)
    if command in ("STATUS", "GC"):
        return Request(command, "", "", "", {}, env.get("CNI_PATH", ""), conf)
    container_id = env.get("CNI_CONTAINERID", "")
    if not _CONTAINER_ID.match(container_id):
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {container_id!r} is missing or invalid")
    ifname = env.get("CNI_IFNAME", "")
    if not _IFNAME.match(ifname):
        raise CNIError(INVALID_ENVIRONMENT,
                       f"CNI_IFNAME {ifname!r} is missing or not a valid interface name (at most 15 characters)")
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_NETNS is required for {command}")
    if command == "CHECK" and conf.prev_result is None:
        raise CNIError(INVALID_CONFIG, "CHECK needs prevResult in the network configuration")
    return Request(command, container_id, netns, ifname, parse_args(env.get("CNI_ARGS", "")),
                   env.get("CNI_PATH", ""), conf)


def version_result(version: str = "1.1.0") -> str:
    return json.dumps({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})


def add_result(version: str, host_if: dict, pod_if: dict, ips: list, mtu: int | None = None) -> dict:
    """The ADD result, shaped for the version the caller asked for.

    host_if/pod_if: {"name", "mac", ["sandbox"]}; ips: ip_address objects.
    """
    interfaces = [{"name": host_if["name"], "mac": host_if["mac"]},
                  {"name": pod_if["name"], "mac": pod_if["mac"], "sandbox": pod_if["sandbox"]}]
    if mtu and _vkey(version) >= _vkey("1.1.0"):
        for i in interfaces:
            i["mtu"] = mtu
    entries, routes = [], []
    for ip in ips:
        ip = ipaddress.ip_address(ip)
        entry = {"address": f"{ip}/{ip.max_prefixlen}", "interface": 1}
        if _vkey(version) < _vkey("1.0.0"):
            entry["version"] = str(ip.version)  # dropped in 1.0.0
        entries.append(entry)
        default = "0.0.0.0/0" if ip.version == 4 else "::/0"
        if {"dst": default} not in routes:
            routes.append({"dst": default})
    return {"cniVersion": version, "interfaces": interfaces, "ips": entries, "routes": routes, "dns": {}}


def result_ips(result: dict) -> list:
    """The addresses of a (prev)Result, whatever its version."""
    out = []
    for entry in (result or {}).get("ips", []):
        try:
            out.append(ipaddress.ip_interface(entry["address"]).ip)
        except (KeyError, TypeError, ValueError):
            raise CNIError(INVALID_CONFIG, f"prevResult has an invalid ips entry: {entry!r}") from None
    return out


def _vkey(version: str) -> tuple:
    return tuple(int(p) for p in version.split("."))
