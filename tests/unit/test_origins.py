"""IPAM's answers for BGP (pure): which prefixes a node announces, who may originate a prefix."""

from __future__ import annotations

from ipam.block import Block
from ipam.origins import Origins, announced_by, borrowed
from routed.datastore import keys
from routed.datastore.kv import KeyValue, WatchEvent


def block(cidr, node=None, holders=()):
    """A block affine to node, with one address per holder (a node name, or None for a pod
    whose record names no node)."""
    b = Block.new(cidr, f"host:{node}" if node else None)
    for i, holder in enumerate(holders):
        b.assign(1, f"net.c{i}.eth0", {"node": holder} if holder else {})
    return b


A = block("10.244.0.0/26", "a", ["a", "a", "b"])  # .2 borrowed by b
B = block("10.244.0.64/26", "b", ["b"])
ORPHAN = block("10.244.0.128/26", None, ["c", None])  # its node is gone; c still holds .128


def test_a_node_announces_its_blocks_and_what_it_holds_elsewhere():
    assert announced_by([A, B, ORPHAN], "a") == {"10.244.0.0/26"}
    assert announced_by([A, B, ORPHAN], "b") == {"10.244.0.64/26", "10.244.0.2/32"}
    # An address in a block with no node left is still reachable: its holder announces it.
    assert announced_by([A, B, ORPHAN], "c") == {"10.244.0.128/32"}
    assert announced_by([A, B, ORPHAN], "nobody") == set()


def test_who_may_originate_a_prefix():
    origins = Origins([A, B, ORPHAN])
    assert origins.originator("10.244.0.0/26") == "a"
    assert origins.originator("10.244.0.2/32") == "b"
    assert origins.originator("10.244.0.0/32") is None  # a's own pod: a announces the block, not the /32
    assert origins.originator("10.244.0.0/27") is None  # inside a block, but no block
    assert origins.originator("10.244.0.128/26") is None  # nobody's block any more
    assert origins.originator("10.244.9.0/26") is None


def test_borrowed_addresses_are_those_of_other_nodes():
    assert [(str(b.ip), b.node) for b in borrowed(A)] == [("10.244.0.2", "b")]
    assert [(str(b.ip), b.node) for b in borrowed(ORPHAN)] == [("10.244.0.128", "c")]
    assert list(borrowed(B)) == []


def test_changes_one_block_at_a_time():
    origins = Origins([A, B])
    claimed = block("10.244.1.0/26", "a")
    origins.put(claimed)
    assert origins.prefixes_of("a") == {"10.244.0.0/26", "10.244.1.0/26"}
    # b releases what it borrowed from a; a lends .3 to c instead.
    changed = block("10.244.0.0/26", "a", ["a", "a", None, "c"])
    origins.put(changed)
    assert origins.prefixes_of("b") == {"10.244.0.64/26"}
    assert origins.prefixes_of("c") == {"10.244.0.3/32"}
    assert origins.originator("10.244.0.2/32") is None
    origins.delete("10.244.0.0/26")
    assert origins.prefixes_of("a") == {"10.244.1.0/26"} and origins.prefixes_of("c") == set()
    assert origins.originator("10.244.0.0/26") is None
    origins.delete("10.244.9.0/26")  # unknown: nothing happens
    assert len(origins) == 2


def test_a_block_that_loses_its_node():
    origins = Origins([A])
    orphaned = block("10.244.0.0/26", None, ["a", "a", "b"])
    origins.put(orphaned)
    # a's pods there are now like borrowed addresses: a announces them one by one.
    assert origins.prefixes_of("a") == {"10.244.0.0/32", "10.244.0.1/32"}
    assert origins.prefixes_of("b") == {"10.244.0.2/32"}


def test_a_one_address_block_lent_out_goes_to_the_pod_node():
    lent = block("10.244.2.7/32", "a", ["b"])
    origins = Origins([lent])
    assert origins.originator("10.244.2.7/32") == "b"
    assert origins.prefixes_of("b") == {"10.244.2.7/32"}


def put(b: Block) -> WatchEvent:
    return WatchEvent("put", 1, kv=KeyValue(keys.block(b.cidr), b.to_json().encode(), 1))


def test_datastore_changes_one_event_at_a_time():
    origins = Origins()
    assert origins.apply(put(A)) and origins.apply(put(B))
    assert origins.prefixes_of("b") == {"10.244.0.64/26", "10.244.0.2/32"}
    # Keys that are no block change nothing IPAM answers.
    assert not origins.apply(WatchEvent("put", 2, kv=KeyValue(keys.handle("net.c0.eth0"), b"{}", 2)))
    assert not origins.apply(WatchEvent("put", 2, kv=KeyValue(keys.resource("ippools", "p"), b"{}", 2)))
    assert origins.apply(WatchEvent("delete", 3, kv=KeyValue(keys.block(A.cidr), b"", 3)))
    assert origins.prefixes_of("b") == {"10.244.0.64/26"} and origins.originator("10.244.0.0/26") is None


def test_an_unreadable_block_counts_as_absent_and_spoils_nothing_else():
    origins = Origins([A, B])
    key = keys.block(A.cidr)
    assert origins.apply(WatchEvent("put", 2, kv=KeyValue(key, b'{"cidr": "10.244.0.0/26", "garbage', 2)))
    assert origins.originator("10.244.0.0/26") is None and list(origins.unreadable) == [key]
    assert origins.originator("10.244.0.64/26") == "b"
    assert origins.apply(put(A))  # repaired
    assert origins.originator("10.244.0.0/26") == "a" and origins.unreadable == {}


def test_a_watch_that_lost_its_place_starts_over_from_the_listing():
    origins = Origins([A, B])
    listing = [put(B).kv, put(ORPHAN).kv, KeyValue(keys.resource("ippools", "p"), b"{}", 5)]
    assert origins.apply(WatchEvent("resync", 5, items=listing))
    assert origins.originator("10.244.0.0/26") is None and origins.originator("10.244.0.64/26") == "b"
    assert origins.prefixes_of("c") == {"10.244.0.128/32"}


def test_a_pod_added_or_deleted_inside_its_nodes_block_changes_no_answer():
    """Issue 16: another node's pod ADD/DEL must not make agents re-judge every route."""
    origins = Origins([A, B])
    busier = block("10.244.0.64/26", "b", ["b", "b", "b"])
    assert not origins.apply(put(busier))  # two more pods of b in b's block
    assert not origins.apply(put(B))  # and gone again
    lent = block("10.244.0.64/26", "b", ["b", "a"])
    assert origins.apply(put(lent))  # a borrowed address: a new /32 to announce
    assert origins.originator("10.244.0.65/32") == "a"
    assert origins.apply(put(block("10.244.1.0/26", "c")))  # a new block
    assert not origins.apply(put(block("10.244.1.0/26", "c")))  # the same block written again
