"""What deleting an IP pool means for its blocks.

A pool whose blocks hold addresses is not deleted: its pods keep those addresses, and a
pool re-created over the same CIDR (perhaps with another block size) would hand them out
again. The path offered is Calico's: disable the pool (no new blocks, no new addresses
from it), move or delete its pods, then delete it. Empty blocks go with the pool, in the
same transaction, so nothing of the old shape is left behind.
"""

from __future__ import annotations

from routed import resources as r
from routed.datastore import Compare, Op, keys
from routed.datastore.kv import KV
from routed.errors import CorruptData, InvalidResource

from .block import Block

# Each empty block costs a compare and two deletes; etcd allows 128 operations per
# transaction. Beyond this, empty blocks are deleted ahead in batches (harmless: the
# reaper does the same to any empty block) and the pool's own transaction stays small.
_BATCH = 40


def retirement(kv: KV, pool: r.IPPool) -> tuple[list[Compare], list[Op]]:
    """The compares and ops to add to the transaction that deletes pool.

    Raises InvalidResource, naming what is in use, when any block of the pool holds an
    address or cannot be read. The blocks are listed after the pool was read, so for a
    disabled pool they are complete (a claim compares the pool's revision; after it was
    disabled none succeeds). For an enabled pool the compares also require that no block
    was created since the listing.
    """
    network = pool.network
    listing = kv.list(keys.BLOCKS)
    empty, in_use, busy, unreadable = [], 0, 0, []
    for item in listing.items:
        try:
            block = Block.from_json(item.value, key=item.key)
        except CorruptData:
            unreadable.append(keys.last_segment(item.key))
            continue
        if block.cidr.version != network.version or not block.cidr.overlaps(network):
            continue
        if block.is_empty:
            empty.append((item, block))
        else:
            in_use, busy = in_use + block.in_use, busy + 1
    name = pool.metadata.name
    if in_use:
        raise InvalidResource(
            f'IPPool "{name}" has {in_use} address(es) in use in {busy} block(s); set spec.disabled: true, '
            "move or delete its pods, then delete it (routedctl ipam show --show-blocks lists them)")
    if unreadable:
        raise InvalidResource(f'IPPool "{name}": cannot tell whether it is in use, block(s) '
                              f'{", ".join(unreadable[:5])} are unreadable (see routedctl ipam check)')
    while len(empty) > _BATCH:
        batch, empty = empty[:_BATCH], empty[_BATCH:]
        kv.txn(*_removal(batch))  # a block that changed meanwhile stays; the final compare sees it
    compare, ops = _removal(empty)
    if not pool.spec.disabled:
        compare.append(Compare.none_created_since(keys.BLOCKS, listing.revision))
    return compare, ops


def _removal(blocks) -> tuple[list[Compare], list[Op]]:
    compare, ops = [], []
    for item, block in blocks:
        compare.append(Compare.mod(item.key, item.mod_revision))
        ops.append(Op.delete(item.key))
        if block.affinity and block.affinity.startswith("host:"):
            ops.append(Op.delete(keys.affinity(block.affinity[5:], block.cidr)))
    return compare, ops
