"""Typed storage of routed resources (IPPool, BGPPeer, Node, ...) in etcd.

Values are the resource's JSON without ``resourceVersion``, which is etcd's
mod_revision and is filled in on read. Every write is one transaction: the
compare covers whatever the write's validation looked at, so two operators
racing to create overlapping pools cannot both succeed.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import datetime, timezone
from typing import Callable

from routed import resources as r
from routed.errors import AlreadyExists, Conflict, CorruptData, InvalidResource, NotFound

from . import keys
from .kv import KV, Compare, KeyValue, Op

_RETRIES = 5

log = logging.getLogger("routed.datastore")


class Unreadable(dict):
    """Stored records that do not parse or validate, key -> why.

    The one skip path for every reader: a bad record is left out so that it stops
    nothing else, logged once per key and revision, and kept here to be counted
    (a metric) and shown (routedctl get, ipam show, ipam check). Thread-safe: the
    agent's loops share one ResourceStore.
    """

    def __init__(self, who: str):
        super().__init__()
        self._who = who
        self._logged: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def parse(self, item: KeyValue, parse):
        """parse(item), or None when it raises CorruptData (then the record is skipped)."""
        try:
            parsed = parse(item)
        except CorruptData as err:
            with self._lock:
                self[item.key] = str(err)
                first = (item.key, item.mod_revision) not in self._logged
                self._logged.add((item.key, item.mod_revision))
            if first:
                log.warning("%s skips %s until it is repaired: %s", self._who, item.key, err)
            return None
        with self._lock:
            self.pop(item.key, None)
        return parsed

    def forget(self, prefix: str) -> None:
        """Drop what is known under prefix before reading it again (deleted or repaired keys go)."""
        with self._lock:
            for key in [k for k in self if k.startswith(prefix)]:
                del self[key]

    def notes(self, prefix: str = "") -> list[str]:
        with self._lock:
            found = sorted(self.items())
        return [f"skipped unreadable {key}: {why}" for key, why in found if key.startswith(prefix)]


# Checks that look at the other resources of the same kind: (new, old or None, others).
CollectionCheck = Callable[[r.Resource, "r.Resource | None", list], None]


def _check_ippool(new, old, others) -> None:
    if old is not None:
        r.check_pool_update(old, new)
    r.check_pool_overlap(new, others)


COLLECTION_CHECKS: dict[type, CollectionCheck] = {r.IPPool: _check_ippool}

# What else a delete must do or compare: (kv, the stored resource) -> (compares, ops);
# raises to refuse the delete.
DeleteGuard = Callable[[KV, r.Resource], "tuple[list[Compare], list[Op]]"]


def _retire_ippool(kv: KV, pool) -> tuple[list[Compare], list[Op]]:
    from ipam.pools import retirement  # IPAM owns what a pool's blocks mean

    return retirement(kv, pool)


DELETE_GUARDS: dict[type, DeleteGuard] = {r.IPPool: _retire_ippool}


class ResourceStore:
    def __init__(self, kv: KV):
        self.kv = kv
        self.unreadable = Unreadable("the datastore")

    # -- reads --------------------------------------------------------------------

    def get(self, cls: type[r.Resource], name: str, namespace: str | None = None) -> r.Resource:
        item = self.kv.get(_key(cls, name, namespace))
        if item is None:
            raise NotFound(f'{_describe(cls, name, namespace)} not found')
        return self._decode(cls, item)

    def find(self, cls: type[r.Resource], name: str, namespace: str | None = None) -> r.Resource | None:
        try:
            return self.get(cls, name, namespace)
        except NotFound:
            return None

    def list(self, cls: type[r.Resource], namespace: str | None = None) -> list[r.Resource]:
        """Every readable resource of a kind (of one namespace, if given); the others are
        skipped into self.unreadable."""
        prefix = keys.resource(cls.plural, namespace=namespace if cls.namespaced else None)
        items = self.kv.list(prefix).items
        self.unreadable.forget(prefix)
        parsed = (self.unreadable.parse(item, lambda i: self._decode(cls, i)) for item in items)
        return [resource for resource in parsed if resource is not None]

    @staticmethod
    def _decode(cls, item: KeyValue) -> r.Resource:
        try:
            doc = json.loads(item.value)
        except ValueError as err:
            raise CorruptData(f"{item.key}: not JSON ({err})") from None
        try:
            resource = r.parse(doc)
        except InvalidResource as err:
            raise CorruptData(f"{item.key}: {err}") from None
        if not isinstance(resource, cls):
            raise CorruptData(f"{item.key}: holds a {resource.kind_name}, expected {cls.kind_name}")
        resource.metadata.resource_version = str(item.mod_revision)
        return resource

    # -- writes -------------------------------------------------------------------

    def create(self, resource: r.Resource) -> r.Resource:
        return self._write(resource, mode="create")

    def replace(self, resource: r.Resource) -> r.Resource:
        return self._write(resource, mode="replace")

    def apply(self, resource: r.Resource) -> tuple[r.Resource, bool]:
        """Create or update; also returns whether it was created."""
        for _ in range(_RETRIES):
            exists = self.kv.get(_key(type(resource), resource.name, resource.namespace)) is not None
            try:
                return self._write(resource, mode="replace" if exists else "create"), not exists
            except (AlreadyExists, NotFound):
                continue  # someone created or deleted it meanwhile: decide again
        raise Conflict(f'{resource.kind_name} "{resource.metadata.name}" keeps changing; try again')

    def delete(self, cls: type[r.Resource], name: str, resource_version: str | None = None,
               namespace: str | None = None) -> r.Resource:
        key = _key(cls, name, namespace)
        guard = DELETE_GUARDS.get(cls)
        for _ in range(_RETRIES):
            item = self.kv.get(key)
            if item is None:
                raise NotFound(f'{_describe(cls, name, namespace)} not found')
            old = self._decode(cls, item)
            if resource_version and resource_version != str(item.mod_revision):
                raise Conflict(f'{cls.kind_name} "{name}" changed since resourceVersion {resource_version}')
            compare, ops = guard(self.kv, old) if guard else ([], [])
            if self.kv.txn([Compare.mod(key, item.mod_revision), *compare], [Op.delete(key), *ops]).succeeded:
                return old
        raise Conflict(f'{cls.kind_name} "{name}" keeps changing while deleting it; try again'
                       + (" (disable it first)" if cls is r.IPPool else ""))

    def patch(self, cls: type[r.Resource], name: str, patch: dict, namespace: str | None = None) -> r.Resource:
        """JSON merge patch (RFC 7396) over the stored resource."""
        for _ in range(_RETRIES):
            current = self.get(cls, name, namespace)
            doc = _merge_patch(current.to_dict(), patch)
            doc.setdefault("metadata", {})["resourceVersion"] = current.metadata.resource_version
            meta = doc.get("metadata", {})
            if (meta.get("name"), meta.get("namespace")) != (name, current.namespace) or doc.get("kind") != current.kind:
                raise InvalidResource(f'{cls.kind_name} "{name}": a patch cannot change kind or metadata.name')
            try:
                return self.replace(r.parse(doc))
            except Conflict:
                continue
        raise Conflict(f'{cls.kind_name} "{name}" keeps changing; try again')

    def _write(self, resource: r.Resource, mode: str) -> r.Resource:
        cls = type(resource)
        name = resource.metadata.name
        key = _key(cls, name, resource.namespace)
        check = COLLECTION_CHECKS.get(cls)
        for _ in range(_RETRIES):
            compare: list[Compare] = []
            if check is not None:
                listing = self.kv.list(keys.resource(cls.plural))
                stored = {i.key: self._decode(cls, i) for i in listing.items}
                old = stored.get(key)
                check(resource, old, [o for k, o in stored.items() if k != key])
                compare.append(Compare.unchanged_since(keys.resource(cls.plural), listing.revision))
                old_item = next((i for i in listing.items if i.key == key), None)
            else:
                old_item = self.kv.get(key)
                old = self._decode(cls, old_item) if old_item else None
            if mode == "create" and old_item is not None:
                raise AlreadyExists(f'{cls.kind_name} "{name}" already exists')
            if mode == "replace" and old_item is None:
                raise NotFound(f'{cls.kind_name} "{name}" not found')
            wanted_version = resource.metadata.resource_version
            if mode == "replace" and wanted_version and wanted_version != str(old_item.mod_revision):
                raise Conflict(f'{cls.kind_name} "{name}" changed since resourceVersion {wanted_version}; '
                               "get it again and reapply")
            compare.append(Compare.mod(key, old_item.mod_revision if old_item else 0))
            body = self._stored_form(resource, old)
            result = self.kv.txn(compare, [Op.put(key, json.dumps(body, sort_keys=True))])
            if result.succeeded:
                saved = r.parse(body)
                saved.metadata.resource_version = str(result.revision)
                return saved
        raise Conflict(f'{cls.kind_name} "{name}" keeps changing; try again')

    @staticmethod
    def _stored_form(resource: r.Resource, old: r.Resource | None) -> dict:
        doc = resource.to_dict()
        meta = doc["metadata"]
        meta.pop("resourceVersion", None)
        # Identity fields belong to the stored object, not to whoever writes it.
        if old is not None:
            meta["uid"] = old.metadata.uid
            meta["creationTimestamp"] = old.metadata.creation_timestamp
        else:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return doc


def _key(cls: type[r.Resource], name: str, namespace: str | None) -> str:
    if cls.namespaced:
        return keys.resource(cls.plural, name, namespace or "default")
    return keys.resource(cls.plural, name)


def _describe(cls: type[r.Resource], name: str, namespace: str | None) -> str:
    if cls.namespaced:
        return f'{cls.kind_name} "{namespace or "default"}/{name}"'
    return f'{cls.kind_name} "{name}"'


def _merge_patch(target, patch):
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


__all__ = ["ResourceStore", "Unreadable", "COLLECTION_CHECKS", "DELETE_GUARDS"]
