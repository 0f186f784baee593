"""routedctl ipam show | check | release | configure, as the installed console script,
against a real etcd holding allocations made by the real allocator."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ipam.allocator import IPAM
from ipam.errors import PoolExhausted, TooManyBlocks
from routed import resources as r
from routed.datastore import keys
from routed.datastore.resources import ResourceStore

pytestmark = pytest.mark.etcd

ROUTEDCTL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "routedctl")
POOL = ipaddress.ip_network("10.9.0.0/27")


def routedctl(env: dict, *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROUTED_ETCD_")}
    return subprocess.run([ROUTEDCTL, *args], env={**base, **env}, capture_output=True, text=True, timeout=60)


def ok(env: dict, *args: str) -> str:
    proc = routedctl(env, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def as_json(env: dict, *args: str):
    return json.loads(ok(env, *args, "-o", "json"))


def fails(env: dict, *args: str) -> str:
    proc = routedctl(env, *args)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("routedctl: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def rows(text: str) -> list[list[str]]:
    """A table's lines split on the renderer's 3-space column gap (cells may hold spaces)."""
    return [[c.strip() for c in line.split("   ") if c.strip()] for line in text.splitlines()]


@pytest.fixture
def env(etcd):
    return etcd.env()


@pytest.fixture
def cluster(kv):
    """A /27 pool cut into two /28 blocks: node-1 takes 10 addresses, node-2 fills its
    own block (16) and must borrow 2 more from node-1's."""
    ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "small"},
                                      "spec": {"cidr": str(POOL), "blockSize": 28}}))
    ipam = IPAM(kv)
    one = [ipam.allocate(f"net.one{i}.eth0", "node-1", {"pod": f"one-{i}", "namespace": "default"})
           for i in range(10)]
    two = [ipam.allocate(f"net.two{i}.eth0", "node-2", {"pod": f"two-{i}", "namespace": "prod"})
           for i in range(18)]
    block = {node: ipaddress.ip_network(f"{allocs[0].ips[0]}/28", strict=False)
             for node, allocs in (("node-1", one), ("node-2", two))}
    lent = [a for a in two if a.borrowed]
    assert len(lent) == 2 and all(a.ips[0] in block["node-1"] for a in lent)  # the set-up did borrow
    return {"ipam": ipam, "one": one, "two": two, "block": block, "lent": lent}


# -- show -----------------------------------------------------------------------------------


def test_show_pools(env, cluster):
    table = rows(ok(env, "ipam", "show"))
    assert table == [["NAME", "CIDR", "TOTAL", "IN-USE", "FREE"],
                     ["small", "10.9.0.0/27", "32", "28 (87.5%)", "4 (12.5%)"]]
    (pool,) = as_json(env, "ipam", "show")["pools"]
    assert pool == {"name": "small", "cidr": "10.9.0.0/27", "blockSize": 28, "disabled": False, "total": 32,
                    "inUse": 28, "free": 4, "inUsePercent": 87.5, "freePercent": 12.5, "blocks": 2}
    wide = rows(ok(env, "ipam", "show", "-o", "wide"))
    assert wide[0][-3:] == ["BLOCKSIZE", "BLOCKS", "DISABLED"] and wide[1][-3:] == ["28", "2", "False"]
    # A release shows up at once.
    cluster["ipam"].release_handle("net.one0.eth0")
    assert as_json(env, "ipam", "show")["pools"][0]["inUse"] == 27


def test_show_blocks_names_each_blocks_node(env, cluster):
    block = cluster["block"]
    table = rows(ok(env, "ipam", "show", "--show-blocks"))
    assert table[0] == ["BLOCK", "POOL", "NODE", "IN-USE", "FREE"]
    assert sorted(table[1:]) == sorted([[str(block["node-1"]), "small", "node-1", "12 (75%)", "4 (25%)"],
                                        [str(block["node-2"]), "small", "node-2", "16 (100%)", "0 (0%)"]])
    data = as_json(env, "ipam", "show", "--show-blocks")["blocks"]
    assert {b["cidr"]: (b["node"], b["inUse"], b["free"]) for b in data} == {
        str(block["node-1"]): ("node-1", 12, 4), str(block["node-2"]): ("node-2", 16, 0)}


def test_show_borrowed(env, cluster):
    lent = {str(a.ips[0]): a.handle for a in cluster["lent"]}
    table = rows(ok(env, "ipam", "show", "--show-borrowed"))
    assert table[0] == ["IP", "BLOCK", "BLOCK-NODE", "BORROWING-NODE", "HANDLE"]
    assert {row[0]: row[1:] for row in table[1:]} == {
        ip: [str(cluster["block"]["node-1"]), "node-1", "node-2", handle] for ip, handle in lent.items()}
    data = as_json(env, "ipam", "show", "--show-borrowed")["borrowed"]
    assert {b["ip"] for b in data} == set(lent)
    assert all(b["namespace"] == "prod" and b["pod"].startswith("two-") for b in data)
    # Released, they are no longer borrowed.
    for a in cluster["lent"]:
        cluster["ipam"].release_handle(a.handle)
    assert "no borrowed addresses" in ok(env, "ipam", "show", "--show-borrowed")
    assert as_json(env, "ipam", "show", "--show-borrowed") == {"borrowed": []}


