"""Against a real etcd: a pool in use is not deleted, garbage in etcd stops nothing else,
and `routedctl ipam check` says what is wrong and exits non-zero."""

from __future__ import annotations

import ipaddress

import pytest

from ipam.allocator import IPAM
from routed import resources as r
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from tests.integration.test_cli_ipam import fails, ok, routedctl

pytestmark = pytest.mark.etcd


def _pool(name, cidr, block_size=26):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": name},
                    "spec": {"cidr": cidr, "blockSize": block_size}})


def test_routedctl_refuses_to_delete_a_pool_in_use_and_says_what_to_do(etcd, kv):
    env = etcd.env()
    ResourceStore(kv).create(_pool("p", "10.30.0.0/24"))
    ipam = IPAM(kv)
    ipam.allocate("net.a.eth0", "node-1")
    line = fails(env, "delete", "ippool", "p")
    assert 'IPPool "p" has 1 address(es) in use in 1 block(s)' in line and "disabled" in line, line
    assert "10.30.0.0/24" in ok(env, "get", "ippool", "p")
    # The Calico path: disable, drain, delete.
    ok(env, "patch", "ippool", "p", "-p", '{"spec": {"disabled": true}}')
    ipam.release_handle("net.a.eth0")
    assert "ippool/p deleted" in ok(env, "delete", "ippool", "p")
    assert kv.keys(keys.BLOCKS) == [] and kv.keys(keys.AFFINITIES) == []


def test_garbage_in_a_block_and_a_pool_stops_no_allocation(etcd, kv):
    ResourceStore(kv).create(_pool("good", "10.30.0.0/16"))
    held = IPAM(kv).allocate("net.a.eth0", "node-1").ips[0]
    bkey = keys.block(ipaddress.ip_network(f"{held}/26", strict=False))
    kv.put(bkey, b"{\"cidr\": 7}")
    kv.put(keys.resource("ippools", "broken"), b"\xff\xfe not json")
    ipam = IPAM(kv)
    got = [ipam.allocate(f"net.b{i}.eth0", "node-1").ips[0] for i in range(3)]
    assert held not in got and len(set(got)) == 3
    assert set(ipam.unreadable) == {bkey, keys.resource("ippools", "broken")}

    proc = routedctl(etcd.env(), "ipam", "check")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    corrupt = [line for line in proc.stdout.splitlines() if line.startswith("corrupt-value")]
    assert len(corrupt) == 2 and any(bkey in line for line in corrupt), proc.stdout
