"""CNI request parsing and result shaping (pure)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cni import spec
from cni.spec import CNIError

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123",
       "CNI_PATH": "/opt/cni/bin"}


def conf(**extra):
    return json.dumps({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "routed", **extra})


def test_a_containerd_request_parses():
    req = spec.parse_request(ENV, conf(mtu=1450, ipam={"ipv4_pools": ["a"]},
                                       runtimeConfig={"PortMappings": [{"HostPort": 80}]}))
    assert (req.command, req.container_id, req.ifname) == ("ADD", "abc123", "eth0")
    assert (req.pod_namespace, req.pod_name) == ("default", "web-0")
    assert req.conf.mtu == 1450 and req.conf.ipv4_pools == ["a"]
    assert req.conf.runtime_config == {"portmappings": [{"hostport": 80}]}


def test_mtu_0_or_absent_leaves_it_to_the_agent():
    assert spec.parse_request(ENV, conf(mtu=0)).conf.mtu == 0
    assert spec.parse_request(ENV, conf()).conf.mtu == 0


@pytest.mark.parametrize("env_change, stdin, code, needle", [
    ({"CNI_COMMAND": "FROB"}, conf(), spec.INVALID_ENVIRONMENT, "CNI_COMMAND"),
    ({"CNI_COMMAND": ""}, conf(), spec.INVALID_ENVIRONMENT, "CNI_COMMAND"),
    ({"CNI_CONTAINERID": ""}, conf(), spec.INVALID_ENVIRONMENT, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "a/b"}, conf(), spec.INVALID_ENVIRONMENT, "CNI_CONTAINERID"),
    ({"CNI_IFNAME": ""}, conf(), spec.INVALID_ENVIRONMENT, "CNI_IFNAME"),
    ({"CNI_IFNAME": "a-very-long-ifname"}, conf(), spec.INVALID_ENVIRONMENT, "CNI_IFNAME"),
    ({"CNI_NETNS": ""}, conf(), spec.INVALID_ENVIRONMENT, "CNI_NETNS"),
    ({"CNI_ARGS": "novalue"}, conf(), spec.INVALID_ENVIRONMENT, "CNI_ARGS"),
    ({}, "{not json", spec.DECODE_FAILURE, "not JSON"),
    ({}, "[]", spec.DECODE_FAILURE, "object"),
    ({}, json.dumps({"name": "n"}), spec.INVALID_CONFIG, "cniVersion"),
    ({}, json.dumps({"cniVersion": "9.9.9", "name": "n"}), spec.INCOMPATIBLE_VERSION, "9.9.9"),
    ({}, conf(name="bad name"), spec.INVALID_CONFIG, "name"),
    ({}, conf(mtu="big"), spec.INVALID_CONFIG, "mtu"),
    ({}, conf(mtu=100), spec.INVALID_CONFIG, "mtu"),
    ({}, conf(mtu=-1), spec.INVALID_CONFIG, "mtu"),
    ({}, conf(ipam={"ipv4_pools": "a"}), spec.INVALID_CONFIG, "ipv4_pools"),
    ({}, conf(ipam={"assign_ipv4": False}), spec.INVALID_CONFIG, "neither"),
    ({}, conf(prevResult=[]), spec.INVALID_CONFIG, "prevResult"),
    ({"CNI_COMMAND": "CHECK"}, conf(), spec.INVALID_CONFIG, "prevResult"),
    ({"CNI_COMMAND": "STATUS"}, conf(), spec.INCOMPATIBLE_VERSION, "1.1.0"),
    ({"CNI_COMMAND": "GC"}, json.dumps({"cniVersion": "1.1.0", "name": "n"}), spec.INVALID_CONFIG, "valid-attachments"),
])
def test_bad_requests_get_the_right_code(env_change, stdin, code, needle):
    with pytest.raises(CNIError) as err:
        spec.parse_request({**ENV, **env_change}, stdin)
    assert err.value.code == code and needle in err.value.msg
    body = json.loads(err.value.to_json("1.0.0"))
    assert body["code"] == code and "\n" not in body["msg"]


def test_del_tolerates_an_empty_netns():
    req = spec.parse_request({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}, conf())
    assert req.netns == ""


@pytest.mark.parametrize("version", spec.SUPPORTED_VERSIONS)
def test_results_have_the_shape_of_their_version(version):
    ips = [ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("fd00::3")]
    result = spec.add_result(version, {"name": "cali1", "mac": "ee:ee:ee:ee:ee:ee"},
                             {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/n"}, ips, 1450)
    assert result["cniVersion"] == version
    assert [i["address"] for i in result["ips"]] == ["10.1.2.3/32", "fd00::3/128"]
    assert all(i["interface"] == 1 for i in result["ips"])
    assert result["interfaces"][1]["sandbox"] == "/n"
    assert {"dst": "0.0.0.0/0"} in result["routes"] and {"dst": "::/0"} in result["routes"]
    old = version.startswith("0.")
    assert all(("version" in i) == old for i in result["ips"])
    assert spec.result_ips(result) == ips


def test_gc_takes_valid_attachments():
    req = spec.parse_request({"CNI_COMMAND": "GC"}, json.dumps(
        {"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": [{"containerID": "c", "ifname": "eth0"}]}))
    assert req.conf.valid_attachments == [{"containerID": "c", "ifname": "eth0"}]


def test_version_needs_nothing():
    assert json.loads(spec.version_result())["supportedVersions"] == spec.SUPPORTED_VERSIONS