def test_show_ip_allocated_free_and_outside_every_pool(env, cluster):
    held = cluster["one"][3]
    ip = str(held.ips[0])
    got = as_json(env, "ipam", "show", "--ip", ip)
    assert got["allocated"] is True and got["handle"] == held.handle and got["pod"] == "one-3"
    assert got["namespace"] == "default" and got["node"] == "node-1" and got["pool"] == "small"
    assert got["block"] == str(cluster["block"]["node-1"]) and got["blockNode"] == "node-1"
    table = rows(ok(env, "ipam", "show", "--ip", ip))
    assert table[1] == [ip, "in use", "small", str(cluster["block"]["node-1"]), "node-1", held.handle,
                        "default/one-3", "node-1"]
    # A borrowed address: the block is node-1's, the holder node-2.
    lent = cluster["lent"][0]
    got = as_json(env, "ipam", "show", "--ip", str(lent.ips[0]))
    assert got["blockNode"] == "node-1" and got["node"] == "node-2" and got["handle"] == lent.handle

    cluster["ipam"].release_handle(held.handle)
    got = as_json(env, "ipam", "show", "--ip", ip)
    assert got["allocated"] is False and got["handle"] == "" and got["block"] == str(cluster["block"]["node-1"])
    assert rows(ok(env, "ipam", "show", "--ip", ip))[1][:2] == [ip, "free"]

    assert fails(env, "ipam", "show", "--ip", "10.10.0.1") == "routedctl: address 10.10.0.1 is not in any IP pool"
    assert fails(env, "ipam", "show", "--ip", "10.9.0.300") == "routedctl: '10.9.0.300' is not an IP address"


def test_show_with_no_pools_and_yaml_output(env, kv):
    assert ok(env, "ipam", "show").strip() == "no IP pools"
    assert ok(env, "ipam", "show", "--show-blocks").strip() == "no blocks claimed yet"
    ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "p"},
                                      "spec": {"cidr": "10.50.0.0/24"}}))
    IPAM(kv).allocate("net.x.eth0", "node-1")
    doc = yaml.safe_load(ok(env, "ipam", "show", "-o", "yaml"))
    assert doc["pools"][0]["name"] == "p" and doc["pools"][0]["inUse"] == 1 and doc["pools"][0]["total"] == 256


# -- check and repair -----------------------------------------------------------------------


def test_check_finds_a_lost_handle_and_release_from_report_fixes_it(env, cluster, kv, tmp_path):
    out = ok(env, "ipam", "check")
    assert "no problems found" in out and "28 address(es) in use" in out
    assert as_json(env, "ipam", "check")["problems"] == []

    lost = cluster["one"][5]
    assert kv.delete(keys.handle(lost.handle))  # broken on purpose: the address now has no handle
    report = tmp_path / "report.json"
    proc = routedctl(env, "ipam", "check", "--report", str(report))
    # Problems found: its own exit status (scripts and monitoring act on it), 1 stays "could not check".
    assert proc.returncode == 3, proc.stderr
    out = proc.stdout
    assert "1 problem(s) found, 1 fixable" in out and f"--from-report {report}" in out
    problem_lines = [line for line in out.splitlines() if line.startswith("address-without-handle")]
    assert len(problem_lines) == 1 and str(lost.ips[0]) in problem_lines[0] and lost.handle in problem_lines[0]
    saved = json.loads(report.read_text())
    assert [(p["type"], p["ip"], p["handle"]) for p in saved["problems"]] == [
        ("address-without-handle", str(lost.ips[0]), lost.handle)]

    out = ok(env, "ipam", "release", "--from-report", str(report))
    assert "fixed 1 of 1 problem(s), skipped 0" in out
    assert rows(out)[-1][:2] == ["fixed", "address-without-handle"]
    assert "no problems found" in ok(env, "ipam", "check")
    assert as_json(env, "ipam", "show", "--ip", str(lost.ips[0]))["allocated"] is False

    # The same report again: nothing left to do, and it says so.
    again = as_json(env, "ipam", "release", "--from-report", str(report))
    assert again["fixed"] == [] and again["skipped"][0]["reason"] == "no longer the case"


def test_release_from_a_bad_report(env, cluster, tmp_path):
    missing = tmp_path / "none.json"
    assert fails(env, "ipam", "release", "--from-report", str(missing)) == (
        f"routedctl: cannot read {missing}: No such file or directory")
    junk = tmp_path / "junk.json"
    junk.write_text("not json")
    assert str(junk) in fails(env, "ipam", "release", "--from-report", str(junk))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"hello": 1}))
    assert "is not an IPAM check report" in fails(env, "ipam", "release", "--from-report", str(wrong))
    assert as_json(env, "ipam", "show")["pools"][0]["inUse"] == 28


# -- release --ip ---------------------------------------------------------------------------


