"""The Helm chart: lint, render, validate against Kubernetes 1.32, and agree with routed.

Each value set is rendered once (chartutil caches by values). The manifests must pass
kubernetes-validate --strict; the hook job's resources must parse with routed's own
loader; the install-cni init container's arguments must drive the real
`routed install-cni` to a conflist the CNI plugin accepts; every container command must
parse with the real `routed` / `routedctl` argument parsers.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.chart import chartutil as cu

TOR_PEERS = [
    {"name": "tor-rack1", "peerIP": "192.0.2.1", "asNumber": 65010, "nodeSelector": "rack == 'rack1'"},
    {"name": "tor-rack2", "peerIP": "192.0.2.129:1179", "asNumber": 65011, "nodeSelector": "rack == 'rack2'",
     "holdTime": "90s", "keepaliveTime": 30, "gracefulRestart": False},
]
TOR_PEERS_WITH_PASSWORDS = [
    {**TOR_PEERS[0], "passwordSecret": {"name": "tor-bgp", "key": "rack1"}},
    {**TOR_PEERS[1], "passwordSecret": {"name": "tor-bgp", "key": "rack2"}},
    {"name": "edge", "peerIP": "198.51.100.1", "asNumber": 4200000001, "node": "edge-node",
     "passwordSecret": {"name": "edge-bgp", "key": "password"}, "maxPrefixes": 1000,
     "allowedPrefixes": ["0.0.0.0/0"]},
]
RR_ADDRESSES = ["192.0.2.250/24", "192.0.2.251/24"]
RR_ADDRESSES6 = ["fd00:10:0:1::250/64", "fd00:10:0:1::251/64"]

# The matrix: each set is rendered once and goes through lint, kubernetes-validate and
# routed's resource loader.
VALUE_SETS = {
    "defaults": {},
    "etcd-tls": {"etcd": {"endpoints": ["https://192.0.2.10:2379", "https://etcd-1.example.net:2379"],
                          "tls": {"enabled": True, "secretName": "routed-etcd-certs"}}},
    "route-reflectors": {"routeReflector": {"enabled": True, "addresses": RR_ADDRESSES,
                                            "clientRanges": ["192.0.2.0/24", "198.51.100.0/24"]}},
    "peers": {"bgp": {"peers": TOR_PEERS}},
    "communities-and-node-peers": {"bgp": {
        "nodeToNodeMesh": False, "communities": [{"name": "rack1", "value": "65010:100"}],
        "prefixAdvertisements": [{"cidr": "10.244.0.0/16", "communities": ["rack1", "65010:1:2"]}],
        "peers": [{"name": "peer-with-route-reflectors", "nodeSelector": "all()",
                   "peerSelector": "route-reflector == 'true'"}]}},
    "peers-with-passwords": {"bgp": {"asNumber": 65000, "nodeToNodeMesh": False,
                                     "peers": TOR_PEERS_WITH_PASSWORDS}},
    "route-reflectors-dual-stack": {"routeReflector": {"enabled": True, "addresses": RR_ADDRESSES,
                                                       "addresses6": RR_ADDRESSES6,
                                                       "clientRanges6": ["fd00:10:0:1::/64"],
                                                       "passwordSecret": {"name": "rr-bgp", "key": "password"}}},
    "route-reflectors-md5": {"routeReflector": {"enabled": True, "addresses": RR_ADDRESSES,
                                                "passwordSecret": {"name": "rr-bgp", "key": "password"},
                                                "pools": [{"cidr": "10.244.0.0/16", "blockSize": 26},
                                                          {"cidr": "10.250.0.0/24", "blockSize": 32}]}},
    "everything": {"etcd": {"endpoints": ["https://192.0.2.10:2379"], "tls": {"enabled": True}},
                   "routeReflector": {"enabled": True, "addresses": RR_ADDRESSES},
                   "bgp": {"peers": TOR_PEERS_WITH_PASSWORDS, "serviceClusterIPs": ["10.96.0.0/12", "fd00:96::/112"],
                           "serviceLoadBalancerIPs": ["203.0.113.0/24"]},
                   "ipPool": {"cidr": "172.20.0.0/14", "blockSize": 24, "natOutgoing": False},
                   "installCNI": {"chain": False, "pools": ["default-ipv4-ippool"]},
                   "mtu": 8950, "imagePullSecrets": [{"name": "regcred"}],
                   "agent": {"extraArgs": ["--log-level=debug"],
                             "extraEnv": [{"name": "ROUTED_NODE_IP", "value": "192.0.2.7/24"}]}},
    "no-controller-no-pool": {"controller": {"enabled": False}, "ipPool": {"create": False}},
    "metrics": {"metrics": {"enabled": True}},
    "metrics-servicemonitor": {"metrics": {"enabled": True, "agent": {"bindAddress": "0.0.0.0", "port": 19091},
                                           "serviceMonitor": {"enabled": True, "interval": "15s",
                                                              "labels": {"release": "kube-prometheus-stack"}},
                                           "dashboard": {"annotations": {"grafana_folder": "Networking"}}}},
    "metrics-podmonitor": {"metrics": {"enabled": True, "podMonitor": {"enabled": True, "scrapeTimeout": "5s"},
                                       "dashboard": {"enabled": False}}},
    "metrics-no-controller": {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}},
                              "controller": {"enabled": False}},
    "dual-stack": {"ipv6Pool": {"create": True, "cidr": "fd00:20:244::/48", "encapsulationMode": "Always"}},
    "wireguard": {"wireguard": "Required", "wireguardListenPort": 51821},
}
for _encap in ("VXLAN", "IPIP", "None"):
    for _mode in ("Always", "CrossSubnet"):
        VALUE_SETS[f"{_encap}-{_mode}"] = {"ipPool": {"encapsulation": _encap, "encapsulationMode": _mode}}

SETS = sorted(VALUE_SETS)


# --- lint, render, validate -----------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_helm_lint(name):
    report = cu.lint(VALUE_SETS[name])
    serious = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not report["errors"] and not serious, report


@pytest.mark.parametrize("name", SETS)
def test_rendered_manifests_validate_against_kubernetes_1_32(name):
    rendered = cu.render(VALUE_SETS[name])
    assert rendered.docs
    assert cu.validation_errors(rendered.docs) == []
    for doc in rendered.docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == cu.NAMESPACE, doc["metadata"]


def test_kubernetes_validate_cli_on_the_default_render(tmp_path):
    """The command an operator would run: kubernetes-validate -k 1.32.0 --strict FILE."""
    cu.require_kubernetes_validate()
    rendered = cu.render()
    manifest = tmp_path / "routed.yaml"
    manifest.write_text("\n---\n".join(text for name, text in sorted(rendered.files.items())
                                       if name.endswith(".yaml")))
    proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "-k", cu.KUBE_VERSION, "--strict",
                           str(manifest)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = {d["kind"] for d in rendered.docs}
    assert proc.stdout.count(" passed for resource ") == len(rendered.docs), proc.stdout
    assert "WARN" not in proc.stdout and "ERROR" not in proc.stdout, proc.stdout
    assert {"DaemonSet", "Deployment", "Job", "ConfigMap", "ServiceAccount", "ClusterRole"} <= kinds


def test_default_objects():
    rendered = cu.render()
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered.docs}
    assert names == {
        ("ConfigMap", "routed-config"), ("ConfigMap", "routed-resources"),
        ("DaemonSet", "routed"), ("Deployment", "routed-controller"), ("Job", "routed-config"),
        ("Job", "routed-uninstall"),
        ("ServiceAccount", "routed-agent"), ("ServiceAccount", "routed-controller"), ("ServiceAccount", "routed-cni"),
        ("ClusterRole", "routed-agent"), ("ClusterRole", "routed-controller"), ("ClusterRole", "routed-cni"),
        ("ClusterRoleBinding", "routed-agent"), ("ClusterRoleBinding", "routed-controller"),
        ("ClusterRoleBinding", "routed-cni"),
        ("Role", "routed-controller-leader-election"), ("RoleBinding", "routed-controller-leader-election"),
    }


# --- the schema refuses bad values ----------------------------------------------------

BAD_VALUES = {
    "encapsulation-enum": ({"ipPool": {"encapsulation": "Geneve"}}, "/ipPool/encapsulation"),
    "encapsulation-mode-enum": ({"ipPool": {"encapsulationMode": "Sometimes"}}, "/ipPool/encapsulationMode"),
    "cidr-garbage": ({"ipPool": {"cidr": "garbage"}}, "/ipPool/cidr"),
    "cidr-no-prefix": ({"ipPool": {"cidr": "10.244.0.0"}}, "/ipPool/cidr"),
    "cidr-bad-octet": ({"ipPool": {"cidr": "10.300.0.0/16"}}, "/ipPool/cidr"),
    "cidr-prefix-33": ({"ipPool": {"cidr": "10.244.0.0/33"}}, "/ipPool/cidr"),
    "block-size-19": ({"ipPool": {"blockSize": 19}}, "/ipPool/blockSize"),
    "as-zero": ({"bgp": {"asNumber": 0}}, "/bgp/asNumber"),
    "as-trans": ({"bgp": {"asNumber": 23456}}, "/bgp/asNumber"),
    "as-too-big": ({"bgp": {"asNumber": 4294967296}}, "/bgp/asNumber"),
    "as-string": ({"bgp": {"asNumber": "64512"}}, "/bgp/asNumber"),
    "mtu-big": ({"mtu": "big"}, "/mtu"),
    "mtu-too-small": ({"mtu": 100}, "/mtu"),
    "peer-as-zero": ({"bgp": {"peers": [{"name": "p", "peerIP": "192.0.2.1", "asNumber": 0}]}}, "/bgp/peers/0"),
    "peer-ip-garbage": ({"bgp": {"peers": [{"name": "p", "peerIP": "tor.example", "asNumber": 65001}]}},
                        "/bgp/peers/0/peerIP"),
    "peer-without-ip": ({"bgp": {"peers": [{"name": "p", "asNumber": 65001}]}}, "/bgp/peers/0"),
    "peer-bad-name": ({"bgp": {"peers": [{"name": "ToR_1", "peerIP": "192.0.2.1", "asNumber": 65001}]}},
                      "/bgp/peers/0/name"),
    "peer-node-and-selector": ({"bgp": {"peers": [{"name": "p", "peerIP": "192.0.2.1", "asNumber": 65001,
                                                   "node": "a", "nodeSelector": "all()"}]}}, "/bgp/peers/0"),
    "peer-inline-password": ({"bgp": {"peers": [{"name": "p", "peerIP": "192.0.2.1", "asNumber": 65001,
                                                 "password": "secret"}]}}, "/bgp/peers/0"),
    "peer-ip-and-selector": ({"bgp": {"peers": [{"name": "p", "peerIP": "192.0.2.1", "asNumber": 65001,
                                                 "peerSelector": "all()"}]}}, "/bgp/peers/0"),
    "community-value": ({"bgp": {"communities": [{"name": "a", "value": "no-export"}]}},
                        "/bgp/communities/0/value"),
    "advertisement-no-communities": ({"bgp": {"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": []}]}},
                                     "/bgp/prefixAdvertisements/0/communities"),
    "etcd-endpoint-garbage": ({"etcd": {"endpoints": ["etcd:2379"]}}, "/etcd/endpoints/0"),
    "etcd-no-endpoints": ({"etcd": {"endpoints": []}}, "/etcd/endpoints"),
    "etcd-tls-over-http": ({"etcd": {"tls": {"enabled": True}}}, "/etcd/endpoints/0"),
    "route-reflector-without-addresses": ({"routeReflector": {"enabled": True}}, "/routeReflector"),
    "route-reflector-bad-address": ({"routeReflector": {"enabled": True, "addresses": ["192.0.2.250"]}},
                                    "/routeReflector/addresses/0"),
    "route-reflector-ipv4-as-ipv6": ({"routeReflector": {"enabled": True, "addresses": ["192.0.2.250/24"],
                                                         "addresses6": ["192.0.2.9/24"]}},
                                     "/routeReflector/addresses6/0"),
    "pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "unknown-key": ({"ippool": {"cidr": "10.1.0.0/16"}}, "ippool"),
    "log-level": ({"agent": {"logLevel": "verbose"}}, "/agent/logLevel"),
    "metrics-port": ({"metrics": {"agent": {"port": 0}}}, "/metrics/agent/port"),
    "metrics-bind-name": ({"metrics": {"controller": {"bindAddress": "node-a"}}}, "/metrics/controller/bindAddress"),
    "metrics-interval": ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
                         "/metrics/serviceMonitor/interval"),
    "metrics-unknown": ({"metrics": {"servicemonitor": {"enabled": True}}}, "servicemonitor"),
    "wireguard-enum": ({"wireguard": "On"}, "/wireguard"),
    "wireguard-bool": ({"wireguard": True}, "/wireguard"),
    "wireguard-port": ({"wireguardListenPort": 0}, "/wireguardListenPort"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_refuses_bad_values(case):
    values, where = BAD_VALUES[case]
    message = cu.render_error(values)
    assert "schema" in message and where in message, message


@pytest.mark.parametrize("values, expected", [
    ({"ipPool": {"cidr": "10.244.0.0/27"}}, "smaller than one block"),
    ({"bgp": {"peers": [TOR_PEERS[0], TOR_PEERS[0]]}}, "used twice"),
    ({"metrics": {"serviceMonitor": {"enabled": True}}}, "need metrics.enabled"),
    ({"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
     "enable one"),
    ({"controller": {"healthPort": 9099}}, "agent.healthPort and controller.healthPort are both port 9099"),
    ({"metrics": {"enabled": True, "controller": {"port": 9091}}},
     "metrics.agent.port and metrics.controller.port are both port 9091"),
    ({"metrics": {"enabled": True, "agent": {"port": 179}}}, "bgp.listenPort and metrics.agent.port"),
    ({"routeReflector": {"enabled": True, "addresses": RR_ADDRESSES, "addresses6": RR_ADDRESSES6}},
     "routeReflector.addresses6 needs routeReflector.clientRanges6"),
    ({"routeReflector": {"enabled": True, "addresses": RR_ADDRESSES, "addresses6": RR_ADDRESSES6[:1],
                         "clientRanges6": ["fd00:10:0:1::/64"]}},
     "routeReflector.addresses6 has 1 addresses, routeReflector.addresses 2"),
])
def test_template_refuses_inconsistent_values(values, expected):
    assert expected in cu.render_error(values)


def test_a_disabled_controller_takes_no_port():
    assert cu.render({"controller": {"enabled": False, "healthPort": 9099}}).daemonset()


# --- the hook job's resources are what routedctl accepts --------------------------------


@pytest.mark.parametrize("name", SETS)
def test_resources_parse_with_routeds_loader(name):
    from routed import resources as r

    values = cu.merge(cu.chart().values, VALUE_SETS[name])
    parsed = [r.parse(doc) for doc in r.load_documents(cu.render(VALUE_SETS[name]).resources_yaml())]
    by_kind: dict[str, list] = {}
    for res in parsed:
        assert res.to_dict()["apiVersion"] == "routed.io/v1"
        by_kind.setdefault(res.kind, []).append(res)

    pools = [p for p in by_kind.get("IPPool", []) if p.network.version == 4]  # ipv6Pool: the dual-stack tests
    if values["ipPool"]["create"]:
        (pool,) = pools
        assert pool.name == values["ipPool"]["name"]
        assert pool.spec.cidr == values["ipPool"]["cidr"]
        assert pool.spec.block_size == values["ipPool"]["blockSize"]
        assert pool.spec.nat_outgoing == values["ipPool"]["natOutgoing"]
    else:
        assert pools == []

    (config,) = by_kind["BGPConfiguration"]
    assert config.name == "default"
    for field, attr in (("serviceClusterIPs", "service_cluster_ips"), ("serviceExternalIPs", "service_external_ips"),
                        ("serviceLoadBalancerIPs", "service_load_balancer_ips")):
        assert [c.cidr for c in getattr(config.spec, attr) or []] == values["bgp"][field]
    assert config.spec.as_number == values["bgp"]["asNumber"]
    mesh = values["bgp"]["nodeToNodeMesh"] and not values["routeReflector"]["enabled"]
    assert config.spec.node_to_node_mesh_enabled is mesh
    assert config.spec.max_prefixes == values["bgp"].get("maxPrefixes", 100000)
    # What the agents read (routed/agent/wireguard.py): the chart's switch and port.
    from routed.agent.wireguard import cluster_mode
    assert cluster_mode([config]) == (values["wireguard"], values["wireguardListenPort"])
    named = {c["name"]: c["value"] for c in values["bgp"]["communities"]}
    assert config.spec.community_values() == [(a["cidr"], tuple(named.get(c, c) for c in a["communities"]))
                                              for a in values["bgp"]["prefixAdvertisements"]]

    peers = {p.name: p for p in by_kind.get("BGPPeer", [])}
    rr = values["routeReflector"]
    # With MD5 on the reflector sessions, each reflector is a BGPPeer too (it carries the password).
    rr_peers = {f"routed-route-reflector-{i}{suffix}" for i in range(len(rr["addresses"]))
                for suffix in ["", "-v6"][:1 + bool(rr["addresses6"])]} \
        if rr["enabled"] and rr["passwordSecret"] else set()
    assert set(peers) == {p["name"] for p in values["bgp"]["peers"]} | rr_peers
    for want in values["bgp"]["peers"]:
        got = peers[want["name"]].spec
        assert (got.peer_ip, got.as_number, got.peer_selector) == \
            (want.get("peerIP"), want.get("asNumber"), want.get("peerSelector"))
        assert got.node_selector == want.get("nodeSelector") and got.node == want.get("node")
        secret = want.get("passwordSecret")
        ref = got.password.secret_key_ref if got.password else None
        assert (ref and (ref.name, ref.key)) == (secret and (secret["name"], secret["key"]))

    reflectors = by_kind.get("Node", [])
    if values["routeReflector"]["enabled"]:
        assert [n.spec.bgp.ipv4_address for n in reflectors] == values["routeReflector"]["addresses"]
        assert [n.spec.bgp.ipv6_address for n in reflectors] == \
            (values["routeReflector"]["addresses6"] or [None] * len(reflectors))
        assert {n.spec.bgp.route_reflector_cluster_id for n in reflectors} == {values["routeReflector"]["clusterID"]}
    else:
        assert reflectors == []


@pytest.mark.parametrize("encapsulation", ["VXLAN", "IPIP", "None"])
@pytest.mark.parametrize("mode", ["Always", "CrossSubnet"])
def test_encapsulation_maps_onto_pool_modes_and_mtu(encapsulation, mode):
    from routed import resources as r

    rendered = cu.render(VALUE_SETS[f"{encapsulation}-{mode}"])
    (pool,) = [r.parse(d) for d in r.load_documents(rendered.resources_yaml()) if d["kind"] == "IPPool"]
    assert pool.spec.vxlan_mode == (mode if encapsulation == "VXLAN" else "Never")
    assert pool.spec.ipip_mode == (mode if encapsulation == "IPIP" else "Never")
    # mtu 0: each node's agent derives the pods' MTU from its uplink and the pools (not the chart).
    assert rendered.config()["ROUTED_MTU"] == "0"
    install = cu.argv(rendered.container(rendered.daemonset(), "install-cni", init=True))
    assert install[install.index("--mtu") + 1] == "0"


def test_explicit_mtu_wins():
    rendered = cu.render(VALUE_SETS["everything"])
    assert rendered.config()["ROUTED_MTU"] == "8950"


@pytest.mark.etcd
def test_hook_job_command_applies_the_resources_to_etcd(etcd, tmp_path):
    """What the post-install/post-upgrade job runs, against a real etcd, twice (an upgrade
    re-applies the same resources)."""
    rendered = cu.render(VALUE_SETS["everything"])
    job = rendered.get("Job", "routed-config")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    command = cu.argv(job["spec"]["template"]["spec"]["containers"][0])
    assert command[:3] == ["routedctl", "apply", "-f"]
    resources = tmp_path / "resources.yaml"
    resources.write_text(rendered.resources_yaml())
    routedctl = str(cu.REPO / ".venv" / "bin" / "routedctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTED_ETCD_")}
    env["ROUTED_ETCD_ENDPOINTS"] = etcd.url
    for _ in range(2):
        proc = subprocess.run([routedctl, *command[1:3], str(resources)], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    from routed import resources as r
    from routed.datastore.resources import ResourceStore

    kv = etcd.client()
    try:
        store = ResourceStore(kv)
        got = {cls.kind_name: sorted(x.name for x in store.list(cls))
               for cls in (r.IPPool, r.BGPConfiguration, r.BGPPeer, r.Node)}
        pool = store.get(r.IPPool, "default-ipv4-ippool")
    finally:
        kv.close()
    assert got == {"IPPool": ["default-ipv4-ippool"], "BGPConfiguration": ["default"],
                   "BGPPeer": ["edge", "tor-rack1", "tor-rack2"],
                   "Node": ["routed-route-reflector-0", "routed-route-reflector-1"]}
    assert (pool.spec.cidr, pool.spec.block_size, pool.spec.vxlan_mode) == ("172.20.0.0/14", 24, "CrossSubnet")


# --- the DaemonSet agrees with routed's programs ---------------------------------------


def _routed_parser():
    from routed.main import build_parser

    return build_parser()


def _parse_routed(args: list[str]):
    assert args[0] == "routed", args
    return _routed_parser().parse_args(args[1:])


@pytest.mark.parametrize("name", ["defaults", "everything", "dual-stack"])
def test_install_cni_arguments_drive_the_real_installer(name, tmp_path):
    """Run `routed install-cni` with the init container's arguments, host paths moved under
    a temporary root, and check the conflist is one the plugin and the agent accept."""
    from cni.install import elf_kind, go_arch
    from cni.spec import parse_conf
    from routed.main import main

    rendered = cu.render(VALUE_SETS[name])
    ds = rendered.daemonset()
    init = rendered.container(ds, "install-cni", init=True)
    agent = rendered.container(ds, "agent")
    args = cu.argv(init)
    parsed = _parse_routed(args)
    assert parsed.command == "install-cni"

    # The init container writes through its hostPath mounts: /host/... -> the host dirs.
    values = cu.merge(cu.chart().values, VALUE_SETS[name])
    assert cu.host_path_of(ds, init, parsed.bin_dir) == values["installCNI"]["binDir"]
    assert cu.host_path_of(ds, init, parsed.conf_dir) == values["installCNI"]["confDir"]
    root = tmp_path / "host"
    moved = [str(root / a.lstrip("/")) if a in (parsed.bin_dir, parsed.conf_dir) else a for a in args]
    assert main(moved[1:]) == 0

    plugin = root / parsed.bin_dir.lstrip("/") / "routed"
    conflist_path = root / parsed.conf_dir.lstrip("/") / "10-routed.conflist"
    assert os.access(plugin, os.X_OK)
    assert elf_kind(plugin.read_bytes()) == (go_arch(os.uname().machine), True)  # static: runs on any node
    conflist = json.loads(conflist_path.read_text())
    routed_conf = conflist["plugins"][0]
    assert routed_conf["type"] == "routed"
    chained = [p["type"] for p in conflist["plugins"][1:]]
    assert chained == ([] if "--no-chain" in args else ["portmap", "bandwidth"])

    # The plugin talks to the socket the agent listens on, and spools DELs where the agent
    # replays them: the same host paths, mounted at the same place in the agent.
    agent_args = _parse_routed(cu.argv(agent))
    assert routed_conf["agent_socket"] == agent_args.cni_socket
    assert routed_conf["spool_dir"] == agent_args.spool_dir
    for path in (agent_args.cni_socket, agent_args.spool_dir):
        mount = next(m for m in cu.mounts(agent) if path.startswith(m + "/"))
        assert cu.host_path_of(ds, agent, mount) == mount
    assert routed_conf["mtu"] == int(rendered.config()["ROUTED_MTU"])
    assert routed_conf["ipam"]["ipv4_pools"] == values["installCNI"]["pools"]
    assert routed_conf["ipam"]["assign_ipv6"] is values["ipv6Pool"]["create"]  # dual stack

    # What libcni hands the plugin: its entry plus the list's cniVersion and name.
    netconf = json.dumps({"cniVersion": conflist["cniVersion"], "name": conflist["name"], **routed_conf})
    conf = parse_conf(netconf, "ADD")
    assert conf.mtu == routed_conf["mtu"] and conf.type == "routed"

    # The installed plugin itself: VERSION, then an ADD with no agent behind the socket
    # (moved into the temp dir) answers CNI error 11 naming that socket.
    out = subprocess.run([str(plugin)], input="", env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "1.0.0" in json.loads(out.stdout)["supportedVersions"]
    socket_path = str(tmp_path / "no-agent.sock")
    netconf_here = json.dumps({**json.loads(netconf), "agent_socket": socket_path})
    out = subprocess.run([str(plugin)], input=netconf_here, capture_output=True, text=True, timeout=30,
                         env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/proc/1/ns/net",
                              "CNI_IFNAME": "eth0", "CNI_PATH": str(plugin.parent)})
    answer = json.loads(out.stdout)
    assert out.returncode == 1 and answer["code"] == 11 and socket_path in answer["msg"], out.stdout


def test_daemonset_shape():
    rendered = cu.render()
    ds = rendered.daemonset()
    spec = cu.pod_spec(ds)
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert spec["serviceAccountName"] == "routed-agent"
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni"]
    assert [c["name"] for c in spec["containers"]] == ["agent", "bgp"]
    for container in spec["initContainers"] + spec["containers"]:
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_agent_container():
    rendered = cu.render()
    ds = rendered.daemonset()
    agent = rendered.container(ds, "agent")
    args = _parse_routed(cu.argv(agent))
    assert args.command == "agent"
    assert agent["securityContext"].get("privileged") is True
    env = cu.env_of(agent)
    assert env["ROUTED_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert agent["envFrom"] == [{"configMapRef": {"name": "routed-config"}}]
    assert rendered.config()["ROUTED_ETCD_ENDPOINTS"] == "http://127.0.0.1:2379"
    # probes on the agent's health port, on loopback where it listens
    port = args.health_port
    assert args.health_host == "127.0.0.1"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert agent[probe]["httpGet"] == {"host": "127.0.0.1", "path": path, "port": port}
    assert rendered.config()["ROUTED_HEALTH_PORT"] == str(port)  # routedctl node status finds it
    m = cu.mounts(agent)
    assert m["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert m["/lib/modules"]["readOnly"] is True
    for path in ("/var/run/routed", "/var/lib/routed", "/var/run/netns", "/lib/modules", "/run/xtables.lock"):
        assert cu.host_path_of(ds, agent, path) == path
    assert args.bgp_socket.startswith(args.bgp_dir + "/")  # the one directory shared with the speaker
    assert args.state_dir == "/var/lib/routed"


@pytest.mark.parametrize("mode", ["Enabled", "Required"])
def test_wireguard_gives_the_agent_the_tun_device_and_its_key_directory(mode):
    """wireguard-go needs /dev/net/tun (a CharDevice: a node without it fails at pod start,
    not later); the private key goes under the agent's state dir, a hostPath, so a restart
    keeps it; `privileged` gives the agent NET_ADMIN for the device and its routes."""
    assert "dev-net-tun" not in cu.volumes(cu.render().daemonset())  # off by default
    rendered = cu.render({"wireguard": mode})
    ds = rendered.daemonset()
    agent = rendered.container(ds, "agent")
    assert cu.volumes(ds)["dev-net-tun"]["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    assert cu.mounts(agent)["/dev/net/tun"]["name"] == "dev-net-tun"
    state_dir = _parse_routed(cu.argv(agent)).state_dir
    assert cu.host_path_of(ds, agent, state_dir) == "/var/lib/routed"
    assert agent["securityContext"].get("privileged") is True
    # Only the agent: the ExaBGP sidecar gets no device.
    assert "/dev/net/tun" not in cu.mounts(rendered.container(ds, "bgp"))


def test_bgp_sidecar_shares_the_agents_directory():
    rendered = cu.render()
    ds = rendered.daemonset()
    bgp = rendered.container(ds, "bgp")
    agent_args = _parse_routed(cu.argv(rendered.container(ds, "agent")))
    args = _parse_routed(cu.argv(bgp))
    assert args.command == "bgp-speaker"
    assert args.config_dir == agent_args.bgp_dir
    assert cu.mounts(bgp)[args.config_dir]["name"] == cu.mounts(rendered.container(ds, "agent"))[args.config_dir]["name"]
    caps = bgp["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and "NET_ADMIN" not in caps.get("add", [])
    assert not bgp["securityContext"].get("privileged")


def test_bgp_passwords_are_mounted_where_the_agent_reads_them():
    rendered = cu.render(VALUE_SETS["peers-with-passwords"])
    ds = rendered.daemonset()
    agent = rendered.container(ds, "agent")
    secrets_dir = _parse_routed(cu.argv(agent)).secrets_dir
    volume = cu.volumes(ds)[cu.mounts(agent)[secrets_dir]["name"]]
    paths = {(s["secret"]["name"], item["key"], item["path"])
             for s in volume["projected"]["sources"] for item in s["secret"]["items"]}
    # the agent reads <secrets-dir>/<secret name>/<key>; each (secret, key) once
    assert paths == {("tor-bgp", "rack1", "tor-bgp/rack1"), ("tor-bgp", "rack2", "tor-bgp/rack2"),
                     ("edge-bgp", "password", "edge-bgp/password")}
    # no password, no volume
    assert "/etc/routed/secrets" not in cu.mounts(cu.render(VALUE_SETS["peers"]).container(
        cu.render(VALUE_SETS["peers"]).daemonset(), "agent"))


def test_etcd_tls_reaches_every_etcd_client():
    from routed.datastore.config import EtcdConfig

    rendered = cu.render(VALUE_SETS["etcd-tls"])
    config = rendered.config()
    parsed = EtcdConfig.from_env(config)  # routed's own check: https + cert/key together
    assert parsed.endpoints == ["https://192.0.2.10:2379", "https://etcd-1.example.net:2379"]
    workloads = [(rendered.daemonset(), "agent"), (rendered.get("Deployment", "routed-controller"), "controller"),
                 (rendered.get("Job", "routed-config"), "apply"),
                 (rendered.get("Job", "routed-uninstall"), "uninstall")]
    for workload, name in workloads:
        container = rendered.container(workload, name)
        assert {"configMapRef": {"name": "routed-config"}} in container["envFrom"]
        tls_mount = cu.mounts(container)["/etc/routed/etcd-tls"]
        volume = cu.volumes(workload)[tls_mount["name"]]
        assert volume["secret"]["secretName"] == "routed-etcd-certs"
        files = {i["path"] for i in volume["secret"]["items"]}
        for key in ("ROUTED_ETCD_CA", "ROUTED_ETCD_CERT", "ROUTED_ETCD_KEY"):
            directory, file = config[key].rsplit("/", 1)
            assert directory == "/etc/routed/etcd-tls" and file in files
    # TLS off: no certificate settings and no secret volume anywhere
    plain = cu.render()
    assert not any(k in plain.config() for k in ("ROUTED_ETCD_CA", "ROUTED_ETCD_CERT", "ROUTED_ETCD_KEY"))
    assert "etcd-tls" not in json.dumps(plain.docs)


def test_controller_deployment():
    rendered = cu.render()
    deploy = rendered.get("Deployment", "routed-controller")
    assert deploy["spec"]["replicas"] == 2
    container = rendered.container(deploy, "controller")
    assert cu.argv(container) == ["routed", "controller", "--leader-election", "--health-port=9098"]
    assert {"configMapRef": {"name": "routed-config"}} in container["envFrom"]
    assert cu.pod_spec(deploy)["serviceAccountName"] == "routed-controller"
    assert cu.pod_spec(deploy)["securityContext"]["runAsNonRoot"] is True
    assert "Deployment" not in {d["kind"] for d in cu.render(VALUE_SETS["no-controller-no-pool"]).docs}


def test_controller_runs_on_the_host_network_one_replica_per_node():
    """Like Calico's Typha: the controller needs no pod address (helm install --wait holds
    the job that creates the pool until the controller is Ready), the node's resolver as
    the agents use, and two replicas never share a node (they would bind the same ports).
    Ready on its loopback health port, the one `routed controller` listens on."""
    rendered = cu.render({"controller": {"healthPort": 19098}})
    deploy = rendered.get("Deployment", "routed-controller")
    spec = cu.pod_spec(deploy)
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "Default"
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"] == {"matchLabels": deploy["spec"]["selector"]["matchLabels"]}
    assert term["labelSelector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    container = rendered.container(deploy, "controller")
    args = _parse_routed(cu.argv(container))
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["host"], probe["port"], probe["path"]) == (args.health_host, args.health_port, "/readyz")
    assert args.health_port == 19098
    # a rollout never needs a second node: the old pod goes before the new one comes
    assert deploy["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


@pytest.mark.parametrize("name", SETS)
def test_no_pod_of_the_release_needs_the_pool(name):
    """helm install --wait runs the post-install job that creates the pool only once every
    workload is Ready: a pod on the pod network would wait for that job forever."""
    for doc in cu.render(VALUE_SETS[name]).docs:
        if doc["kind"] in ("DaemonSet", "Deployment", "Job"):
            assert cu.pod_spec(doc).get("hostNetwork") is True, f"{doc['kind']} {doc['metadata']['name']}"


@pytest.mark.parametrize("name", SETS)
def test_ports_the_agent_and_the_controller_take_on_a_node_differ(name):
    rendered = cu.render(VALUE_SETS[name])
    values = cu.merge(cu.chart().values, VALUE_SETS[name])
    ports = [values["bgp"]["listenPort"]]
    for kind, workload, container in (("DaemonSet", "routed", "agent"),
                                      ("Deployment", "routed-controller", "controller")):
        found = [d for d in rendered.all(kind) if d["metadata"]["name"] == workload]
        for doc in found:
            c = rendered.container(doc, container)
            ports.append(_parse_routed(cu.argv(c)).health_port)
            ports += [p["containerPort"] for p in c.get("ports", [])]
    assert len(ports) == len(set(ports)), ports


def test_controller_command_exists_in_routed():
    """`routed controller --leader-election` is what the chart runs; it is being written."""
    parser = _routed_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public API
    assert "controller" in commands
    args = parser.parse_args(["controller", "--leader-election"])
    assert args.command == "controller"


def test_hook_job():
    rendered = cu.render()
    job = rendered.get("Job", "routed-config")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    spec = cu.pod_spec(job)
    # no pod address can exist before this job has created the pool
    assert spec["hostNetwork"] is True and spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    container = spec["containers"][0]
    command = cu.argv(container)
    from routed.cli.main import build_parser

    args = build_parser().parse_args(command[1:])
    assert args.command == "apply"
    mount = cu.mounts(container)["/config"]
    assert cu.volumes(job)[mount["name"]]["configMap"]["name"] == "routed-resources"
    assert command[-1] == "/config/resources.yaml"


def test_uninstall_hook_job():
    """helm uninstall runs `routedctl uninstall` before the DaemonSet goes (Helm waits
    only for hook Jobs), and the agents can reach the files install-cni wrote."""
    rendered = cu.render()
    job = rendered.get("Job", "routed-uninstall")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-delete"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    spec = cu.pod_spec(job)
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    container = rendered.container(job, "uninstall")
    from routed.cli.main import build_parser

    args = build_parser().parse_args(cu.argv(container)[1:])
    assert (args.command, args.timeout) == ("uninstall", 120.0)
    assert job["spec"]["activeDeadlineSeconds"] > args.timeout  # the job is not killed while waiting
    assert {"configMapRef": {"name": "routed-config"}} in container["envFrom"]
    ds = rendered.daemonset()
    agent = rendered.container(ds, "agent")
    agent_args = _parse_routed(cu.argv(agent))
    assert cu.host_path_of(ds, agent, agent_args.cni_conf_dir) == "/etc/cni/net.d"
    assert cu.host_path_of(ds, agent, agent_args.cni_bin_dir) == "/opt/cni/bin"
    assert "Job" not in {d["kind"] for d in cu.render({"uninstallJob": {"enabled": False}}).docs
                         if d["metadata"]["name"] == "routed-uninstall"}


@pytest.mark.etcd
def test_uninstall_hook_command_waits_for_every_node_and_clears_the_marker(etcd):
    """Against a real etcd: the hook's command asks, waits for the registered nodes'
    reports, names the one that never answered, exits 0 (a failed pre-delete hook would
    block the uninstall) and leaves no marker for the next install."""
    import threading

    from routed import resources as r
    from routed.agent import node as nodeinfo
    from routed.cli.main import main
    from routed.datastore import keys, uninstall
    from routed.datastore.resources import ResourceStore

    kv = etcd.client()
    try:
        store = ResourceStore(kv)
        for name, ip in (("n1", "192.0.2.1/24"), ("n2", "192.0.2.2/24")):
            nodeinfo.register(store, name, ip, {})

        def agent_n1():  # what an agent does on seeing the marker
            while not uninstall.requested(kv):
                time.sleep(0.05)
            uninstall.mark_done(kv, "n1")

        agent = threading.Thread(target=agent_n1, daemon=True)
        agent.start()
        out, err = io.StringIO(), io.StringIO()
        code = main(["--etcd-endpoints", etcd.url, "-o", "json", "uninstall", "--timeout", "3", "--poll", "0.1"],
                    stdout=out, stderr=err)
        agent.join(timeout=10)
        assert code == 0, err.getvalue()
        assert json.loads(out.getvalue()) == {"cleanedUp": ["n1"], "notReported": ["n2"]}
        assert "routed cleanup-node" in err.getvalue() and "n2" in err.getvalue()
        assert kv.keys(keys.UNINSTALL) == []
        assert len(store.list(r.Node)) == 2  # the registrations are the controller's to remove
    finally:
        kv.close()


def test_rbac_is_least_privilege():
    rendered = cu.render()
    rules = {d["metadata"]["name"]: d["rules"] for d in rendered.all("ClusterRole")}
    assert rules == {
        "routed-agent": [{"apiGroups": [""], "resources": ["nodes", "pods", "namespaces"],
                          "verbs": ["get", "list", "watch"]},
                         {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
                         {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                          "verbs": ["list", "watch"]}],
        "routed-controller": [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list", "watch"]}],
        "routed-cni": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }
    (role,) = rendered.all("Role")
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    text = json.dumps(rendered.docs)
    assert '"*"' not in text and '"secrets"' not in text
    bindings = {d["metadata"]["name"]: d for d in rendered.all("ClusterRoleBinding")}
    for name, binding in bindings.items():
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": cu.NAMESPACE}]


# --- the optional route reflectors -----------------------------------------------------


def test_route_reflectors_off_by_default():
    kinds = {(d["kind"], d["metadata"]["name"]) for d in cu.render().docs}
    assert not any("route-reflector" in name for _, name in kinds)


def test_route_reflectors_are_peers_of_every_node():
    """Nodes, as routed's own peering model sees them, peer with every reflector and
    drop the mesh."""
    from bgp.peers import desired_peers
    from routed import resources as r

    rendered = cu.render(VALUE_SETS["route-reflectors"])
    docs = [r.parse(d) for d in r.load_documents(rendered.resources_yaml())]
    configs = [d for d in docs if d.kind == "BGPConfiguration"]
    reflectors = [d for d in docs if d.kind == "Node"]
    nodes = [r.parse({"apiVersion": "routed.io/v1", "kind": "Node", "metadata": {"name": f"node-{i}"},
                      "spec": {"bgp": {"ipv4Address": f"192.0.2.{10 + i}/24"}}}) for i in range(3)]
    peers = desired_peers(nodes[0], nodes + reflectors, configs, [])
    assert [(p.address, p.kind, p.port) for p in peers] == [
        ("192.0.2.250", "route-reflector", 179), ("192.0.2.251", "route-reflector", 179)]

    deployments = [d for d in rendered.all("Deployment") if "route-reflector" in d["metadata"]["name"]]
    assert len(deployments) == len(RR_ADDRESSES)
    for i, deploy in enumerate(deployments):
        spec = cu.pod_spec(deploy)
        assert spec["hostNetwork"] is True and deploy["spec"]["strategy"] == {"type": "Recreate"}
        bird = rendered.container(deploy, "bird")
        assert cu.env_of(bird)["RR_ADDRESS"] == RR_ADDRESSES[i].split("/")[0]
        items = cu.volumes(deploy)["bird-config"]["configMap"]["items"]
        assert items == [{"key": f"bird-{i}.conf", "path": "bird.conf"}]
        assert "NET_ADMIN" in bird["securityContext"]["capabilities"]["add"]


def bird_parses(text: str, tmp_path, name: str) -> None:
    """BIRD's own parser (bird -p) takes the configuration; an included password file is
    given a stand-in."""
    bird = "/usr/sbin/bird"
    if not os.access(bird, os.X_OK):
        pytest.fail("missing test dependency: BIRD (Debian package bird2; run scripts/setup.sh)", pytrace=False)
    (tmp_path / "password.conf").write_text('password "stand-in";\n')
    path = tmp_path / name
    path.write_text(text.replace('include "/run/bird/password.conf";', f'include "{tmp_path}/password.conf";'))
    proc = subprocess.run([bird, "-p", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_route_reflector_bird_configs_parse(tmp_path):
    rendered = cu.render(VALUE_SETS["route-reflectors"])
    configs = rendered.get("ConfigMap", "routed-route-reflector")["data"]
    assert sorted(configs) == ["bird-0.conf", "bird-1.conf"]
    for i, (name, text) in enumerate(sorted(configs.items())):
        address = RR_ADDRESSES[i].split("/")[0]
        assert f"router id {address};" in text and f"local {address} port 179 as 64512;" in text
        assert "rr client;" in text and "neighbor range 198.51.100.0/24 as 64512;" in text
        # Only block-shaped routes of the chart's pool, next hop the sending node, are taken.
        client = text.split("template bgp routed_client")[1]
        assert "import filter routed_blocks;" in client and "import all" not in client
        assert "bgp_next_hop = from && net ~ [ 10.244.0.0/16{26,26}, 10.244.0.0/16{32,32} ]" in text
        assert "password" not in text
        bird_parses(text, tmp_path, name)


def test_dual_stack_route_reflectors_take_ipv6_blocks_on_ipv6_sessions(tmp_path):
    rendered = cu.render(VALUE_SETS["route-reflectors-dual-stack"])
    configs = rendered.get("ConfigMap", "routed-route-reflector")["data"]
    for i, (name, text) in enumerate(sorted(configs.items())):
        address, address6 = RR_ADDRESSES[i].split("/")[0], RR_ADDRESSES6[i].split("/")[0]
        assert f"router id {address};" in text and f"local {address6} port 179 as 64512;" in text
        assert "neighbor range fd00:10:0:1::/64 as 64512;" in text
        # The chart's ipv6Pool by default, as blocks or single borrowed addresses.
        assert "bgp_next_hop = from && net ~ [ fd00:10:244::/48{122,122}, fd00:10:244::/48{128,128} ]" in text
        client6 = text.split("template bgp routed_client6")[1]
        assert "import filter routed_blocks6;" in client6 and 'include "/run/bird/password.conf";' in client6
        bird_parses(text, tmp_path, name)
    for i, deploy in enumerate(sorted((d for d in rendered.all("Deployment") if "route-reflector" in d["metadata"]["name"]),
                                      key=lambda d: d["metadata"]["name"])):
        bird = rendered.container(deploy, "bird")
        env = {e["name"]: e.get("value") for e in bird["env"]}
        assert env["RR_ADDRESS6"] == RR_ADDRESSES6[i].split("/")[0]
        assert 'ip -6 addr replace "$RR_ADDRESS6/128" dev "$dev" nodad' in bird["args"][0]


def test_ipv4_only_route_reflectors_render_nothing_of_ipv6():
    rendered = cu.render(VALUE_SETS["route-reflectors"])
    for text in rendered.get("ConfigMap", "routed-route-reflector")["data"].values():
        assert "ipv6" not in text and "routed_client6" not in text
    for deploy in (d for d in rendered.all("Deployment") if "route-reflector" in d["metadata"]["name"]):
        assert {e["name"]: e.get("value") for e in rendered.container(deploy, "bird")["env"]}["RR_ADDRESS6"] == ""


def test_route_reflectors_are_not_open_to_the_world_by_default(tmp_path):
    """No clientRanges: each reflector takes sessions from its own address's subnet only."""
    assert cu.chart().values["routeReflector"]["clientRanges"] == []
    rendered = cu.render({"routeReflector": {"enabled": True, "addresses": ["192.0.2.250/24", "10.1.2.200/21"]}})
    configs = rendered.get("ConfigMap", "routed-route-reflector")["data"]
    ranges = {name: re.findall(r"neighbor range (\S+) as", text) for name, text in configs.items()}
    assert ranges == {"bird-0.conf": ["192.0.2.0/24"], "bird-1.conf": ["10.1.0.0/21"]}
    for name, text in configs.items():
        assert "0.0.0.0/0" not in text
        bird_parses(text, tmp_path, name)


