"""The datastore's layout version (routed.datastore.schema), on the in-memory KV."""

from __future__ import annotations

import pytest

from routed.datastore import keys
from routed.datastore.memory import MemoryKV
from routed.datastore.schema import SCHEMA_VERSION, SchemaMismatch, ensure


def test_the_first_writer_of_an_empty_datastore_records_the_layout():
    kv = MemoryKV()
    assert ensure(kv, write=False) == SCHEMA_VERSION
    assert kv.get(keys.SCHEMA) is None  # a reader writes nothing
    assert ensure(kv, write=True) == SCHEMA_VERSION
    assert kv.get(keys.SCHEMA).value == str(SCHEMA_VERSION).encode()
    assert ensure(kv, write=True) == SCHEMA_VERSION


def test_layout_1_is_read_as_it_is_and_the_first_writer_records_layout_2():
    kv = MemoryKV()
    kv.put(keys.SCHEMA, b"1")
    assert ensure(kv, write=False) == 1
    assert kv.get(keys.SCHEMA).value == b"1"  # a reader writes nothing
    assert ensure(kv, write=True) == SCHEMA_VERSION == 2
    assert kv.get(keys.SCHEMA).value == b"2"


@pytest.mark.parametrize("value, says", [(b"3", "layout 3, this routed knows layout 2: upgrade"),
                                         (b"0", "migrate the datastore first"),
                                         (b"{garbage", "not a number")])
def test_an_unknown_layout_is_refused_in_one_line(value, says):
    kv = MemoryKV()
    kv.put(keys.SCHEMA, value)
    for write in (False, True):
        with pytest.raises(SchemaMismatch) as err:
            ensure(kv, write=write)
        assert says in str(err.value) and "\n" not in str(err.value)
    assert kv.get(keys.SCHEMA).value == value