def test_release_ip(env, cluster, kv):
    a, b = cluster["one"][0], cluster["lent"][0]
    free = str(cluster["block"]["node-1"][15])  # node-1's block has 12 of 16 in use: the last is free
    out = ok(env, "ipam", "release", "--ip", str(a.ips[0]), "--ip", str(b.ips[0]), "--ip", free)
    assert f"released {a.ips[0]} (handle {a.handle}, pod default/one-0)" in out
    assert f"released {b.ips[0]} (handle {b.handle}, pod prod/" in out
    assert f"{free} is not allocated; nothing to release" in out
    for alloc in (a, b):
        assert as_json(env, "ipam", "show", "--ip", str(alloc.ips[0]))["allocated"] is False
        assert kv.get(keys.handle(alloc.handle)) is None  # the handle went with its only address
    assert "no problems found" in ok(env, "ipam", "check")
    assert as_json(env, "ipam", "show")["pools"][0]["inUse"] == 26

    data = as_json(env, "ipam", "release", "--ip", str(a.ips[0]))
    assert data == {"released": [], "notAllocated": [str(a.ips[0])]}


def test_release_ip_checks_every_address_before_freeing_any(env, cluster):
    keep = cluster["one"][1]
    line = fails(env, "ipam", "release", "--ip", str(keep.ips[0]), "--ip", "192.168.1.1")
    assert line == "routedctl: address 192.168.1.1 is not in any IP pool"
    assert "is not an IP address" in fails(env, "ipam", "release", "--ip", str(keep.ips[0]), "--ip", "nope")
    assert as_json(env, "ipam", "show", "--ip", str(keep.ips[0]))["allocated"] is True
    assert routedctl(env, "ipam", "release").returncode == 2  # argparse: --ip or --from-report is required


# -- configure ------------------------------------------------------------------------------


def test_configure_round_trip(env, kv):
    assert "not found" in fails(env, "get", "ipamconfig", "default")
    out = ok(env, "ipam", "configure", "--strictaffinity=true", "--max-blocks-per-host", "1")
    assert out.splitlines()[0] == "ipamconfig/default created"
    got = as_json(env, "get", "ipamconfig", "default")
    assert got["spec"] == {"strictAffinity": True, "maxBlocksPerHost": 1, "autoAllocateBlocks": True}
    uid = got["metadata"]["uid"]

    # Read-modify-write: a later call changes only what it names.
    assert ok(env, "ipam", "configure", "--autoallocateblocks=false").splitlines()[0] == "ipamconfig/default configured"
    got = as_json(env, "get", "ipamconfig", "default")
    assert got["spec"] == {"strictAffinity": True, "maxBlocksPerHost": 1, "autoAllocateBlocks": False}
    assert got["metadata"]["uid"] == uid

    for args, word in ((["--strictaffinity=maybe"], "--strictaffinity must be true or false"),
                       (["--max-blocks-per-host", "many"], "--max-blocks-per-host must be a whole number"),
                       (["--max-blocks-per-host=-1"], "--max-blocks-per-host must be a whole number"),
                       (["--autoallocateblocks", "1"], "--autoallocateblocks must be true or false"),
                       ([], "needs --strictaffinity")):
        assert word in fails(env, "ipam", "configure", *args)
    assert as_json(env, "get", "ipamconfig", "default")["spec"]["autoAllocateBlocks"] is False


def test_configure_is_what_the_allocator_obeys(env, kv):
    ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "p"},
                                      "spec": {"cidr": "10.60.0.0/24", "blockSize": 30}}))
    ok(env, "ipam", "configure", "--strictaffinity=true", "--max-blocks-per-host=1")
    ipam = IPAM(kv)
    for i in range(4):
        ipam.allocate(f"net.s{i}.eth0", "node-1")
    with pytest.raises(TooManyBlocks):  # one /30 per host, and no borrowing
        ipam.allocate("net.s4.eth0", "node-1")
    ok(env, "ipam", "configure", "--max-blocks-per-host=0", "--autoallocateblocks=false")
    with pytest.raises(PoolExhausted):  # no limit now, but no new blocks either
        IPAM(kv).allocate("net.s4.eth0", "node-1")
    ok(env, "ipam", "configure", "--autoallocateblocks=true")
    assert IPAM(kv).allocate("net.s4.eth0", "node-1").ips


def test_show_skips_a_corrupt_block_and_names_it(env, kv, cluster):
    kv.put(keys.block(ipaddress.ip_network("10.9.1.0/28")), b"\xffgarbage")
    (pool,) = as_json(env, "ipam", "show")["pools"]
    assert pool["inUse"] == 28 and pool["blocks"] == 2
    out = ok(env, "ipam", "show", "--show-blocks")
    assert sorted(r[0] for r in rows(out) if r and r[0].startswith("10.9.0.")) == ["10.9.0.0/28", "10.9.0.16/28"]
    notes = [line for line in out.splitlines() if "10.9.1.0-28" in line]
    assert len(notes) == 1 and "unreadable" in notes[0] and "ipam check" in notes[0], out
