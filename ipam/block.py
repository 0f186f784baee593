"""The allocation state of one IPAM block, modelled on Calico's AllocationBlock.

Pure data + logic: no I/O. The allocator reads a block from etcd with
``Block.from_json``, mutates it here, and writes ``to_json()`` back in a transaction
that compares the key's mod revision, so two writers can never both win.

JSON shape (compact, keys sorted)::

    {"affinity": "host:node-1" | null,
     "allocations": [0, null, 1, ...],          # one slot per address, index into attributes
     "attributes": [{"handle": "net.cid.eth0"},           # held by the block's node
                    {"handle": "net.c2.eth0", "secondary": {"node": "node-2"}}, ...],
     "cidr": "10.0.0.0/26",
     "sequence": 7,
     "unallocated": [5, 6, ..., 1]}              # free ordinals, head is handed out first
"""

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ipam.blockmath import IPAddress, IPNetwork, ip_at, ordinal
from ipam.errors import AddressInUse, InvalidBlock
from routed.errors import CorruptData

# Calico's largest block is a /20 (v4) or /116 (v6); bigger blocks would make every
# etcd write of a block megabytes long.
MAX_BLOCK_ADDRESSES = 1 << 12

_FIELDS = frozenset({"cidr", "affinity", "allocations", "unallocated", "attributes",
                     "sequence"})
_ATTR_FIELDS = frozenset({"handle", "secondary"})


def block_cidr(cidr: str | IPNetwork) -> IPNetwork:
    """Parse and check a block CIDR; raises InvalidBlock (a ValueError)."""
    try:
        net = ipaddress.ip_network(cidr)
    except (ValueError, TypeError) as e:
        raise InvalidBlock(f"block CIDR {cidr!r} is not valid: {e}") from None
    if net.num_addresses > MAX_BLOCK_ADDRESSES:
        raise InvalidBlock(f"block {net} has {net.num_addresses} addresses; "
                           f"at most {MAX_BLOCK_ADDRESSES} are allowed")
    return net


def _check_handle(handle: object) -> None:
    if not isinstance(handle, str) or not handle:
        raise ValueError(f"handle must be a non-empty string, got {handle!r}")


def _check_secondary(attrs: object) -> dict[str, str]:
    # str -> str like Calico's map[string]string: it then survives a JSON round trip
    # unchanged, which the compare-and-swap writes rely on.
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
        raise ValueError(f"attributes must map strings to strings, got {attrs!r}")
    return dict(attrs)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _few(items: Iterable[object], limit: int = 5) -> str:
    """A short, one-line list for error messages."""
    items = list(items)
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


