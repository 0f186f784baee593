"""The datastore's layout version: a program meeting a layout it does not know refuses.

Every program checks /routed/schema before it reads or writes anything else; the first
one that writes into an empty datastore (agent, controller, a writing routedctl command)
records the version, create-only, so two first writers agree. A datastore without the key
but with routed's data was written before the key existed: that is layout 1.
"""

from __future__ import annotations

from routed.errors import RoutedError

from . import keys
from .kv import KV

# The layout in routed/datastore/keys.py. Bump it, with a migration, when a key or a
# stored value changes in a way an older program would misread.
SCHEMA_VERSION = 1


class SchemaMismatch(RoutedError):
    """The datastore holds a layout this program does not know."""


def ensure(kv: KV, write: bool) -> int:
    """Refuse (SchemaMismatch) unless the datastore's layout is ours; with write, record it
    when the datastore has none yet. Returns the layout version."""
    for _ in range(3):
        item = kv.get(keys.SCHEMA)
        if item is not None:
            return _check(item.value)
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
    if found != SCHEMA_VERSION:
        action = ("upgrade this routed to a version that knows it" if found > SCHEMA_VERSION
                  else "migrate the datastore first")
        raise SchemaMismatch(f"the datastore holds routed data layout {found}, this routed knows layout "
                             f"{SCHEMA_VERSION}: {action}; refusing to read or write it")
    return found
