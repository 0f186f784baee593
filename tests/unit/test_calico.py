"""routed.resources.calico: projectcalico.org/v3 documents, written the way Calico's reference
documentation writes them, become routed.io/v1 documents; a Calico field routed lacks is
refused by name, in one line, never dropped."""

from __future__ import annotations

import pytest
import yaml

from routed.errors import InvalidResource
from routed.resources import BGPConfiguration, BGPPeer, IPAMConfig, IPPool, load_documents, parse
from routed.resources.calico import is_calico, to_routed


def calico(text: str) -> dict:
    (doc,) = load_documents(text)
    assert is_calico(doc)
    return doc


def converted(text: str):
    return parse(to_routed(calico(text)))


def refused(text: str) -> str:
    with pytest.raises(InvalidResource) as err:
        parse(to_routed(calico(text)))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_ippool_sample_from_calicos_reference():
    pool = converted("""
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: my.ippool-1
spec:
  cidr: 10.1.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: true
  disabled: false
  nodeSelector: all()
  allowedUses:
    - Workload
    - Tunnel
  assignmentMode: Automatic
""")
    assert isinstance(pool, IPPool)
    assert pool.to_dict() == {
        "apiVersion": "routed.io/v1", "kind": "IPPool",
        "metadata": {"name": "my.ippool-1", "labels": {}, "annotations": {}},
        "spec": {"cidr": "10.1.0.0/16", "blockSize": 26, "ipipMode": "CrossSubnet", "vxlanMode": "Never",
                 "natOutgoing": True, "disabled": False, "nodeSelector": "all()"}}


def test_ippool_ipv6_vxlan_with_block_size_and_a_selector():
    pool = converted("""
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: ipv6-pool
  labels: {team: net}
spec:
  cidr: fd00:10:244::/48
  blockSize: 120
  vxlanMode: Always
  nodeSelector: "rack == 'r1' && !has(no-pods)"
""")
    assert pool.spec.cidr == "fd00:10:244::/48" and pool.spec.block_size == 120
    assert pool.spec.vxlan_mode == "Always" and pool.spec.node_selector == "rack == 'r1' && !has(no-pods)"
    assert pool.metadata.labels == {"team": "net"}


@pytest.mark.parametrize("field,value,named", [
    ("disableBGPExport", "true", "not supported by routed"),
    ("assignmentMode", "Manual", '"Manual" is not supported'),
    ("allowedUses", "[LoadBalancer]", "always serve Workload"),
    ("allowedUses", "[Workload, LoadBalancer]", "LoadBalancer is not supported"),
    ("ipip", "{enabled: true, mode: always}", "use ipipMode"),
    ("nat-outgoing", "true", "use natOutgoing"),
    ("someFutureField", "1", "unknown Calico field"),
])
def test_ippool_fields_routed_lacks_are_refused_by_name(field, value, named):
    message = refused(f"""
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: p}}
spec:
  cidr: 10.1.0.0/16
  {field}: {value}
""")
    assert message.startswith('IPPool "p" (projectcalico.org/v3): spec.' + field + ":"), message
    assert named in message


def test_ippool_defaults_routed_shares_are_accepted():
    pool = converted("""
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.1.0.0/16, disableBGPExport: false, allowedUses: [Workload]}
""")
    assert pool.spec.cidr == "10.1.0.0/16"


def test_routed_validation_still_applies_after_conversion():
    message = refused("""
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.1.0.0/16, ipipMode: Always, vxlanMode: Always}
""")
    assert "choose one encapsulation" in message


