"""Which workload records the agent collects: this node's, naming a host interface that is
gone (routed/agent/workloads.py); the sweep against the in-memory store."""

from __future__ import annotations

import json

from routed.agent.workloads import WorkloadCollector, stale
from routed.datastore import keys
from routed.datastore.kv import KeyValue
from routed.datastore.memory import MemoryKV


def record(node: str, pod: str, interface: str) -> bytes:
    return json.dumps({"namespace": "ns", "name": pod, "node": node, "interface": interface, "labels": {},
                       "addresses": ["10.0.0.1"], "container": "c", "ports": []}).encode()


def item(node: str, pod: str, interface: str = "", value: bytes | None = None) -> KeyValue:
    return KeyValue(keys.workload(node, "ns", pod), value if value is not None else record(node, pod, interface), 5)


def test_only_this_nodes_records_naming_a_missing_interface_are_stale():
    items = [item("n1", "gone", "cali-gone"), item("n1", "here", "cali-here"),
             item("n2", "other", "cali-other"),  # another node's, whatever its interface
             item("n1", "no-if", ""),  # no interface named: nothing to judge by
             item("n1", "garbage", value=b"{not json"), item("n1", "list", value=b"[1]")]
    assert [i.key for i in stale(items, "n1", {"cali-here", "lo"})] == [keys.workload("n1", "ns", "gone")]


def test_a_sweep_deletes_stale_records_but_not_one_rewritten_since_it_listed():
    kv = MemoryKV()
    for pod in ("gone", "here", "readded"):
        kv.put(keys.workload("n1", "ns", pod), record("n1", pod, f"cali-{pod}"))
    kv.put(keys.workload("n2", "ns", "theirs"), record("n2", "theirs", "cali-theirs"))

    def links_after_a_new_sandbox_wrote_its_record() -> set[str]:
        # Between the listing and the link read, "readded" got a new sandbox (same veth name
        # pattern, new record): its listed revision is old, so the sweep must keep it.
        kv.put(keys.workload("n1", "ns", "readded"), record("n1", "readded", "cali-readded2"))
        return {"cali-here"}

    collected = WorkloadCollector(kv, "n1", links_after_a_new_sandbox_wrote_its_record).sweep()
    assert collected == [keys.workload("n1", "ns", "gone")]
    assert {i.key for i in kv.list(keys.WORKLOADS).items} == {
        keys.workload("n1", "ns", "here"), keys.workload("n1", "ns", "readded"), keys.workload("n2", "ns", "theirs")}
