"""The datastore's layout version: a program meeting a layout it does not know refuses.

Every program checks /routed/schema before it reads or writes anything else; the first
one that writes into an empty datastore (agent, controller, a writing routedctl command)
records the version, create-only, so two first writers agree. A datastore without the key
but with routed's data was written before the key existed: that is layout 1.
A writer meeting layout 1 records layout 2: layout 1 reads as it is (see READS).
"""

from __future__ import annotations

from routed.errors import RoutedError

from . import keys
from .kv import KV, Compare, Op

# The layout in routed/datastore/keys.py. Bump it, with a migration, when a key or a
# stored value changes in a way an older program would misread.
# 2: an allocation's attributes (pod, namespace, time) are in its IPAM handle record, the
#    block keeps only the handle and the node per address (ipam/handle.py). A layout-1
#    program would reject such a handle and find no pod in the blocks.
SCHEMA_VERSION = 2
# Layouts this program reads as they are. Layout 1 needs no rewrite: its handles have no
# attributes and its blocks still hold them, and every reader falls back to the block. The
# first writer records layout 2, after which layout-1 programs refuse (they would misread).
READS = frozenset({1, 2})


class SchemaMismatch(RoutedError):
    """The datastore holds a layout this program does not know."""


def ensure(kv: KV, write: bool) -> int:
    """Refuse (SchemaMismatch) unless the datastore's layout is ours; with write, record it
    when the datastore has none yet. Returns the layout version."""
    for _ in range(3):
        item = kv.get(keys.SCHEMA)
        if item is not None:
            found = _check(item.value)
            if not write or found == SCHEMA_VERSION:
                return found
            # An older layout we read as it is: record ours, unless someone else writes the key.
            if kv.txn([Compare.mod(keys.SCHEMA, item.mod_revision)],
                      [Op.put(keys.SCHEMA, str(SCHEMA_VERSION).encode())]).succeeded:
                return SCHEMA_VERSION
            continue
        if not write or kv.create(keys.SCHEMA, str(SCHEMA_VERSION).encode()):
            return SCHEMA_VERSION
        # Another first writer was faster: check what it wrote.
    raise RoutedError(f"{keys.SCHEMA} keeps changing; is another program rewriting it?")


def _check(value: bytes) -> int:
    text = value.decode(errors="replace").strip()
    if not text.isdigit():
        raise SchemaMismatch(f"the datastore's layout version ({keys.SCHEMA}) is {text[:40]!r}, not a number: "
                             "it was not written by routed; refusing to read or write it")
    found = int(text)
    if found not in READS:
        action = ("upgrade this routed to a version that knows it" if found > SCHEMA_VERSION
                  else "migrate the datastore first")
        raise SchemaMismatch(f"the datastore holds routed data layout {found}, this routed knows layout "
                             f"{SCHEMA_VERSION}: {action}; refusing to read or write it")
    return found