def test_bgppeer_global_and_per_node_samples():
    tor = converted("""
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: some.name
spec:
  node: rack1-host1
  peerIP: 192.168.1.1
  asNumber: 63400
""")
    assert isinstance(tor, BGPPeer)
    assert (tor.spec.node, tor.spec.peer_ip, tor.spec.as_number) == ("rack1-host1", "192.168.1.1", 63400)
    rack = converted("""
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  peerIP: "[2001:db8::1]:1179"
  asNumber: "1.10"
  nodeSelector: rack == 'rack-1'
  password:
    secretKeyRef:
      name: bgp-secrets
      key: rr-password
  sourceAddress: None
  keepaliveTime: 20s
  maxRestartTime: 2m
  restartMode: GracefulRestart
  keepOriginalNextHop: false
  failureDetectionMode: None
  filters: []
""")
    s = rack.spec
    assert s.node is None and s.node_selector == "rack == 'rack-1'"
    assert s.address.compressed == "2001:db8::1" and s.port == 1179
    assert s.as_number == 65546   # asdot "1.10", quoted: unquoted YAML reads it as the float 1.1
    assert s.password.secret_key_ref.name == "bgp-secrets" and s.password.secret_key_ref.key == "rr-password"
    assert (s.source_address, s.keepalive_time, s.max_restart_time, s.graceful_restart) == ("None", 20, 120, True)


@pytest.mark.parametrize("field,value,named", [
    ("keepOriginalNextHop", "true", "next hop is always the node"),
    ("nextHopMode", "Self", "next hop is always the node"),
    ("localASNumber", "64999", "one local AS per node"),
    ("failureDetectionMode", "BFDIfDirectlyConnected", "no BFD"),
    ("restartMode", "LongLivedGracefulRestart", 'only "GracefulRestart"'),
    ("birdGatewayMode", "DirectIfDirectlyConnected", "no BIRD"),
    ("numAllowedLocalASNumbers", "1", "own AS"),
    ("ttlSecurity", "1", "no GTSM"),
    ("filters", "[export-only-pools]", "no BGP filters"),
])
def test_bgppeer_fields_routed_lacks_are_refused_by_name(field, value, named):
    message = refused(f"""
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {{name: tor}}
spec:
  peerIP: 192.0.2.1
  asNumber: 64600
  {field}: {value}
""")
    assert message.startswith(f'BGPPeer "tor" (projectcalico.org/v3): spec.{field}:'), message
    assert named in message


def test_bgpconfiguration_sample_maps_what_routed_has_and_names_the_rest():
    sample = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: true
  nodeMeshMaxRestartTime: 120s
  asNumber: 63400
  serviceClusterIPs:
    - cidr: 10.96.0.0/12
  listenPort: 178
  bindMode: NodeIP
"""
    # Calico's own sample uses two things routed does not have; the first is named.
    assert "spec.nodeMeshMaxRestartTime: not supported by routed" in refused(sample)
    sample = sample.replace("  nodeMeshMaxRestartTime: 120s\n", "")
    assert 'spec.bindMode: "NodeIP" is not supported' in refused(sample)
    config = converted(sample.replace("  bindMode: NodeIP\n", ""))
    assert isinstance(config, BGPConfiguration)
    assert config.to_dict()["spec"] == {"asNumber": 63400, "nodeToNodeMeshEnabled": True, "listenPort": 178,
                                        "logSeverity": "Info", "maxPrefixes": 100000,
                                        "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}


def test_bgpconfiguration_service_advertisement_is_carried_over_and_validated():
    config = converted("""
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  serviceClusterIPs: [{cidr: 10.96.0.0/12}, {cidr: "fd00:10:96::/112"}]
  serviceExternalIPs: [{cidr: 198.51.100.0/24}]
  serviceLoadBalancerIPs: [{cidr: 203.0.113.0/24}, {cidr: "2001:db8:5::/64"}]
