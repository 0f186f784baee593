"""An IPAM handle: which blocks hold how many addresses for one container interface,
and what the addresses were allocated for.

Written in the same etcd transaction as the block it counts, so a handle never points
at addresses that do not exist, and release-by-handle only has to visit these blocks.

The handle is written with every allocation anyway, so the allocation's attributes (pod,
namespace, node, time: `attrs`) live here and not in the block (layout 2, see
routed/datastore/schema.py): a block value, rewritten by every allocation in it, then
carries only the handle and the holding node per address and stays small. A layout-1
handle has no `attrs`; it reads as {} and its block still holds them.

JSON shape (compact, keys sorted)::

    {"attrs": {"namespace": "ns", "node": "n1", "pod": "p", "time": "..."},
     "blocks": {"10.0.0.0/26": 1}, "handle": "net.cid.eth0", "sequence": 3}
"""

import json
from dataclasses import dataclass, field

from ipam.block import _check_secondary, _is_int, _load_object, block_cidr
from ipam.blockmath import IPNetwork
from ipam.errors import InvalidBlock
from routed.errors import CorruptData

_FIELDS = frozenset({"handle", "blocks", "sequence"})
_OPTIONAL = frozenset({"attrs"})  # absent in layout 1


@dataclass
class Handle:
    handle_id: str
    blocks: dict[str, int] = field(default_factory=dict)
    sequence: int = 0
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.blocks

    @property
    def total(self) -> int:
        """Addresses held across all blocks."""
        return sum(self.blocks.values())

    def add(self, block: str | IPNetwork, n: int) -> None:
        """Count ``n`` more addresses in ``block``."""
        if not _is_int(n) or n < 0:
            raise ValueError(f"count must be a non-negative int, got {n!r}")
        if n == 0:
            return
        # Canonical text, so "fd00::0/122" and "fd00::/122" are one entry. A parsed
        # network prints canonically already (and parsing is most of an allocation's CPU).
        cidr = str(block) if not isinstance(block, str) else str(block_cidr(block))
        self.blocks[cidr] = self.blocks.get(cidr, 0) + n
        self.sequence += 1

    def remove(self, block: str | IPNetwork, n: int) -> None:
        """Count ``n`` fewer in ``block``: never below zero, and a block that reaches
        zero is dropped. Removing more than is held is not an error, since a release
        may be replayed."""
        if not _is_int(n) or n < 0:
            raise ValueError(f"count must be a non-negative int, got {n!r}")
        cidr = str(block_cidr(block))
        held = self.blocks.get(cidr, 0)
        if n == 0 or held == 0:
            return
        if n >= held:
            del self.blocks[cidr]
        else:
            self.blocks[cidr] = held - n
        self.sequence += 1

    def to_json(self) -> str:
        return json.dumps({"handle": self.handle_id, "blocks": self.blocks,
                           "sequence": self.sequence, "attrs": self.attrs},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, key: str) -> "Handle":
        """Parse and validate a stored handle; CorruptData names ``key`` and the
        first problem found."""
        def bad(problem: str) -> CorruptData:
            return CorruptData(f"handle {key}: {problem}")

        data = _load_object(text, bad)
        missing, unknown = _FIELDS - data.keys(), data.keys() - _FIELDS - _OPTIONAL
        if missing:
            raise bad(f"missing field(s) {', '.join(sorted(missing))}")
        if unknown:
            raise bad(f"unknown field(s) {', '.join(sorted(unknown)[:5])}")

        handle_id = data["handle"]
        if not isinstance(handle_id, str) or not handle_id:
            raise bad(f"handle must be a non-empty string, got {handle_id!r}")

        sequence = data["sequence"]
        if not _is_int(sequence) or sequence < 0:
            raise bad(f"sequence must be a non-negative integer, got {sequence!r}")

        blocks = data["blocks"]
        if not isinstance(blocks, dict):
            raise bad("blocks must be an object mapping block CIDR to count")
        for cidr, count in blocks.items():
            try:
                canonical = str(block_cidr(cidr))
            except InvalidBlock as e:
                raise bad(str(e)) from None
            if canonical != cidr:
                # Two spellings of one block would count it twice.
                raise bad(f"block {cidr!r} is not written canonically ({canonical})")
            if not _is_int(count) or count <= 0:
                raise bad(f"count for block {cidr} must be a positive integer, "
                          f"got {count!r}")

        try:
            attrs = _check_secondary(data.get("attrs"))
        except ValueError as e:
            raise bad(f"attrs: {e}") from None

        return cls(handle_id=handle_id, blocks=blocks, sequence=sequence, attrs=attrs)
