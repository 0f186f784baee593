"""The WireGuard controller's view of IPAM: read whole once, then kept from a watch over
the blocks (a pass costs the changes since the last, not a listing of every block)."""

from __future__ import annotations

from ipam.allocator import IPAM
from routed import resources as r
from routed.agent.wireguard import WireGuard
from routed.datastore import keys
from routed.datastore.memory import MemoryKV
from routed.datastore.resources import ResourceStore


class CountingKV(MemoryKV):
    """The in-memory KV, counting listings of IPAM's blocks."""

    def __init__(self):
        super().__init__()
        self.block_listings = 0

    def list(self, prefix, **kwargs):
        if prefix.startswith(keys.BLOCKS):
            self.block_listings += 1
        return super().list(prefix, **kwargs)


def test_blocks_are_listed_once_and_followed_by_a_watch(tmp_path):
    kv = CountingKV()
    store = ResourceStore(kv)
    store.apply(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "pods"},
                         "spec": {"cidr": "10.10.0.0/16"}}))
    ipam = IPAM(kv)
    ipam.assign_ip("10.10.1.2", "h1", "node-a")
    controller = WireGuard(kv, store, None, "node-a", "192.0.2.1/24", str(tmp_path), lambda: 1440)
    try:
        assert controller.origins().prefixes_of("node-a") == {"10.10.1.0/26"}
        # Other nodes' pods come and go, a block is claimed and released: every pass sees it.
        ipam.assign_ip("10.10.2.2", "h2", "node-b")
        ipam.assign_ip("10.10.1.3", "h3", "node-c")  # borrowed from node-a's block
        origins = controller.origins()
        assert origins.prefixes_of("node-b") == {"10.10.2.0/26"}
        assert origins.prefixes_of("node-c") == {"10.10.1.3/32"}
        ipam.release_handle("h3")
        assert controller.origins().prefixes_of("node-c") == set()
        for _ in range(5):
            controller.origins()
        assert kv.block_listings == 1, kv.block_listings
    finally:
        controller.close()
