"""routedctl apply/convert with projectcalico.org/v3 manifests, against a real etcd."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.integration.test_cli import fails, ok, pools

pytestmark = pytest.mark.etcd

# The way Calico's reference pages and guides write them (IP pool, BGP peer, BGP configuration,
# IPAM configuration), in one file as an operator would keep them.
CALICO = """\
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
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 63400
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  peerIP: 192.20.30.40
  asNumber: 64567
  nodeSelector: rack == 'rack-1'
---
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata:
  name: default
spec:
  strictAffinity: true
  maxBlocksPerHost: 4
"""


@pytest.fixture
def env(etcd):
    return etcd.env()


def test_apply_a_calico_file_stores_routed_resources(env, tmp_path):
    f = tmp_path / "calico.yaml"
    f.write_text(CALICO)
    out = ok(env, "apply", "-f", str(f)).stdout.splitlines()
    assert out == ["ippool/my.ippool-1 created", "bgpconfiguration/default created", "bgppeer/rack1-tor created",
                   "ipamconfig/default created"]
    pool = pools(env)["my.ippool-1"]
    assert pool["apiVersion"] == "routed.io/v1"
    assert pool["spec"] == {"cidr": "10.1.0.0/16", "blockSize": 26, "ipipMode": "CrossSubnet", "vxlanMode": "Never",
                            "natOutgoing": True, "disabled": False, "nodeSelector": "all()"}
    peer = json.loads(ok(env, "get", "bgppeer", "rack1-tor", "-o", "json").stdout)
    assert (peer["spec"]["peerIP"], peer["spec"]["asNumber"], peer["spec"]["nodeSelector"]) == (
        "192.20.30.40", 64567, "rack == 'rack-1'")
    bgp = json.loads(ok(env, "get", "bgpconfig", "default", "-o", "json").stdout)["spec"]
    assert (bgp["asNumber"], bgp["nodeToNodeMeshEnabled"], bgp["logSeverity"]) == (63400, False, "Info")
    ipam = json.loads(ok(env, "get", "ipamconfig", "default", "-o", "json").stdout)["spec"]
    assert (ipam["strictAffinity"], ipam["maxBlocksPerHost"]) == (True, 4)
    # Applying the same Calico file again updates in place.
    assert "ippool/my.ippool-1 configured" in ok(env, "apply", "-f", str(f)).stdout


def test_a_refused_calico_field_is_named_and_nothing_is_written(env):
    bad = CALICO + """---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rr
spec:
  peerIP: 192.20.30.41
  asNumber: 63400
  localASNumber: 64999
"""
    line = fails(env, "apply", "-f", "-", input=bad)
    assert line.startswith("routedctl: -: document 5: ")
    assert 'BGPPeer "rr" (projectcalico.org/v3): spec.localASNumber: not supported by routed' in line
    assert pools(env) == {}
    assert json.loads(ok(env, "get", "bgppeers", "-o", "json").stdout)["items"] == []


def test_convert_prints_the_routed_form_and_it_applies(env, tmp_path):
    f = tmp_path / "calico.yaml"
    f.write_text(CALICO)
    # convert needs no datastore: an unreachable etcd must not matter.
    no_etcd = {"ROUTED_ETCD_ENDPOINTS": "http://127.0.0.1:1"}
    text = ok(no_etcd, "convert", "-f", str(f)).stdout
    listed = yaml.safe_load(text)  # YAML by default: the document is the point
    assert listed["kind"] == "List"
    assert [(i["apiVersion"], i["kind"], i["metadata"]["name"]) for i in listed["items"]] == [
        ("routed.io/v1", "IPPool", "my.ippool-1"), ("routed.io/v1", "BGPConfiguration", "default"),
        ("routed.io/v1", "BGPPeer", "rack1-tor"), ("routed.io/v1", "IPAMConfig", "default")]
    assert listed["items"][1]["spec"]["logSeverity"] == "Info"
    as_json = json.loads(ok(no_etcd, "convert", "-f", str(f), "-o", "json").stdout)
    assert as_json == listed
    # The converted text is routed's own: it applies as it is.
    ok(env, "apply", "-f", "-", input=text)
    assert pools(env)["my.ippool-1"]["spec"]["ipipMode"] == "CrossSubnet"


def test_convert_one_document_and_a_refusal(tmp_path):
    one = "\n".join(CALICO.split("---\n")[0:1])
    doc = yaml.safe_load(ok({}, "convert", "-f", "-", input=one).stdout)
    assert doc["kind"] == "IPPool" and doc["spec"]["natOutgoing"] is True
    line = fails({}, "convert", "-f", "-", input=one + "  disableBGPExport: true\n")
    assert line == ("routedctl: -: IPPool \"my.ippool-1\" (projectcalico.org/v3): spec.disableBGPExport: "
                    "true is not supported by routed (every pool's blocks are announced over BGP); only false is")
