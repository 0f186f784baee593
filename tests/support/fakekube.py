"""A small Kubernetes API server for tests: nodes, namespaces and pods, nothing else.

No kube-apiserver can run here, so the Kubernetes glue is tested against this: a stdlib
ThreadingHTTPServer on 127.0.0.1 that speaks enough of the real API for the official
client (list, get, ``watch.Watch().stream``) and for ``kubectl --server``:

- GET /api/v1/nodes, /api/v1/namespaces, /api/v1/pods, /api/v1/namespaces/NS/pods, and
  one object by name; 404 as a Status object;
- lists carry metadata.resourceVersion; ``fieldSelector`` (metadata.name,
  metadata.namespace, spec.nodeName, status.phase; = == !=) and ``labelSelector``
  (= == != in notin, exists, !exists);
- ``?watch=true`` streams ADDED/MODIFIED/DELETED events as chunked JSON lines from a
  resourceVersion (none or "0": the current objects as ADDED first, as the real server
  does), an object leaving a selector is DELETED, entering it ADDED; ``timeoutSeconds``
  ends the stream; a resourceVersion older than the last ``compact()`` gets one ERROR
  event with a 410 Gone Status, as kube-apiserver answers an expired watch;
- discovery (/api, /api/v1, /apis, /version) for kubectl.

Tests change the cluster through Python methods (add, update, delete, compact,
drop_watches, refuse_watches). ``requests`` records every request path for assertions,
``open_watches`` counts the streams open now.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

KINDS = {"nodes": "Node", "namespaces": "Namespace", "pods": "Pod"}
NAMESPACED = {"pods"}
_FIELDS = {
    "metadata.name": lambda o: o["metadata"].get("name", ""),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", ""),
    "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
}


class BadRequest(Exception):
    pass


# -- selectors ------------------------------------------------------------------------

def field_matcher(text: str | None):
    """A predicate for a fieldSelector: 'spec.nodeName=node-1,metadata.namespace!=x'."""
    terms = []
    for part in filter(None, (text or "").split(",")):
        m = re.fullmatch(r"\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*", part)
        if not m or m.group(1) not in _FIELDS:
            raise BadRequest(f'"{part}" is not a supported field selector')
        terms.append((_FIELDS[m.group(1)], m.group(2) != "!=", m.group(3)))
    return lambda obj: all((get(obj) == value) == equal for get, equal, value in terms)


_LABEL_TERM = re.compile(r"\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|!=|=)\s*([A-Za-z0-9._-]*)|"
                         r"(?<=\s)(in|notin)\s*\(([^)]*)\))?\s*")


def label_matcher(text: str | None):
    """A predicate for a labelSelector: 'a=b,c!=d,e in (x,y),f notin (z),g,!h'."""
    terms = []
    text = text or ""
    pos = 0
    while pos < len(text):
        m = _LABEL_TERM.match(text, pos)
        if not m or m.end() == pos:
            raise BadRequest(f'"{text}" is not a valid label selector')
        negate, key, op, value, set_op, values = m.groups()
        if negate and (op or set_op):
            raise BadRequest(f'"{text}" is not a valid label selector')
        if set_op:
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            terms.append(lambda labels, k=key, a=allowed, inside=set_op == "in":
                         (k in labels and labels[k] in a) if inside else (labels.get(k) not in a))
        elif op:
            terms.append(lambda labels, k=key, v=value, eq=op != "!=":
                         (labels.get(k) == v) if eq else (labels.get(k) != v))
        else:
            terms.append(lambda labels, k=key, present=not negate: (k in labels) == present)
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise BadRequest(f'"{text}" is not a valid label selector')
            pos += 1
    return lambda obj: all(term(obj["metadata"].get("labels") or {}) for term in terms)


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the server ---------------------------------------------------------------------------

class FakeKube:
    """The fake API server. ``with FakeKube() as kube:`` or start()/stop()."""

    def __init__(self):
        self._lock = threading.Condition()
        self._objects: dict[str, dict[tuple[str, str], dict]] = {k: {} for k in KINDS}
        self._events: list[tuple[int, str, str, dict, dict | None]] = []  # rv, kind, type, obj, old
        self._rv = 1
        self._compacted = 0  # watches from before this revision get 410 Gone
        self._generation = 0  # bumped by drop_watches()
        self._closing = False
        self.requests: list[str] = []
        self.open_watches = 0
        # While True, new watch requests are answered 503 (an API server going away);
        # with drop_watches() this holds watchers back while tests change and compact.
        self.refuse_watches = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer._serve(self)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> FakeKube:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakekube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- changing the cluster (tests) -----------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def add(self, kind: str, obj: dict) -> dict:
        """Create an object (kind: nodes | namespaces | pods); returns it as stored."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = self._key(kind, meta)
        with self._lock:
            if key in self._objects[kind]:
                raise ValueError(f"{kind} {key} already exists")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            obj.setdefault("kind", KINDS[kind])
            obj.setdefault("apiVersion", "v1")
            return self._record(kind, key, "ADDED", obj, None)

    def update(self, kind: str, obj: dict) -> dict:
        """Replace an existing object (its uid and creationTimestamp are kept)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = self._key(kind, meta)
        with self._lock:
            old = self._objects[kind].get(key)
            if old is None:
                raise KeyError(f"{kind} {key} does not exist")
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            obj.setdefault("kind", KINDS[kind])
            obj.setdefault("apiVersion", "v1")
            return self._record(kind, key, "MODIFIED", obj, old)

    def patch_metadata(self, kind: str, name: str, namespace: str = "", *, labels: dict | None = None,
                       annotations: dict | None = None) -> dict:
        """Merge labels/annotations into an object (a value of None removes the key)."""
        current = self.get(kind, name, namespace)
        if current is None:
            raise KeyError(f"{kind} {namespace}/{name} does not exist")
        for field, changes in (("labels", labels), ("annotations", annotations)):
            if changes:
                merged = {**(current["metadata"].get(field) or {}), **changes}
                current["metadata"][field] = {k: v for k, v in merged.items() if v is not None}
        return self.update(kind, current)

    def delete(self, kind: str, name: str, namespace: str = "") -> dict:
        key = (namespace if kind in NAMESPACED else "", name)
        with self._lock:
            old = self._objects[kind].pop(key, None)
            if old is None:
                raise KeyError(f"{kind} {namespace}/{name} does not exist")
            self._rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._events.append((self._rv, kind, "DELETED", gone, old))
            self._lock.notify_all()
            return gone

    def get(self, kind: str, name: str, namespace: str = "") -> dict | None:
        with self._lock:
            obj = self._objects[kind].get((namespace if kind in NAMESPACED else "", name))
            return copy.deepcopy(obj) if obj else None

    def list(self, kind: str) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(o) for _, o in sorted(self._objects[kind].items())]

    def compact(self) -> int:
        """Forget the event history: a watch from an older resourceVersion gets 410 Gone."""
        with self._lock:
            self._compacted = self._rv
            self._events.clear()
            return self._rv

    def drop_watches(self) -> None:
        """End every open watch stream (as an apiserver restart or a load balancer would)."""
        with self._lock:
            self._generation += 1
            self._lock.notify_all()

    # -- convenience builders ---------------------------------------------------------------

    def add_node(self, name: str, labels: dict | None = None, internal_ip: str | None = None) -> dict:
        status = {"addresses": [{"type": "InternalIP", "address": internal_ip}]} if internal_ip else {}
        return self.add("nodes", {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                                         **(labels or {})}},
                                  "spec": {}, "status": status})

    def add_namespace(self, name: str, annotations: dict | None = None) -> dict:
        return self.add("namespaces", {"metadata": {"name": name, "annotations": annotations or {}},
                                       "spec": {}, "status": {"phase": "Active"}})

    def add_pod(self, namespace: str, name: str, node: str = "", annotations: dict | None = None,
                labels: dict | None = None) -> dict:
        return self.add("pods", {"metadata": {"name": name, "namespace": namespace,
                                              "annotations": annotations or {}, "labels": labels or {}},
                                 "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
                                 "status": {"phase": "Pending"}})

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _key(kind: str, meta: dict) -> tuple[str, str]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        name = meta.get("name")
        if not name:
            raise ValueError("metadata.name is required")
        if kind in NAMESPACED:
            if not meta.get("namespace"):
                raise ValueError("metadata.namespace is required for pods")
            return meta["namespace"], name
        meta.pop("namespace", None)
        return "", name

    def _record(self, kind, key, type_, obj, old) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[kind][key] = obj
        self._events.append((self._rv, kind, type_, copy.deepcopy(obj), old))
        self._lock.notify_all()
        return copy.deepcopy(obj)

    # -- HTTP -------------------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with self._lock:
            self.requests.append(h.path)
        parts = [p for p in url.path.split("/") if p]
        try:
            if parts in (["api"], ["api", "v1"], ["apis"], ["version"]):
                return self._send(h, 200, self._discovery(parts))
            if parts[:2] != ["api", "v1"] or len(parts) < 3:
                return self._send(h, 404, status(404, "NotFound", "the server could not find the requested resource"))
            rest, namespace = parts[2:], None
            if rest[0] == "namespaces" and len(rest) >= 3:
                namespace, rest = rest[1], rest[2:]
                if rest[0] not in NAMESPACED:
                    raise BadRequest(f"{rest[0]} is not namespaced")
            kind = rest[0]
            if kind not in KINDS or len(rest) > 2:
                return self._send(h, 404, status(404, "NotFound", "the server could not find the requested resource"))
            if len(rest) == 2:
                return self._get_one(h, kind, namespace or "", rest[1])
            match_f, match_l = field_matcher(query.get("fieldSelector")), label_matcher(query.get("labelSelector"))

            def match(obj):
                return (namespace is None or obj["metadata"].get("namespace") == namespace) \
                    and match_f(obj) and match_l(obj)

            if query.get("watch", "").lower() in ("true", "1"):
                return self._watch(h, kind, match, query)
            with self._lock:
                items = [copy.deepcopy(o) for _, o in sorted(self._objects[kind].items()) if match(o)]
                rv = self._rv
            for item in items:  # list items carry no kind/apiVersion, as in the real API
                item.pop("kind", None)
                item.pop("apiVersion", None)
            return self._send(h, 200, {"kind": KINDS[kind] + "List", "apiVersion": "v1",
                                       "metadata": {"resourceVersion": str(rv)}, "items": items})
        except BadRequest as err:
            return self._send(h, 400, status(400, "BadRequest", str(err)))

    def _get_one(self, h, kind, namespace, name):
        obj = self.get(kind, name, namespace)
        if obj is None:
            return self._send(h, 404, status(404, "NotFound", f'{kind} "{name}" not found'))
        return self._send(h, 200, obj)

    @staticmethod
    def _discovery(parts):
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        if parts == ["version"]:
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fakekube", "gitCommit": "0" * 40,
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23",
                    "compiler": "gc", "platform": "linux/amd64"}
        return {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": plural, "singularName": kind.lower(), "namespaced": plural in NAMESPACED, "kind": kind,
             "verbs": ["get", "list", "watch"], "shortNames": {"nodes": ["no"], "namespaces": ["ns"],
                                                               "pods": ["po"]}[plural]}
            for plural, kind in KINDS.items()]}

    def _send(self, h, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _watch(self, h, kind, match, query) -> None:
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            raise BadRequest("timeoutSeconds must be a number") from None
        rv_text = query.get("resourceVersion") or "0"
        if not rv_text.isdigit():
            raise BadRequest(f"resourceVersion {rv_text!r} is not valid")
        since = int(rv_text)
        with self._lock:
            # Checked and counted at once: once a test saw open_watches == 0 with watches
            # refused, no stream can deliver anything until it allows them again.
            if self.refuse_watches:
                return self._send(h, 503, status(503, "ServiceUnavailable", "watches are refused for now"))
            self.open_watches += 1
            generation = self._generation
        try:
            self._stream(h, kind, match, since, generation, timeout)
        finally:
            with self._lock:
                self.open_watches -= 1

    def _stream(self, h, kind, match, since, generation, timeout) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.close_connection = True
        pending: list[dict] = []
        with self._lock:
            if since == 0:
                since = self._rv
                pending = [{"type": "ADDED", "object": copy.deepcopy(o)}
                           for _, o in sorted(self._objects[kind].items()) if match(o)]
            elif since < self._compacted:
                pending = [{"type": "ERROR", "object": status(
                    410, "Expired", f"too old resource version: {since} ({self._compacted})")}]
                since = None
        deadline = time.monotonic() + timeout
        try:
            while True:
                for event in pending:
                    self._chunk(h, json.dumps(event).encode() + b"\n")
                if since is None:
                    break
                with self._lock:
                    pending, since = self._events_after(kind, since, match)
                    while not pending:
                        left = deadline - time.monotonic()
                        if self._closing or self._generation != generation or left <= 0:
                            break
                        self._lock.wait(min(left, 0.5))
                        pending, since = self._events_after(kind, since, match)
                    if not pending:
                        break
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _events_after(self, kind, since, match):
        """Events of kind after since, as a client with this selector sees them."""
        out = []
        for rv, k, type_, obj, old in self._events:
            if rv <= since or k != kind:
                continue
            now_in, was_in = match(obj), old is not None and match(old)
            if type_ == "DELETED":
                seen = "DELETED" if was_in else None
            elif type_ == "ADDED":
                seen = "ADDED" if now_in else None
            else:
                seen = "MODIFIED" if now_in and was_in else "ADDED" if now_in else "DELETED" if was_in else None
            if seen:
                shown = copy.deepcopy(obj)
                if seen == "DELETED" and type_ != "DELETED":
                    shown["metadata"]["resourceVersion"] = str(rv)
                out.append({"type": seen, "object": shown})
        return out, self._rv  # every event up to the current revision was looked at

    @staticmethod
    def _chunk(h, data: bytes) -> None:
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()


__all__ = ["FakeKube", "field_matcher", "label_matcher", "status"]
