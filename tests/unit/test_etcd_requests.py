"""The etcd client counts what it sends by operation and key area (routed_etcd_requests_total), and
the errors it meets by gRPC status (routed_etcd_request_errors_total)."""

from __future__ import annotations

import pytest
from pyetcd.etcdrpc import rpc_pb2

from routed.datastore import keys
from routed.datastore.etcd import EtcdKV, _request_area, area
from routed.errors import DatastoreUnavailable
from tests.support.etcd import free_port


def test_a_key_is_counted_in_its_part_of_the_layout():
    assert area(keys.block("10.244.0.0/26").encode()) == "ipam/blocks"
    assert area(keys.affinity("n1").encode()) == "ipam/affinity"
    assert area(keys.resource("nodes", "n1").encode()) == "resources/nodes"
    assert area(keys.UNINSTALL_REQUESTED.encode()) == "uninstall"
    assert area(keys.ROOT.encode()) == "all" and area(keys.IPAM.encode()) == "ipam"
    assert area(b"\0") == "other" and area(keys.SCHEMA.encode()) == "other"


def test_a_transaction_is_counted_where_it_compares_or_writes():
    put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=keys.handle("h").encode()))
    compared = rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(key=keys.block("10.0.0.0/26").encode())], success=[put])
    assert _request_area(compared) == "ipam/blocks"
    assert _request_area(rpc_pb2.TxnRequest(success=[put])) == "ipam/handles"
    assert _request_area(rpc_pb2.TxnRequest()) == "other"
    assert _request_area(rpc_pb2.RangeRequest(key=keys.resource("ippools").encode())) == "resources/ippools"


def test_a_member_that_refuses_is_counted_as_an_error_by_its_grpc_status():
    """routed_etcd_request_errors_total{code}: a real gRPC channel to a port nobody listens on."""
    kv = EtcdKV([f"http://127.0.0.1:{free_port()}"], timeout=1.0)
    try:
        with pytest.raises(DatastoreUnavailable):
            kv.get(keys.SCHEMA)
        assert kv.requests[("range", "other")] == 1
        assert kv.errors["unavailable"] >= 1, kv.errors
    finally:
        kv.close()
