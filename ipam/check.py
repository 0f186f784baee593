"""Finding and repairing IPAM inconsistencies.

check() reads pools, blocks, affinities and handles at ONE etcd revision and reports
what does not add up. Each problem carries the mod revisions it was seen at; repair()
fixes only what the report names, each fix one transaction that compares those
revisions, so a fix never touches anything that changed after the check.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field

from routed import resources as r
from routed.datastore import Compare, Op, keys
from routed.datastore.kv import KV
from routed.errors import CorruptData, RoutedError

from .block import Block
from .handle import Handle

# Problem types, and whether repair() may fix them.
FIXABLE = {
    "address-without-handle": "release the address",
    "orphaned-address": "release the handle's addresses (its pod is gone)",
    "handle-count-mismatch": "rewrite the handle from the blocks",
    "handle-without-addresses": "delete the handle",
    "affinity-without-block": "delete the affinity",
    "block-without-affinity-record": "restore the affinity record",
}
REPORT_ONLY = {"block-outside-pools", "overlapping-blocks", "corrupt-value"}


@dataclass
class Problem:
    type: str
    detail: str
    key: str = ""
    ip: str = ""
    handle: str = ""
    # key -> mod revision at check time (0: absent); repair compares exactly these.
    revisions: dict[str, int] = field(default_factory=dict)

    @property
    def fixable(self) -> bool:
        return self.type in FIXABLE


@dataclass
class Report:
    revision: int
    problems: list[Problem]
    counts: dict[str, int]

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"revision": self.revision, "counts": self.counts, "problems": [asdict(p) for p in self.problems]}

    @classmethod
    def from_dict(cls, doc: dict, source: str = "report") -> Report:
        try:
            problems = [Problem(**p) for p in doc["problems"]]
            report = cls(int(doc["revision"]), problems, dict(doc.get("counts", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise RoutedError(f"{source} is not an IPAM check report ({type(err).__name__}: {err})") from None
        for p in problems:
            if p.type not in FIXABLE and p.type not in REPORT_ONLY:
                raise RoutedError(f"{source}: unknown problem type {p.type!r}")
        return report


def check(kv: KV, live_handles: set[str] | None = None) -> Report:
    """Walk the IPAM state at one revision. With live_handles (from the orchestrator),
    addresses held by any other handle are reported as orphaned."""
    blocks_listing = kv.list(keys.BLOCKS)
    rev = blocks_listing.revision
    pools_items = kv.list(keys.resource(r.IPPool.plural), revision=rev).items
    affinities = {i.key: i for i in kv.list(keys.AFFINITIES, revision=rev).items}
    handles_items = kv.list(keys.HANDLES, revision=rev).items
    problems: list[Problem] = []

    pools = []
    for item in pools_items:
        try:
            pools.append(r.parse(json.loads(item.value)).network)
        except (ValueError, RoutedError) as err:
            problems.append(Problem("corrupt-value", f"{item.key}: {err}", key=item.key))
    for item in kv.list(keys.resource(r.IPAMConfig.plural), revision=rev).items:
        try:
            r.parse(json.loads(item.value))
        except (ValueError, RoutedError) as err:
            problems.append(Problem("corrupt-value", f"{item.key}: {err} (the allocator uses the defaults "
                                    "or the last valid one)", key=item.key))

    blocks: dict[str, tuple[Block, int]] = {}
    unreadable: set[str] = set()
    for item in blocks_listing.items:
        try:
            blocks[item.key] = (Block.from_json(item.value, key=item.key), item.mod_revision)
        except CorruptData as err:
            unreadable.add(item.key)
            problems.append(Problem("corrupt-value", str(err), key=item.key))

    handles: dict[str, tuple[Handle, int]] = {}
    for item in handles_items:
        try:
            handles[keys.last_segment(item.key)] = (Handle.from_json(item.value, key=item.key), item.mod_revision)
        except CorruptData as err:
            problems.append(Problem("corrupt-value", str(err), key=item.key))

    # What the blocks say each handle holds: handle -> {block cidr: count}.
    held: dict[str, dict[str, int]] = {}
    orphans: dict[str, dict[str, tuple[int, list]]] = {}
    in_use = 0
    for bkey, (block, brev) in blocks.items():
        cidr = str(block.cidr)
        if not any(block.cidr.version == p.version and block.cidr.subnet_of(p) for p in pools):
            problems.append(Problem("block-outside-pools", f"block {cidr} is not inside any IP pool", key=bkey))
        if block.affinity and block.affinity.startswith("host:"):
            akey = keys.affinity(block.affinity[5:], block.cidr)
            if akey not in affinities:
                problems.append(Problem("block-without-affinity-record",
                                        f"block {cidr} is affine to {block.affinity[5:]} but has no affinity record",
                                        key=akey, revisions={bkey: brev, akey: 0}))
        for handle in block.handles():
            ips = block.ips_for_handle(handle)
            in_use += len(ips)
            held.setdefault(handle, {})[cidr] = len(ips)
            if handle not in handles:
                for ip in ips:
                    problems.append(Problem("address-without-handle",
                                            f"{ip} in block {cidr} is held by handle {handle}, which does not exist",
                                            key=bkey, ip=str(ip), handle=handle,
                                            revisions={bkey: brev, keys.handle(handle): 0}))
            elif live_handles is not None and handle not in live_handles:
                orphans.setdefault(handle, {})[bkey] = (brev, ips)

    # One problem per orphaned handle, however many blocks it spans, so one fix frees it all.
    for handle, where in orphans.items():
        ips = [str(ip) for _, held_ips in where.values() for ip in held_ips]
        hkey = keys.handle(handle)
        problems.append(Problem("orphaned-address", f"{', '.join(ips)} held by {handle}, whose pod is gone",
                                key=hkey, handle=handle,
                                revisions={hkey: handles[handle][1], **{b: rev for b, (rev, _) in where.items()}}))

    for handle, (record, hrev) in handles.items():
        hkey = keys.handle(handle)
        actual = held.get(handle, {})
        involved = {hkey: hrev, **{keys.block(c): blocks.get(keys.block(c), (None, 0))[1]
                                   for c in set(record.blocks) | set(actual)}}
        if not actual:
            problems.append(Problem("handle-without-addresses",
                                    f"handle {handle} counts {record.total} address(es) but no block holds any",
                                    key=hkey, handle=handle, revisions=involved))
        elif actual != record.blocks:
            problems.append(Problem("handle-count-mismatch",
                                    f"handle {handle} counts {record.blocks}, the blocks hold {actual}",
                                    key=hkey, handle=handle, revisions=involved))

    for akey, aitem in affinities.items():
        parts = akey[len(keys.AFFINITIES):].split("/")
        bkey = keys.block(parts[-1]) if len(parts) == 2 else ""
        if bkey not in blocks and bkey not in unreadable:
            problems.append(Problem("affinity-without-block", f"affinity {akey} names a block that does not exist",
                                    key=akey, revisions={akey: aitem.mod_revision, bkey: 0}))

    ordered = sorted(blocks.values(), key=lambda b: (b[0].cidr.version, b[0].cidr.network_address))
    for (a, _), (b, _) in zip(ordered, ordered[1:]):
        if a.cidr.version == b.cidr.version and a.cidr.overlaps(b.cidr):
            problems.append(Problem("overlapping-blocks", f"blocks {a.cidr} and {b.cidr} overlap: "
                                    "their addresses may be handed out twice", key=keys.block(b.cidr)))

    counts = {"pools": len(pools), "blocks": len(blocks), "affinities": len(affinities),
              "handles": len(handles), "addressesInUse": in_use}
    return Report(rev, problems, counts)


@dataclass
class RepairResult:
    fixed: list[Problem] = field(default_factory=list)
    skipped: list[tuple[Problem, str]] = field(default_factory=list)


def repair(kv: KV, report: Report) -> RepairResult:
    """Fix what report names, each only if it still holds.

    Every fix reads the keys it needs again, checks that the problem is still there,
    and writes in one transaction that compares the revisions it just read. Several
    fixes may touch one block (two leaked addresses in it); comparing the revisions
    seen at check time would make all but the first fail.
    """
    result = RepairResult()
    for problem in report.problems:
        if not problem.fixable:
            result.skipped.append((problem, "needs an operator"))
            continue
        for _ in range(5):
            plan = _fix(kv, problem)
            if plan is None:
                result.skipped.append((problem, "no longer the case"))
                break
            if kv.txn(*plan).succeeded:
                result.fixed.append(problem)
                break
        else:
            result.skipped.append((problem, "keeps changing; run check again"))
    return result


class _Reads:
    """Reads made while planning one fix; each becomes a compare of the fix's transaction."""

    def __init__(self, kv: KV):
        self.kv, self.compare = kv, []

    def get(self, key: str):
        item = self.kv.get(key)
        self.compare.append(Compare.mod(key, item.mod_revision if item else 0))
        return item

    def block(self, bkey: str) -> Block | None:
        item = self.get(bkey)
        return Block.from_json(item.value, key=bkey) if item else None


