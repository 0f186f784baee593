"""Where a node's service announcements come from: Services and EndpointSlices, read from
the Kubernetes API through informers (list + watch, kept in memory), or from etcd when the
agent runs without Kubernetes (`routedctl apply -f` stores v1 Service and
discovery.k8s.io/v1 EndpointSlice documents there, as the lab does). Never from the CNI path.

What to announce is bgp/services.py's pure plan; the BGP controller calls
ServiceAnnouncer.prefixes() and announces the result beside the node's blocks.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

import pydantic

from bgp import services as plan_services
from routed import resources as r
from routed.resources.service import from_api

log = logging.getLogger("routed.services")


class ServiceSource(Protocol):
    def services(self) -> list[r.Service]: ...

    def endpoint_slices(self) -> list[r.EndpointSlice]: ...


class StoredServices:
    """etcd (no Kubernetes): what `routedctl apply` stored, validated on read; an
    unreadable record is skipped by the store (and counted), never the others."""

    def __init__(self, store):
        self.store = store

    def services(self) -> list[r.Service]:
        return self.store.list(r.Service)

    def endpoint_slices(self) -> list[r.EndpointSlice]:
        return self.store.list(r.EndpointSlice)


class KubeServices:
    """Two informers (every namespace); `changed` is called after each change, from the
    informers' threads (the BGP controller only queues an event there)."""

    def __init__(self, kube, changed: Callable[[], None], watch_timeout: int = 300):
        from routed.k8s.client import Informer  # imports kubernetes: only with Kubernetes

        self._services = Informer(kube, "services", watch_timeout=watch_timeout, on_change=changed)
        self._slices = Informer(kube, "endpointslices", watch_timeout=watch_timeout, on_change=changed)
        # (kind, namespace, name) -> (resourceVersion, the parsed object or None if refused):
        # every BGP event asks for all of them, but only a changed object is validated again
        # (and a refused one logged again).
        self._parsed: dict[tuple, tuple[str | None, object | None]] = {}

    def start(self) -> KubeServices:
        self._services.start("informer-services")
        self._slices.start("informer-endpointslices")
        return self

    def stop(self) -> None:
        self._services.stop()
        self._slices.stop()

    def services(self) -> list[r.Service]:
        return self._parse(r.Service, self._services.items())

    def endpoint_slices(self) -> list[r.EndpointSlice]:
        return self._parse(r.EndpointSlice, self._slices.items())

    def _parse(self, cls, objects: list[dict]) -> list:
        """Each object validated alone: a bad one is left out (logged once), never the rest."""
        out, seen = [], set()
        for obj in objects:
            meta = (obj.get("metadata") or {}) if isinstance(obj, dict) else {}
            key, version = (cls.kind_name, meta.get("namespace"), meta.get("name")), meta.get("resourceVersion")
            seen.add(key)
            cached = self._parsed.get(key)
            if cached is None or cached[0] != version:
                cached = self._parsed[key] = (version, self._validate(cls, obj, meta))
            if cached[1] is not None:
                out.append(cached[1])
        for key in [k for k in self._parsed if k[0] == cls.kind_name and k not in seen]:
            del self._parsed[key]
        return out

    @staticmethod
    def _validate(cls, obj, meta: dict):
        try:
            return from_api(cls, obj)
        except (pydantic.ValidationError, TypeError) as err:
            why = str(err).splitlines()[0] if isinstance(err, TypeError) else \
                r.format_validation_error(cls.kind_name, meta.get("name"), err)
            log.warning("%s %s/%s not used for service advertisement: %s", cls.kind_name,
                        meta.get("namespace"), meta.get("name"), why)
            return None


class ServiceAnnouncer:
    """The service prefixes this node announces, from a source and the configuration."""

    def __init__(self, source: ServiceSource, node: str):
        self.source, self.node = source, node
        self._skipped: dict[str, str] = {}

    def prefixes(self, adv: plan_services.Advertisement, pools: list) -> set[str]:
        if not adv.cidrs:
            return set()  # nothing configured: the source is not even read
        result = plan_services.plan(adv, self.source.services(), self.source.endpoint_slices(), self.node, pools)
        for what in result.skipped.keys() - self._skipped.keys():
            log.warning("service advertisement: %s not announced: %s", what, result.skipped[what])
        self._skipped = result.skipped
        return result.prefixes