def test_route_reflector_md5_from_a_secret(tmp_path):
    rendered = cu.render(VALUE_SETS["route-reflectors-md5"])
    configs = rendered.get("ConfigMap", "routed-route-reflector")["data"]
    for name, text in configs.items():
        assert 'include "/run/bird/password.conf";' in text
        assert "10.244.0.0/16{26,26}, 10.244.0.0/16{32,32}, 10.250.0.0/24{32,32} ]" in text
        bird_parses(text, tmp_path, name)
    for deploy in (d for d in rendered.all("Deployment") if "route-reflector" in d["metadata"]["name"]):
        bird = rendered.container(deploy, "bird")
        assert cu.mounts(bird)["/etc/bird-password"]["readOnly"] is True
        secret = cu.volumes(deploy)["bird-password"]["secret"]
        assert secret["secretName"] == "rr-bgp" and secret["items"] == [{"key": "password", "path": "password"}]
        assert "/run/bird/password.conf" in bird["args"][0] and "umask 077" in bird["args"][0]
    # The nodes use the same password: a BGPPeer per reflector, mounted where the agent reads it.
    from bgp.peers import desired_peers
    from routed import resources as r

    docs = [r.parse(d) for d in r.load_documents(rendered.resources_yaml())]
    peers = [d for d in docs if d.kind == "BGPPeer"]
    assert [(str(p.spec.address), p.spec.password.secret_key_ref.name) for p in peers] == \
        [("192.0.2.250", "rr-bgp"), ("192.0.2.251", "rr-bgp")]
    node = r.parse({"apiVersion": "routed.io/v1", "kind": "Node", "metadata": {"name": "node-0"},
                    "spec": {"bgp": {"ipv4Address": "192.0.2.10/24"}}})
    got = desired_peers(node, [node] + [d for d in docs if d.kind == "Node"],
                        [d for d in docs if d.kind == "BGPConfiguration"], peers)
    assert [(p.address, p.password_ref) for p in got] == [("192.0.2.250", ("rr-bgp", "password")),
                                                          ("192.0.2.251", ("rr-bgp", "password"))]
    ds = rendered.daemonset()
    volume = cu.volumes(ds)[cu.mounts(rendered.container(ds, "agent"))["/etc/routed/secrets"]["name"]]
    assert [(s["secret"]["name"], s["secret"]["items"]) for s in volume["projected"]["sources"]] == \
        [("rr-bgp", [{"key": "password", "path": "rr-bgp/password"}])]


