"""Kubernetes Namespaces (their labels) and NetworkPolicies into etcd, as
calico-kube-controllers does, so that agents evaluate policy from etcd alone.

Desired state from a consistent list of the API, compared with what etcd holds; only the
differences are written. An object that does not validate is logged and skipped, and
never stops the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from routed import resources as r
from routed.errors import InvalidResource, RoutedError

log = logging.getLogger("routed.controller")

_KINDS = ((r.Namespace, "namespaces", "v1", "Namespace"),
          (r.KubeNetworkPolicy, "networkpolicies", "networking.k8s.io/v1", "NetworkPolicy"))


def _document(obj: dict, api_version: str, kind: str) -> dict:
    meta = obj.get("metadata") or {}
    doc = {"apiVersion": api_version, "kind": kind,
           "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if meta.get(k)}}
    if kind == "NetworkPolicy":
        doc["spec"] = obj.get("spec") or {}
    return doc


def _ident(res: r.Resource) -> tuple:
    return type(res), res.namespace, res.name


def _content(res: r.Resource) -> dict:
    doc = res.to_dict()
    return {"labels": doc["metadata"].get("labels") or {}, "spec": doc.get("spec")}


def plan(wanted: list[r.Resource], stored: list[r.Resource]) -> tuple[list[r.Resource], list[r.Resource]]:
    """(to write, to delete): what makes ``stored`` equal to ``wanted`` (pure)."""
    have = {_ident(s): s for s in stored}
    want = {_ident(w): w for w in wanted}
    put = [w for key, w in want.items() if key not in have or _content(have[key]) != _content(w)]
    gone = [s for key, s in have.items() if key not in want]
    return put, gone


class PolicySync:
    def __init__(self, store, kube):
        self.store, self.kube = store, kube
        self.stats = {"written": 0, "deleted": 0, "invalid": 0}

    def wanted(self) -> list[r.Resource]:
        out = []
        for _, plural, api_version, kind in _KINDS:
            items, _ = self.kube.list(plural)
            for obj in items:
                try:
                    out.append(r.parse(_document(obj, api_version, kind)))
                except InvalidResource as err:
                    self.stats["invalid"] += 1
                    log.warning("%s not synced: %s", plural, err)
        return out

    def sync(self) -> tuple[int, int]:
        wanted = self.wanted()
        stored = [x for cls, *_ in _KINDS for x in self.store.list(cls)]
        put, gone = plan(wanted, stored)
        for res in put:
            self.store.apply(res)
        for res in gone:
            self.store.delete(type(res), res.name, namespace=res.namespace)
        self.stats["written"] += len(put)
        self.stats["deleted"] += len(gone)
        if put or gone:
            log.info("policy sync: %d written, %d deleted", len(put), len(gone))
        return len(put), len(gone)

    def run(self, stop: threading.Event, interval: float, leading: Callable[[], bool]) -> None:
        while not stop.is_set():
            if leading():
                try:
                    self.sync()
                except RoutedError as err:
                    log.warning("policy sync: %s", err)
            stop.wait(interval)
