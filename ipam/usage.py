"""What the IPAM state looks like to an operator: pool and block usage, borrowed
addresses, who holds an address. Read only, no printing: routedctl formats it.

Every view reads pools and blocks at ONE etcd revision, so the numbers add up even
while nodes allocate (a pool's in-use count is the sum of its blocks' at that revision).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from routed import resources as r
from routed.datastore import keys
from routed.datastore.kv import KV
from routed.datastore.resources import ResourceStore, Unreadable
from routed.errors import CorruptData, RoutedError

from .block import Block
from .handle import Handle
from .errors import AddressNotInPool
from .origins import borrowed as borrowed_in, node_of


@dataclass
class Snapshot:
    revision: int
    pools: list[r.IPPool]  # by name
    blocks: list[Block]  # by family, then address
    unreadable: Unreadable  # records left out (routedctl ipam check says more)

    def pool_of(self, net) -> r.IPPool | None:
        """The pool a block (or a single address as a /32, /128) lies in."""
        for pool in self.pools:
            if net.version == pool.network.version and net.subnet_of(pool.network):
                return pool
        return None


def snapshot(kv: KV) -> Snapshot:
    unreadable = Unreadable("ipam show")
    listing = kv.list(keys.resource(r.IPPool.plural))
    pools = [unreadable.parse(i, lambda i: ResourceStore._decode(r.IPPool, i)) for i in listing.items]
    items = kv.list(keys.BLOCKS, revision=listing.revision).items
    blocks = [unreadable.parse(i, lambda i: Block.from_json(i.value, key=i.key)) for i in items]
    return Snapshot(listing.revision, sorted((p for p in pools if p), key=lambda p: p.metadata.name),
                    sorted((b for b in blocks if b), key=lambda b: (b.cidr.version, b.cidr.network_address)),
                    unreadable)


def _secondary(kv: KV, attributes: dict) -> dict:
    """An address's attributes: from its handle record (layout 2), else from its block (layout 1).
    Read after the snapshot: a handle written with the block the snapshot holds is there."""
    item = kv.get(keys.handle(attributes["handle"]))
    record = None
    if item is not None:
        try:
            record = Handle.from_json(item.value, key=item.key)
        except CorruptData:
            pass  # `routedctl ipam check` reports it
    return {**attributes.get("secondary", {}), **(record.attrs if record else {})}


def percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


def pool_usage(kv: KV, snap: Snapshot | None = None) -> list[dict]:
    """Per pool: its addresses, how many are in use, how many blocks nodes claimed.

    An address in no block yet counts as free: a node claims a block when it needs one.
    """
    snap = snap or snapshot(kv)
    rows = []
    for pool in snap.pools:
        blocks = [b for b in snap.blocks if snap.pool_of(b.cidr) is pool]
        total = pool.network.num_addresses
        in_use = sum(b.in_use for b in blocks)
        rows.append({"name": pool.metadata.name, "cidr": pool.spec.cidr, "blockSize": pool.spec.block_size,
                     "disabled": pool.spec.disabled, "total": total, "inUse": in_use, "free": total - in_use,
                     "inUsePercent": percent(in_use, total), "freePercent": percent(total - in_use, total),
                     "blocks": len(blocks)})
    return rows


def block_usage(kv: KV, snap: Snapshot | None = None) -> list[dict]:
    """Per block: its pool ("" when no pool holds it any more), node, use."""
    snap = snap or snapshot(kv)
    rows = []
    for block in snap.blocks:
        pool = snap.pool_of(block.cidr)
        rows.append({"cidr": str(block.cidr), "pool": pool.metadata.name if pool else "", "node": node_of(block),
                     "size": block.size, "inUse": block.in_use, "free": block.free,
                     "inUsePercent": percent(block.in_use, block.size),
                     "freePercent": percent(block.free, block.size)})
    return rows


def borrowed(kv: KV, snap: Snapshot | None = None) -> list[dict]:
    """Addresses a node holds in a block that is not its own (ipam.origins.borrowed).

    The holding node announces them as /32s; they are why a node's routes are more
    than its blocks. blockNode is "" for a block whose node is gone.
    """
    snap = snap or snapshot(kv)
    rows = []
    for block in snap.blocks:
        for b in borrowed_in(block):
            secondary = _secondary(kv, b.attributes)
            rows.append({"ip": str(b.ip), "block": str(block.cidr), "blockNode": node_of(block), "node": b.node,
                         "handle": b.attributes["handle"], "pod": secondary.get("pod", ""),
                         "namespace": secondary.get("namespace", "")})
    return rows


def parse_address(text: str):
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise RoutedError(f"{text!r} is not an IP address") from None


def who_holds(kv: KV, ip: str) -> dict:
    """Which pool, block and handle (pod) an address belongs to."""
    addr = parse_address(ip) if isinstance(ip, str) else ip
    snap = snapshot(kv)
    pool = snap.pool_of(ipaddress.ip_network(addr))
    if pool is None:
        raise AddressNotInPool(f"address {addr} is not in any IP pool")
    # Blocks do not overlap (check reports it when they do), so the first that holds it.
    block = next((b for b in snap.blocks if b.cidr.version == addr.version and addr in b.cidr), None)
    attrs = block.attributes_for(addr) if block else None
    secondary = _secondary(kv, attrs) if attrs else {}
    return {"ip": str(addr), "pool": pool.metadata.name, "block": str(block.cidr) if block else "",
            "blockNode": node_of(block) if block else "", "allocated": attrs is not None,
            "handle": attrs["handle"] if attrs else "", "pod": secondary.get("pod", ""),
            "namespace": secondary.get("namespace", ""), "node": secondary.get("node", ""),
            "time": secondary.get("time", "")}


__all__ = ["Snapshot", "snapshot", "pool_usage", "block_usage", "borrowed", "who_holds", "node_of",
           "parse_address", "percent"]