def test_notes_say_what_to_check_next():
    notes = cu.render().notes
    for expected in ("routedctl node status", "routedctl ipam show", "rollout status daemonset/routed",
                     "WARNING: etcd.endpoints"):
        assert expected in notes, notes
    notes = cu.render(VALUE_SETS["everything"]).notes
    assert "WARNING" not in notes and "birdc" in notes


def test_values_file_and_schema_agree():
    """Every default value passes the schema, and the schema knows every key of values.yaml."""
    chart = cu.chart()
    chart.validate_schema(chart.values)
    schema = chart.schema
    assert schema is not None
    assert set(chart.values) <= set(schema["properties"])
    for key, value in chart.values.items():
        if isinstance(value, dict):
            assert set(value) <= set(schema["properties"][key]["properties"]), key


# --- metrics: listeners, Services, monitors, the dashboard -------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _metrics_workloads(rendered) -> dict[str, dict]:
    """component -> the workload whose pods serve /metrics."""
    found = {"agent": rendered.daemonset()}
    if rendered.all("Deployment"):
        found["controller"] = rendered.get("Deployment", "routed-controller")
    return found


def test_metrics_are_off_by_default():
    rendered = cu.render()
    assert not [d for d in rendered.docs if d["kind"] in ("Service", "ServiceMonitor", "PodMonitor")]
    assert not [d for d in rendered.all("ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    for component, workload in _metrics_workloads(rendered).items():
        container = rendered.container(workload, component)
        assert _parse_routed(cu.argv(container)).metrics_port == 0
        assert "ports" not in container and "ROUTED_METRICS_HOST" not in cu.env_of(container)


@pytest.mark.parametrize("name", ["metrics", "metrics-servicemonitor", "metrics-podmonitor"])
def test_each_metrics_service_reaches_a_listener_the_program_opens(name):
    """The Service's targetPort is the container's port named metrics, which is the port
    the program is told to listen on (parsed by routed's own argument parser)."""
    values = VALUE_SETS[name]["metrics"]
    rendered = cu.render(VALUE_SETS[name])
    for component, workload in _metrics_workloads(rendered).items():
        container = rendered.container(workload, component)
        args = _parse_routed(cu.argv(container))
        port = values.get(component, {}).get("port", {"agent": 9091, "controller": 9094}[component])
        assert args.metrics_port == port
        assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        bind = values.get(component, {}).get("bindAddress", "")
        assert cu.env_of(container)["ROUTED_METRICS_HOST"] == (bind or {"fieldRef": {"fieldPath": "status.podIP"}})
        assert args.health_host == "127.0.0.1" or component == "controller"  # health stays on the loopback
        service = rendered.get("Service", f"routed-{component}-metrics")
        assert service["spec"]["clusterIP"] == "None"  # one endpoint per pod (per node for the agent)
        assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics",
                                             "protocol": "TCP"}]
        selected = [w for w in rendered.docs if w["kind"] in ("DaemonSet", "Deployment")
                    and _selects({"matchLabels": service["spec"]["selector"]}, w["spec"]["template"]["metadata"]["labels"])]
        assert selected == [workload], [w["metadata"]["name"] for w in selected]