def _fix(kv: KV, p: Problem):
    """(compares, ops) of one fix, or None when the problem is gone."""
    reads = _Reads(kv)
    blocks = [k for k in p.revisions if k.startswith(keys.BLOCKS)]
    if p.type in ("orphaned-address", "handle-count-mismatch", "handle-without-addresses"):
        # The handle must be the one the check saw, not a new one with the same name.
        handle_item = reads.get(p.key)
        if handle_item is None or p.revisions.get(p.key) != reads.compare[-1].value:
            return None
    if p.type == "affinity-without-block":
        item = reads.get(p.key)
        bkey = next(iter(blocks), "")
        if item is None or not bkey or reads.get(bkey) is not None:
            return None
        return reads.compare, [Op.delete(p.key)], []
    if p.type == "block-without-affinity-record":
        block = reads.block(blocks[0])
        if block is None or reads.get(p.key) is not None or block.affinity != f"host:{p.key.split('/')[-2]}":
            return None
        return reads.compare, [Op.put(p.key, json.dumps({"node": block.affinity[5:], "cidr": str(block.cidr)}))], []
    if p.type == "address-without-handle":
        block = reads.block(p.key)
        attrs = block.attributes_for(p.ip) if block else None
        if attrs is None or attrs["handle"] != p.handle or reads.get(keys.handle(p.handle)) is not None:
            return None
        block.release([ipaddress.ip_address(p.ip)])
        return reads.compare, [Op.put(p.key, block.to_json())], []
    ops, counted = [], Handle(p.handle)
    if p.type == "handle-count-mismatch":
        counted.attrs = Handle.from_json(handle_item.value, key=p.key).attrs  # the pod's, kept
    for bkey in blocks:
        block = reads.block(bkey)
        if block is None:
            continue
        if p.type == "orphaned-address":
            if block.release_handle(p.handle):
                ops.append(Op.put(bkey, block.to_json()))
        else:
            counted.add(block.cidr, len(block.ips_for_handle(p.handle)))
    if p.type == "orphaned-address" or counted.is_empty:
        return reads.compare, [*ops, Op.delete(p.key)], []
    return reads.compare, [Op.put(p.key, counted.to_json())], []