""")
    spec = config.to_dict()["spec"]
    assert spec["serviceClusterIPs"] == [{"cidr": "10.96.0.0/12"}, {"cidr": "fd00:10:96::/112"}]
    assert spec["serviceExternalIPs"] == [{"cidr": "198.51.100.0/24"}]
    assert spec["serviceLoadBalancerIPs"] == [{"cidr": "203.0.113.0/24"}, {"cidr": "2001:db8:5::/64"}]
    bad = refused("""
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {serviceLoadBalancerIPs: [{cidr: 203.0.113.7/24}]}
""")
    assert "spec.serviceLoadBalancerIPs[0].cidr: host bits set in 203.0.113.7/24" in bad
    assert "cluster-wide" in refused("""
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: node.a}
spec: {serviceExternalIPs: [{cidr: 198.51.100.0/24}]}
""")


def test_bgpconfiguration_per_node_and_empty_lists():
    config = converted("""
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: node.node-1}
spec: {logSeverityScreen: Debug, serviceClusterIPs: [], communities: []}
""")
    assert config.node_name == "node-1" and config.spec.log_severity == "Debug"


def test_peer_selector_and_communities_carry_over():
    rr = converted("""
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
""")
    assert (rr.spec.peer_selector, rr.spec.node_selector, rr.spec.peer_ip) == ("route-reflector == 'true'", "all()",
                                                                              None)
    config = converted("""
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  communities:
  - name: bgp-large-community
    value: 63400:300:100
  prefixAdvertisements:
  - cidr: 172.218.4.0/26
    communities: [bgp-large-community, 63400:120]
""")
    assert config.spec.community_values() == [("172.218.4.0/26", ("63400:300:100", "63400:120"))]


@pytest.mark.parametrize("kind", ["IPAMConfiguration", "IPAMConfig"])
def test_ipamconfiguration(kind):
    config = converted(f"""
apiVersion: projectcalico.org/v3
kind: {kind}
metadata:
  name: default
spec:
  strictAffinity: true
  maxBlocksPerHost: 4
  autoAllocateBlocks: true
""")
    assert isinstance(config, IPAMConfig)
    assert config.to_dict()["spec"] == {"strictAffinity": True, "maxBlocksPerHost": 4, "autoAllocateBlocks": True}
    assert "kubeVirtVMAddressPersistence" in refused(f"""
apiVersion: projectcalico.org/v3
kind: {kind}
metadata: {{name: default}}
spec: {{strictAffinity: true, kubeVirtVMAddressPersistence: Enabled}}
""")


def test_calicoctl_get_output_applies_without_its_datastore_identity():
    # `calicoctl get ippools -o yaml`: a List whose items carry the Calico datastore's identity.
    docs = load_documents("""
apiVersion: projectcalico.org/v3
kind: IPPoolList
items:
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata:
    creationTimestamp: "2024-05-01T10:00:00Z"
    name: default-ipv4-ippool
    resourceVersion: "1234"
    uid: 0f1e2d3c-aaaa-bbbb-cccc-000000000001
  spec:
    allowedUses: [Workload, Tunnel]
    blockSize: 26
    cidr: 192.168.0.0/16
    ipipMode: Always
    natOutgoing: true
    nodeSelector: all()
    vxlanMode: Never
metadata:
  resourceVersion: "1240"
""")
    (pool,) = [parse(to_routed(d)) for d in docs]
    assert pool.metadata.uid is None and pool.metadata.resource_version is None
    assert pool.spec.ipip_mode == "Always" and pool.spec.nat_outgoing is True


@pytest.mark.parametrize("doc,named", [
    ({"kind": "Tier", "metadata": {"name": "x"}, "spec": {}}, "Tier"),
    ({"kind": "IPPool", "metadata": {"name": "x", "finalizers": []}, "spec": {}}, "metadata.finalizers"),
    ({"kind": "IPPool", "metadata": {"name": "x"}, "spec": {"cidr": "10.0.0.0/8"}, "status": {}}, "status"),
    ({"kind": "IPPool", "metadata": {"name": "x"}, "spec": ["cidr"]}, "spec: must be a mapping"),
])
def test_shapes_routed_cannot_take(doc, named):
    with pytest.raises(InvalidResource) as err:
        to_routed({"apiVersion": "projectcalico.org/v3", **doc})
    assert named in str(err.value)


def test_routed_and_kubernetes_documents_are_not_calicos():
    assert not is_calico({"apiVersion": "routed.io/v1", "kind": "IPPool"})
    assert not is_calico({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool"})
    assert not is_calico(yaml.safe_load("[1, 2]"))