def test_the_service_monitor_selects_both_metrics_services_and_names_their_port():
    rendered = cu.render(VALUE_SETS["metrics-servicemonitor"])
    monitor = rendered.get("ServiceMonitor", "routed")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # what Prometheus selects by
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [cu.NAMESPACE]}
    selected = [s["metadata"]["name"] for s in rendered.all("Service")
                if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert sorted(selected) == ["routed-agent-metrics", "routed-controller-metrics"]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                             "scrapeTimeout": "10s"}]
    assert not rendered.all("PodMonitor")
    without = cu.render(VALUE_SETS["metrics-no-controller"])
    assert [s["metadata"]["name"] for s in without.all("Service")] == ["routed-agent-metrics"]


def test_the_pod_monitor_selects_the_agent_and_controller_pods_by_their_metrics_port():
    rendered = cu.render(VALUE_SETS["metrics-podmonitor"])
    monitor = rendered.get("PodMonitor", "routed")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [cu.NAMESPACE]}
    workloads = [w for w in rendered.docs if w["kind"] in ("DaemonSet", "Deployment", "Job")]
    selected = {w["metadata"]["name"]: w for w in workloads
                if _selects(monitor["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])}
    assert sorted(selected) == ["routed", "routed-controller"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["scrapeTimeout"] == "5s"
    for workload in selected.values():
        ports = [p["name"] for c in cu.pod_spec(workload)["containers"] for p in c.get("ports", [])]
        assert ports == [endpoint["port"]], workload["metadata"]["name"]
    assert not rendered.all("ServiceMonitor")
    assert not [d for d in rendered.all("ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]


def test_the_dashboard_ships_as_a_configmap_grafanas_sidecar_loads():
    rendered = cu.render(VALUE_SETS["metrics-servicemonitor"])
    configmap = rendered.get("ConfigMap", "routed-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Networking"}
    shipped = json.loads(configmap["data"]["routed.json"])
    assert shipped == json.loads((cu.CHART / "dashboards" / "routed.json").read_text())
    assert shipped["uid"] and shipped["panels"]  # which metrics it asks for: tests/bgp/test_metrics.py


def test_notes_say_where_metrics_are():
    notes = cu.render(VALUE_SETS["metrics-servicemonitor"]).notes
    for expected in ("routed-agent-metrics:19091", "routed-controller-metrics:9094", "ServiceMonitor routed",
                     "grafana_dashboard"):
        assert expected in notes, notes
    assert "metrics.enabled=true" in cu.render().notes


# --- dual stack (issue 15) ------------------------------------------------------------


def test_dual_stack_adds_the_ipv6_pool_and_lets_agents_register_ipv6():
    from routed import resources as r

    off, on = cu.render({}), cu.render(VALUE_SETS["dual-stack"])
    assert off.config()["ROUTED_NODE_IP6"] == "none" and on.config()["ROUTED_NODE_IP6"] == ""
    assert "--ipv6" not in cu.argv(off.container(off.daemonset(), "install-cni", init=True))
    assert "--ipv6" in cu.argv(on.container(on.daemonset(), "install-cni", init=True))
    pools = {p.name: p for p in map(r.parse, r.load_documents(on.resources_yaml())) if p.kind == "IPPool"}
    v6 = pools["default-ipv6-ippool"]
    assert (str(v6.network), v6.spec.block_size, v6.spec.vxlan_mode, v6.spec.ipip_mode) == \
        ("fd00:20:244::/48", 122, "Always", "Never")
    assert "default-ipv4-ippool" in pools
    assert "fd00:" not in off.resources_yaml()


@pytest.mark.parametrize("name, expected", [("defaults", "none"), ("dual-stack", "")])
def test_the_agent_reads_the_charts_ipv6_setting(name, expected, monkeypatch):
    """ROUTED_NODE_IP6 as the chart sets it reaches the agent's --node-ip6 ("": find it)."""
    import argparse

    from routed.agent.cli import register

    monkeypatch.setenv("ROUTED_NODE_IP6", cu.render(VALUE_SETS[name]).config()["ROUTED_NODE_IP6"])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["agent"]).node_ip6 == expected


@pytest.mark.parametrize("values, where", [
    ({"ipv6Pool": {"cidr": "10.244.0.0/16"}}, "/ipv6Pool/cidr"),
    ({"ipv6Pool": {"cidr": "fd00::/129"}}, "/ipv6Pool/cidr"),
    ({"ipv6Pool": {"encapsulation": "IPIP"}}, "/ipv6Pool/encapsulation"),
    ({"ipv6Pool": {"blockSize": 64}}, "/ipv6Pool/blockSize"),
])
def test_schema_refuses_bad_ipv6_pools(values, where):
    message = cu.render_error(values)
    assert "schema" in message and where in message, message


def test_template_refuses_an_ipv6_pool_smaller_than_a_block():
    message = cu.render_error({"ipv6Pool": {"create": True, "cidr": "fd00::/124"}})
    assert "ipv6Pool.cidr fd00::/124 is smaller than one block" in message, message
