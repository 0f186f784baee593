"""Which node may originate which prefix: IPAM's answer for BGP (pure logic over IPAM's
blocks; Origins.read is its one datastore read).

The one rule, from the blocks alone:

- a block with an affinity is announced, whole, by its node;
- an allocated address whose `node` attribute names another node than the block's
  (borrowed from a neighbour's block, or left in a block whose node is gone) is
  announced as a /32 (/128) by the node holding it.

The BGP controller keeps an `Origins` index up to date one block event at a time and
asks it what this node announces and whether a received route's next hop is the node
that IPAM gives the prefix to. `routedctl ipam show --show-borrowed` lists the same
borrowed addresses through `borrowed()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from routed.datastore import keys
from routed.datastore.kv import KV, KeyValue, WatchEvent
from routed.errors import CorruptData

from .block import Block
from .blockmath import IPAddress, ip_at


def node_of(block: Block) -> str:
    """The node a block is affine to; "" when it has none (its node was removed)."""
    affinity = block.affinity or ""
    return affinity[len("host:"):] if affinity.startswith("host:") else ""


@dataclass(frozen=True)
class Borrowed:
    ip: IPAddress
    node: str  # the node holding it, which announces it
    attributes: dict  # {"handle": ..., "secondary": {...}}


def borrowed(block: Block) -> Iterator[Borrowed]:
    """The addresses of a block held by a node other than the block's own, in address order."""
    owner = node_of(block)
    for o, index in enumerate(block.allocations):
        if index is None:
            continue
        attrs = block.attributes[index]
        holder = attrs.get("secondary", {}).get("node", "")
        if holder and holder != owner:
            yield Borrowed(ip_at(block.cidr, o), holder, attrs)


def host_prefix(ip: IPAddress) -> str:
    return f"{ip}/{ip.max_prefixlen}"


def originated(block: Block) -> dict[str, str]:
    """prefix -> the node that announces it, for everything one block makes announced."""
    out = {host_prefix(b.ip): b.node for b in borrowed(block)}
    owner = node_of(block)
    if owner:
        # With /32 blocks a borrowed address is the whole block: the pod's node wins.
        out.setdefault(str(block.cidr), owner)
    return out


class Origins:
    """Who may originate each prefix, kept from IPAM's blocks one change at a time.

    put(), delete() and apply() cost what one block holds, never a walk over all of IPAM.
    Not thread-safe: its owner serialises access.
    """

    def __init__(self, blocks: Iterable[Block] = ()):
        self._by_block: dict[str, dict[str, str]] = {}  # block CIDR -> {prefix: node}
        self._by_prefix: dict[str, str] = {}
        self._by_node: dict[str, set[str]] = {}
        self.unreadable: dict[str, str] = {}  # block key -> why it could not be read (it counts as absent)
        self.replace(blocks)

    @classmethod
    def read(cls, kv: KV) -> tuple[Origins, int]:
        """From every block in the datastore; the revision to watch from is the one returned + 1."""
        listing = kv.list(keys.BLOCKS)
        origins = cls()
        origins.load(listing.items)
        return origins, listing.revision

    def load(self, items: Iterable[KeyValue]) -> None:
        """Start over from stored items (any keys: those that are no block are passed over)."""
        self.replace(())
        self.unreadable.clear()
        for item in items:
            if item.key.startswith(keys.BLOCKS):
                self._put_item(item)

    def apply(self, event: WatchEvent) -> bool:
        """One datastore change (a watch over IPAM's keys or above); True when it may change
        what IPAM answers."""
        if event.type == "resync":  # the watch lost its place: a full listing
            self.load(event.items or ())
            return True
        if not event.kv.key.startswith(keys.BLOCKS):
            return False
        # Most block changes are another node's pod ADD/DEL inside its own block: they
        # change no originator, and saying so spares every agent a re-judgement of all
        # its routes per remote pod (issue 16: a remote change costs O(1)).
        before = self._state_of(event.kv.key)
        if event.type == "put":
            self._put_item(event.kv)
        else:
            self.unreadable.pop(event.kv.key, None)
            self._delete_key(event.kv.key)
        return self._state_of(event.kv.key) != before

    def _state_of(self, key: str) -> tuple:
        """What one block key contributes to the answers: its prefixes and whether it is unreadable."""
        try:
            cidr = str(keys.cidr_from_segment(keys.last_segment(key)))
        except ValueError:
            cidr = None
        return self._by_block.get(cidr), self.unreadable.get(key)

    def _delete_key(self, key: str) -> None:
        try:
            self.delete(str(keys.cidr_from_segment(keys.last_segment(key))))
        except ValueError:
            pass  # not a block's key: nothing of it was ever put

    def _put_item(self, item: KeyValue) -> None:
        try:
            block = Block.from_json(item.value, key=item.key)
        except CorruptData as err:
            # One unreadable block gives nobody its prefixes; every other block still counts.
            self.unreadable[item.key] = str(err)
            self._delete_key(item.key)
            return
        self.unreadable.pop(item.key, None)
        self.put(block)

    def replace(self, blocks: Iterable[Block]) -> None:
        """Start over from a full listing (start-up, or after etcd compacted our watch away)."""
        self._by_block.clear()
        self._by_prefix.clear()
        self._by_node.clear()
        for block in blocks:
            self.put(block)

    def put(self, block: Block) -> None:
        self.delete(str(block.cidr))
        entries = originated(block)
        self._by_block[str(block.cidr)] = entries
        for prefix, node in entries.items():
            self._by_prefix[prefix] = node
            self._by_node.setdefault(node, set()).add(prefix)

    def delete(self, cidr: str) -> None:
        for prefix, node in self._by_block.pop(cidr, {}).items():
            if self._by_prefix.get(prefix) == node:
                del self._by_prefix[prefix]
            prefixes = self._by_node.get(node)
            if prefixes is not None:
                prefixes.discard(prefix)
                if not prefixes:
                    del self._by_node[node]

    def prefixes_of(self, node: str) -> set[str]:
        """What node announces: its blocks and the /32s it holds in other nodes' blocks."""
        return set(self._by_node.get(node, ()))

    def originator(self, prefix: str) -> str | None:
        """The node that may originate prefix (as written: "10.244.1.0/26"), None when IPAM
        gives it to nobody (no such block, an address nobody borrowed, a /27 inside a block)."""
        return self._by_prefix.get(prefix)

    def __len__(self) -> int:
        return len(self._by_prefix)


def announced_by(blocks: Iterable[Block], node: str) -> set[str]:
    """Which prefixes node announces, from a list of blocks."""
    return Origins(blocks).prefixes_of(node)


__all__ = ["Borrowed", "Origins", "announced_by", "borrowed", "host_prefix", "node_of", "originated"]
