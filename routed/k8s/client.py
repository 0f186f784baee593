"""A thin wrapper over the official `kubernetes` client, and an informer.

Objects are plain dicts, decoded from the API's JSON: the client's model classes cost
far more to build than the few fields routed reads (names, labels, annotations,
addresses). Only nodes, namespaces, pods, network policies, services and endpoint slices
are used, always with the verbs the chart's ClusterRoles grant (get, list, watch).

Importing this module imports `kubernetes` (~300 ms): the agent does it once at start-up
and only when it runs with Kubernetes; the CNI shim never does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, Iterator

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from . import Gone, KubeError

log = logging.getLogger("routed.k8s")

KINDS = ("nodes", "namespaces", "pods", "networkpolicies", "services", "endpointslices")


class KubeClient:
    def __init__(self, api_client, where: str):
        self.api = k8s.CoreV1Api(api_client)
        self.networking = k8s.NetworkingV1Api(api_client)
        self.discovery = k8s.DiscoveryV1Api(api_client)
        self.where = where  # for error messages: the server URL

    @classmethod
    def connect(cls, server: str | None = None, kubeconfig: str | None = None,
                in_cluster: bool = False) -> KubeClient:
        """--kube-server URL (no credentials: tests, `kubectl proxy`), a kubeconfig file,
        or the pod's service account (in-cluster)."""
        cfg = k8s.Configuration()
        try:
            if server:
                cfg.host = server.rstrip("/")
            elif kubeconfig:
                k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
            elif in_cluster:
                k8s_config.load_incluster_config(client_configuration=cfg)
            else:
                raise KubeError("no Kubernetes API configured: pass --kube-server or --kubeconfig, "
                                "or run in a pod (KUBERNETES_SERVICE_HOST)")
        except k8s_config.ConfigException as err:
            raise KubeError(f"cannot load the Kubernetes client configuration: {err}") from None
        return cls(k8s.ApiClient(cfg), cfg.host)

    # -- reads ----------------------------------------------------------------------------

    def _lister(self, kind: str):
        return {"nodes": self.api.list_node, "namespaces": self.api.list_namespace,
                "pods": self.api.list_pod_for_all_namespaces,
                "networkpolicies": self.networking.list_network_policy_for_all_namespaces,
                "services": self.api.list_service_for_all_namespaces,
                "endpointslices": self.discovery.list_endpoint_slice_for_all_namespaces}[_kind(kind)]

    def list(self, kind: str, *, field_selector: str | None = None,
             label_selector: str | None = None) -> tuple[list[dict], str]:
        """(items, resourceVersion): a consistent read (no resourceVersion given, so the
        API server reads from etcd, never from a possibly stale watch cache)."""
        body = self._json(self._call(self._lister(kind), kind, **_selectors(field_selector, label_selector)))
        return body.get("items") or [], str((body.get("metadata") or {}).get("resourceVersion") or "")

    def get(self, kind: str, name: str, namespace: str = "") -> dict | None:
        """One object, None when it does not exist."""
        reader = {"nodes": self.api.read_node, "namespaces": self.api.read_namespace,
                  "pods": lambda n, **kw: self.api.read_namespaced_pod(n, namespace, **kw)}[_kind(kind)]
        try:
            return self._json(self._call(reader, kind, name))
        except _NotFound:
            return None

    def watch(self, kind: str, resource_version: str, *, field_selector: str | None = None,
              label_selector: str | None = None, timeout: int = 300,
              on_open: Callable[[object], None] | None = None) -> Iterator[tuple[str, dict]]:
        """(type, object) from resource_version on, until the server ends the stream (at
        most `timeout` seconds). BOOKMARK events are passed on: their resourceVersion is
        where to resume. Raises Gone when resource_version is too old."""
        resp = self._call(self._lister(kind), kind, watch=True, resource_version=resource_version,
                          timeout_seconds=timeout, allow_watch_bookmarks=True,
                          _request_timeout=(10, timeout + 30),
                          **_selectors(field_selector, label_selector))
        if on_open is not None:
            on_open(resp)
        try:
            for line in iter_resp_lines(resp):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    type_, obj = event["type"], event["object"]
                except (ValueError, KeyError, TypeError):
                    raise KubeError(f"{self.where}: undecodable watch event {line[:200]!r}") from None
                if type_ == "ERROR":
                    code = obj.get("code") if isinstance(obj, dict) else None
                    message = obj.get("message", "") if isinstance(obj, dict) else str(obj)
                    if code == 410:
                        raise Gone(f"watch {kind} from {resource_version}: {message}")
                    raise KubeError(f"watch {kind} at {self.where}: {code} {message}")
                yield type_, obj
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise KubeError(f"watch {kind} at {self.where} broke: {err}") from None
        finally:
            resp.close()
            resp.release_conn()

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, fn, kind: str, *args, **kwargs):
        kwargs["_preload_content"] = False
        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            if err.status == 404:
                raise _NotFound() from None
            if err.status == 410:
                raise Gone(f"{kind}: {_message(err)}") from None
            raise KubeError(f"Kubernetes API at {self.where}: {kind}: {err.status} {_message(err)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise KubeError(f"cannot reach the Kubernetes API at {self.where}: {_reason(err)}") from None

    def _json(self, resp) -> dict:
        try:
            return json.loads(resp.data)
        except ValueError as err:
            raise KubeError(f"Kubernetes API at {self.where} sent no JSON: {err}") from None
        finally:
            resp.release_conn()


class _NotFound(Exception):
    pass


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unsupported kind {kind!r}")
    return kind


def _selectors(field_selector, label_selector) -> dict:
    out = {}
    if field_selector:
        out["field_selector"] = field_selector
    if label_selector:
        out["label_selector"] = label_selector
    return out


def _message(err: ApiException) -> str:
    try:
        return json.loads(err.body).get("message") or err.reason
    except (ValueError, TypeError, AttributeError):
        return str(err.reason)


def _reason(err: Exception) -> str:
    reason = getattr(err, "reason", None)
    return str(reason or err)


def key_of(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Informer:
    """A local copy of one kind (optionally a field selector), kept by list + watch.

    Lists, then watches from the list's resourceVersion; a broken stream is resumed from
    the last resourceVersion seen; 410 Gone (history compacted) means list again. Readers
    wait for an object with wait_for(), which wakes on every change.
    """

    def __init__(self, kube: KubeClient, kind: str, *, field_selector: str | None = None,
                 watch_timeout: int = 300, backoff_max: float = 30.0,
                 on_change: Callable[[], None] | None = None):
        self.kube, self.kind, self.field_selector = kube, kind, field_selector
        self.on_change = on_change  # called after each change (a listing or an event), outside the lock
        self.watch_timeout, self.backoff_max = watch_timeout, backoff_max
        self.synced = threading.Event()
        self.relists = 0  # how many times the whole kind was listed (tests, metrics)
        self._objects: dict[tuple[str, str], dict] = {}
        self._changed = threading.Condition()
        self._resp = None
        self._stop = threading.Event()

    # -- reading --------------------------------------------------------------------------

    def get(self, name: str, namespace: str = "") -> dict | None:
        with self._changed:
            return self._objects.get((namespace, name))

    def items(self) -> list[dict]:
        with self._changed:
            return list(self._objects.values())

    def wait_for(self, name: str, namespace: str = "", timeout: float = 0.0) -> dict | None:
        """The object, waiting up to timeout seconds for it to appear (the watch may lag
        the API by a little: kubelet can ask for a pod's network before we saw the pod)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                obj = self._objects.get((namespace, name))
                left = deadline - time.monotonic()
                if obj is not None or left <= 0:
                    return obj
                self._changed.wait(left)

    # -- running ----------------------------------------------------------------------------

    def start(self, name: str = "") -> threading.Thread:
        thread = threading.Thread(target=self.run, name=name or f"informer-{self.kind}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()  # unblocks the read in the watch thread
            except Exception:  # noqa: BLE001 - best effort; the thread is a daemon
                pass

    def run(self) -> None:
        delay, rv = 0.5, ""
        while not self._stop.is_set():
            try:
                if not rv:
                    rv = self._relist()
                for type_, obj in self.kube.watch(self.kind, rv, field_selector=self.field_selector,
                                                  timeout=self.watch_timeout, on_open=self._opened):
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    self._apply(type_, obj)
                    if self._stop.is_set():
                        break
                delay = 0.5
            except Gone as err:
                log.info("%s: %s; listing again", self.kind, err)
                rv = ""
            except KubeError as err:
                if self._stop.is_set():
                    break
                log.warning("%s: %s; retrying in %.1fs", self.kind, err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
            finally:
                self._resp = None

    def _opened(self, resp) -> None:
        self._resp = resp
        if self._stop.is_set():
            self.stop()

    def _relist(self) -> str:
        items, rv = self.kube.list(self.kind, field_selector=self.field_selector)
        with self._changed:
            self._objects = {key_of(o): o for o in items}
            self.relists += 1
            self._changed.notify_all()
        self.synced.set()
        self._notify()
        return rv

    def _apply(self, type_: str, obj: dict) -> None:
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: only its resourceVersion matters
        with self._changed:
            if type_ == "DELETED":
                self._objects.pop(key_of(obj), None)
            else:
                self._objects[key_of(obj)] = obj
            self._changed.notify_all()
        self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # noqa: BLE001 - a reader's bug must not stop the watch
                log.exception("%s: change callback failed", self.kind)


__all__ = ["KubeClient", "Informer", "key_of", "KINDS"]