@dataclass
class Block:
    cidr: IPNetwork
    affinity: str | None
    allocations: list[int | None]
    unallocated: list[int]
    attributes: list[dict]
    sequence: int = 0

    @classmethod
    def new(cls, cidr: str | IPNetwork, affinity: str | None = None) -> "Block":
        """An empty block. Every address is usable: pods get /32 (/128) routes, so
        the block's network and broadcast addresses are ordinary addresses."""
        net = block_cidr(cidr)
        n = net.num_addresses
        return cls(cidr=net, affinity=affinity, allocations=[None] * n,
                   unallocated=list(range(n)), attributes=[], sequence=0)

    # -- size ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.allocations)

    @property
    def free(self) -> int:
        return len(self.unallocated)

    @property
    def in_use(self) -> int:
        return self.size - self.free

    @property
    def is_empty(self) -> bool:
        return self.free == self.size

    # -- allocation ---------------------------------------------------------------

    def assign(self, num: int, handle: str,
               attrs: Mapping[str, str] | None = None) -> list[IPAddress]:
        """Take up to ``num`` addresses from the head of the free list.

        Returns fewer (possibly none) when the block runs out: the caller moves on to
        another block, so fullness is not an error here.
        """
        if not _is_int(num) or num < 0:
            raise ValueError(f"number of addresses must be a non-negative int, got {num!r}")
        _check_handle(handle)
        secondary = _check_secondary(attrs)
        taken = self.unallocated[:num]
        if not taken:
            return []
        del self.unallocated[:len(taken)]
        index = self._attribute_index(handle, secondary)
        for o in taken:
            self.allocations[o] = index
        self.sequence += 1
        return [ip_at(self.cidr, o) for o in taken]

    def assign_ip(self, ip: str | IPAddress, handle: str,
                  attrs: Mapping[str, str] | None = None) -> IPAddress:
        """Take one specific address; AddressInUse if it is taken, AddressNotInBlock
        if it is not in this block."""
        _check_handle(handle)
        secondary = _check_secondary(attrs)
        o = ordinal(self.cidr, ip)
        current = self.allocations[o]
        if current is not None:
            owner = self.attributes[current]["handle"]
            raise AddressInUse(f"address {ip_at(self.cidr, o)} is already in use "
                               f"(handle {owner!r})")
        self.unallocated.remove(o)
        self.allocations[o] = self._attribute_index(handle, secondary)
        self.sequence += 1
        return ip_at(self.cidr, o)

    def release(self, ips: Iterable[str | IPAddress]) -> dict[str, list[IPAddress]]:
        """Free the given addresses; returns the freed ones grouped by handle.

        Addresses outside the block or already free are skipped: a release may be
        replayed (CNI DEL is retried), and replaying must be harmless. Freed ordinals
        go to the tail of the free list, so a just-released address is reused last and
        a stale route or conntrack entry for it has time to go away.
        """
        released: dict[str, list[IPAddress]] = {}
        for ip in ips:
            addr = ipaddress.ip_address(ip)
            if addr.version != self.cidr.version or addr not in self.cidr:
                continue
            o = int(addr) - int(self.cidr.network_address)
            index = self.allocations[o]
            if index is None:
                continue
            self.allocations[o] = None
            self.unallocated.append(o)
            released.setdefault(self.attributes[index]["handle"], []).append(addr)
        if released:
            self._drop_unused_attributes()
            self.sequence += 1
        return released

    def release_handle(self, handle: str) -> list[IPAddress]:
        """Free every address held by ``handle``; returns them (empty if none)."""
        return self.release(self.ips_for_handle(handle)).get(handle, [])

    def set_affinity(self, affinity: str | None) -> None:
        """Change the owning host (None when the node is gone); counts as a mutation."""
        if affinity != self.affinity:
            self.affinity = affinity
            self.sequence += 1

    # -- queries ------------------------------------------------------------------

    def ips_for_handle(self, handle: str) -> list[IPAddress]:
        """Addresses held by ``handle``, in ordinal order."""
        mine = {i for i, a in enumerate(self.attributes) if a["handle"] == handle}
        return [ip_at(self.cidr, o) for o, i in enumerate(self.allocations) if i in mine]

    def handles(self) -> list[str]:
        """Handles holding at least one address, sorted."""
        used = {i for i in self.allocations if i is not None}
        return sorted({self.attributes[i]["handle"] for i in used})

    def attributes_for(self, ip: str | IPAddress) -> dict | None:
        """``{"handle": ..., "secondary": {...}}`` of an allocated address (a copy),
        None if the address is free or not in this block."""
        addr = ipaddress.ip_address(ip)
        if addr.version != self.cidr.version or addr not in self.cidr:
            return None
        index = self.allocations[int(addr) - int(self.cidr.network_address)]
        if index is None:
            return None
        attr = self.attributes[index]
        return {"handle": attr["handle"], "secondary": dict(attr["secondary"])}

    # -- attributes bookkeeping ---------------------------------------------------

    def _attribute_index(self, handle: str, secondary: dict[str, str]) -> int:
        # Reuse an identical entry (as Calico does) so the list stays short.
        entry = {"handle": handle, "secondary": secondary}
        for i, existing in enumerate(self.attributes):
            if existing == entry:
                return i
        self.attributes.append(entry)
        return len(self.attributes) - 1

    def _drop_unused_attributes(self) -> None:
        used = sorted({i for i in self.allocations if i is not None})
        if len(used) == len(self.attributes):
            return
        new_index = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used]
        self.allocations = [None if i is None else new_index[i] for i in self.allocations]

    def copy(self) -> "Block":
        """An independent copy (cheaper than a JSON round trip)."""
        # Attribute entries are never changed in place (a change appends a new entry or
        # drops old ones), so the copy shares them.
        return Block(cidr=self.cidr, affinity=self.affinity, allocations=list(self.allocations),
                     unallocated=list(self.unallocated), attributes=list(self.attributes),
                     sequence=self.sequence)

    # -- JSON ---------------------------------------------------------------------

    def to_json(self) -> str:
        # Every allocation rewrites the whole block value, and etcd's write cost grows with
        # it: an address held by the block's own node (nearly all) is stored as its handle
        # alone, {"handle": h}; from_json gives it back its {"node": <that node>}.
        own = {"node": self.affinity[5:]} if (self.affinity or "").startswith("host:") else None
        return json.dumps({
            "cidr": str(self.cidr),
            "affinity": self.affinity,
            "allocations": self.allocations,
            "unallocated": self.unallocated,
            "attributes": [{"handle": a["handle"]} if own is not None and a["secondary"] == own else a
                           for a in self.attributes],
            "sequence": self.sequence,
        }, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, key: str) -> "Block":
        """Parse and fully validate a stored block; CorruptData names ``key`` and the
        first problem found."""
        def bad(problem: str) -> CorruptData:
            return CorruptData(f"block {key}: {problem}")

        data = _load_object(text, bad)
        missing, unknown = _FIELDS - data.keys(), data.keys() - _FIELDS
        if missing:
            raise bad(f"missing field(s) {_few(sorted(missing))}")
        if unknown:
            raise bad(f"unknown field(s) {_few(sorted(unknown))}")

        if not isinstance(data["cidr"], str):
            raise bad(f"cidr must be a string, got {data['cidr']!r}")
        try:
            cidr = block_cidr(data["cidr"])
        except InvalidBlock as e:
            raise bad(str(e)) from None
        if str(cidr) != data["cidr"]:
            # Handles and keys use the canonical text; another spelling would not match.
            raise bad(f"cidr {data['cidr']!r} is not written canonically ({cidr})")
        size = cidr.num_addresses

        affinity = data["affinity"]
        if affinity is not None and (not isinstance(affinity, str) or not affinity):
            raise bad(f"affinity must be a non-empty string or null, got {affinity!r}")

        sequence = data["sequence"]
        if not _is_int(sequence) or sequence < 0:
            raise bad(f"sequence must be a non-negative integer, got {sequence!r}")

        attributes = data["attributes"]
        if not isinstance(attributes, list):
            raise bad("attributes must be a list")
        own = affinity[5:] if affinity and affinity.startswith("host:") else None
        # The loops below run over every address of every block an agent or allocator reads,
        # so they test types directly (a JSON value is exactly a dict, list, str or int).
        for i, attr in enumerate(attributes):
            if type(attr) is dict and len(attr) == 1 and "handle" in attr:
                if own is None:
                    raise bad(f"attributes[{i}] has no 'secondary', which only a block affine to "
                              f"a host may leave out (for its own node's addresses)")
                try:
                    _check_handle(attr["handle"])
                except ValueError as e:
                    raise bad(f"attributes[{i}]: {e}") from None
                attributes[i] = {"handle": attr["handle"], "secondary": {"node": own}}
                continue
            if type(attr) is not dict or attr.keys() != _ATTR_FIELDS:
                raise bad(f"attributes[{i}] must be an object with exactly "
                          f"'handle' and 'secondary'")
            if type(attr["secondary"]) is not dict:
                raise bad(f"attributes[{i}]: secondary must be an object")
            try:
                _check_handle(attr["handle"])
                _check_secondary(attr["secondary"])
            except ValueError as e:
                raise bad(f"attributes[{i}]: {e}") from None

        allocations = data["allocations"]
        if not isinstance(allocations, list):
            raise bad("allocations must be a list")
        if len(allocations) != size:
            raise bad(f"allocations has {len(allocations)} entries, "
                      f"block {cidr} has {size} addresses")
        count = len(attributes)
        for o, index in enumerate(allocations):
            if index is not None and (type(index) is not int or not 0 <= index < count):
                raise bad(f"allocations[{o}] = {index!r} is not an index into "
                          f"attributes (0..{count - 1})")
        unused = set(range(count)) - set(allocations)
        if unused:
            raise bad(f"attributes entry(ies) {_few(sorted(unused))} used by no allocation")

        unallocated = data["unallocated"]
        if not isinstance(unallocated, list):
            raise bad("unallocated must be a list")
        seen: set[int] = set()
        for o in unallocated:
            if type(o) is not int or not 0 <= o < size:
                raise bad(f"unallocated holds {o!r}, not an ordinal of {cidr} "
                          f"(0..{size - 1})")
            if o in seen:
                raise bad(f"ordinal {o} is listed twice in unallocated")
            if allocations[o] is not None:
                raise bad(f"ordinal {o} is both allocated and unallocated")
            seen.add(o)
        if len(seen) != allocations.count(None):  # some free ordinal is not in the free list
            lost = [o for o in range(size) if allocations[o] is None and o not in seen]
            raise bad(f"ordinal(s) {_few(lost)} are neither allocated nor unallocated")

        return cls(cidr=cidr, affinity=affinity, allocations=allocations,
                   unallocated=unallocated, attributes=attributes, sequence=sequence)


def _load_object(text: str | bytes, bad) -> dict:
    """json.loads that turns every failure into ``bad(problem)``; shared with Handle."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    except (ValueError, TypeError, RecursionError) as e:
        raise bad(f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    return data
