"""The etcd v3 implementation of routed's KV interface, directly over grpcio.

Why not a ready client: python-etcd3 0.12 needs protobuf < 3.21; its forks and the
asyncio clients either crash or stop silently when a watch loses its server, and none
exposes range compares or paged reads at one revision (see the issue note of the
foundation issue for measurements). The calls routed needs are few, so this module
makes them itself and uses etcd-sdk-python only for its generated gRPC stubs.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter
from urllib.parse import urlparse

import grpc
from pyetcd.etcdrpc import kv_pb2, rpc_pb2, rpc_pb2_grpc

from routed.errors import DatastoreUnavailable

from . import keys
from .kv import Compare, KeyValue, Listing, Op, QueuedWatch, SingleKeyWrites, TxnResult, WatchEvent, prefix_end

_TARGETS = {"version": rpc_pb2.Compare.VERSION, "create": rpc_pb2.Compare.CREATE,
            "mod": rpc_pb2.Compare.MOD, "value": rpc_pb2.Compare.VALUE}
_RESULTS = {"==": rpc_pb2.Compare.EQUAL, "!=": rpc_pb2.Compare.NOT_EQUAL,
            "<": rpc_pb2.Compare.LESS, ">": rpc_pb2.Compare.GREATER}
_TARGET_FIELD = {"version": "version", "create": "create_revision", "mod": "mod_revision", "value": "value"}

# gRPC codes after which a request goes to the next endpoint: the member is unreachable
# or has no leader ("etcdserver: no leader" is UNAVAILABLE), did not answer in time, or
# our own failover closed the channel under the call (CANCELLED).
_FAILOVER = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}

# Keepalive pings on busy channels (watch streams) find a member that went silent. etcd
# refuses pings closer than its --grpc-keepalive-min-time (5s) and pings without a call.
_CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 3_000),
                    ("grpc.keepalive_permit_without_calls", 0), ("grpc.http2.max_pings_without_data", 0)]

# A watch is created with this metadata so that a member that loses its leader cancels it
# (etcd's WithRequireLeader) instead of keeping a stream that will never see a change.
_REQUIRE_LEADER = (("hasleader", "true"),)


def _b(text: str) -> bytes:
    return text.encode()


def _kv(pb) -> KeyValue:
    return KeyValue(pb.key.decode(), pb.value, pb.mod_revision, pb.create_revision, pb.version, pb.lease)


def area(key: bytes) -> str:
    """Which part of routed's layout a request's key falls in ("ipam/blocks",
    "resources/nodes", "uninstall", ...): few values, enough to tell whose reads they are."""
    text = key.decode(errors="replace")
    if not text.startswith(keys.ROOT):
        return "other"
    parts = text[len(keys.ROOT):].split("/")
    if parts[0] in ("ipam", "resources") and len(parts) > 1 and parts[1]:
        return "/".join(parts[:2])
    return parts[0] or "all"  # "all": a range or watch over all of routed's keys


def _request_area(request) -> str:
    if isinstance(request, rpc_pb2.TxnRequest):  # where its first compare (or op) points
        first = request.compare[0].key if request.compare else b""
        if not first and request.success:
            op = request.success[0]
            first = getattr(op, op.WhichOneof("request") or "request_range").key
        return area(first)
    return area(getattr(request, "key", b""))


def _reason(err: grpc.RpcError) -> str:
    """gRPC's details are long; keep the part a user can act on."""
    detail = err.details() or str(err.code())
    if "secure read failed" in detail.lower() or "ssl" in detail.lower():
        return "TLS handshake failed (is the client certificate missing or not trusted?)"
    for known in ("Connection refused", "handshake", "certificate", "Deadline Exceeded",
                  "No route to host", "DNS resolution failed"):
        if known.lower() in detail.lower():
            return known.lower() if known != "handshake" else "TLS handshake failed"
    return detail.splitlines()[0][:160]


class EtcdKV(SingleKeyWrites):
    """A thread-safe client for one etcd cluster, failing over between endpoints."""

    def __init__(self, endpoints: list[str], *, ca: bytes | None = None, cert: bytes | None = None,
                 key: bytes | None = None, timeout: float = 5.0):
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._tls = (ca, cert, key)
        self._lock = threading.Lock()
        # Clients start on a random member, so that a cluster's agents do not all load the first.
        self._current = random.randrange(len(self.endpoints))
        self._channel: grpc.Channel | None = None
        self._stubs: dict[str, object] = {}
        self._closed = False
        # Requests sent, by (op, area of its key): read by the agent's metrics and the
        # scale tests ("what does a remote change cost this client"). += on a Counter
        # under the GIL is cheap; an occasional lost count under a race is acceptable.
        self.requests: Counter = Counter()
        self.errors: Counter = Counter()  # failed attempts by gRPC status name, lower case (metrics)

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self.endpoints[self._current]

    # -- connection -------------------------------------------------------------

    def _open(self, index: int) -> None:
        url = urlparse(self.endpoints[index])
        target = url.netloc
        if url.scheme == "https":
            ca, cert, key = self._tls
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            channel = grpc.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        if self._channel is not None:
            self._channel.close()
        self._channel = channel
        self._current = index
        self._stubs = {"kv": rpc_pb2_grpc.KVStub(channel), "lease": rpc_pb2_grpc.LeaseStub(channel),
                       "watch": rpc_pb2_grpc.WatchStub(channel),
                       "maintenance": rpc_pb2_grpc.MaintenanceStub(channel)}

    def _stub(self, name: str):
        with self._lock:
            if self._closed:
                raise DatastoreUnavailable("the etcd client is closed")
            if self._channel is None:
                self._open(self._current)
            return self._stubs[name], self.endpoints[self._current]

    def _failover(self, endpoint: str) -> None:
        with self._lock:
            if self.endpoints[self._current] == endpoint and len(self.endpoints) > 1:
                self._open((self._current + 1) % len(self.endpoints))

    _ROUNDS = 3  # times every endpoint is tried, within the call's budget

    _OPS = {"Range": "range", "Txn": "txn", "Compact": "compact", "LeaseGrant": "lease", "LeaseRevoke": "lease"}

    def _call(self, stub: str, method: str, request):
        self.requests[(self._OPS.get(method, method), _request_area(request))] += 1
        return self._attempts(stub, lambda service, timeout: getattr(service, method)(request, timeout=timeout))

    def _attempts(self, stub: str, call):
        """call(service, timeout) within self.timeout, failing over to the next endpoint when a
        member is unreachable, has no leader, or does not answer within its share.

        With several endpoints one attempt gets half the budget, so a member that went
        silent (a black-holed host, a stopped process) costs at most that before the next
        one answers. Sending a request again after a deadline is safe for routed: every
        transaction compares each key it writes, so a first copy that was applied after
        all makes the second fail its compare, and the caller re-reads as after any lost
        race; unconditional puts and deletes leave the same state twice.
        """
        deadline = time.monotonic() + self.timeout
        share = self.timeout if len(self.endpoints) == 1 else max(self.timeout / 2, 1.0)
        failures: dict[str, str] = {}
        for attempt in range(self._ROUNDS * len(self.endpoints)):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if attempt and attempt % len(self.endpoints) == 0:
                # Every member failed once (an election, a restart): a short pause, then again.
                time.sleep(min(0.25 * attempt / len(self.endpoints), left / 2))
            service, endpoint = self._stub(stub)
            try:
                return call(service, min(share, left))
            except grpc.RpcError as err:
                code = err.code()
                self.errors[code.name.lower()] += 1
                if code not in _FAILOVER or (code == grpc.StatusCode.CANCELLED and self._closed):
                    raise DatastoreUnavailable(f"etcd at {endpoint} refused the request: {_reason(err)}") from None
                failures[endpoint] = (f"no answer within {min(share, left):.1f}s"
                                      if code == grpc.StatusCode.DEADLINE_EXCEEDED else _reason(err))
                self._failover(endpoint)
        raise DatastoreUnavailable("cannot reach etcd at " + ", ".join(f"{e} ({why})" for e, why in failures.items()))

    # -- KV ---------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        resp = self._call("kv", "Range", rpc_pb2.RangeRequest(key=_b(key)))
        return _kv(resp.kvs[0]) if resp.kvs else None

    def revision(self) -> int:
        """The cluster's current revision."""
        resp = self._call("kv", "Range", rpc_pb2.RangeRequest(key=b"\0", count_only=True))
        return resp.header.revision

    def txn(self, compare: list[Compare], success: list[Op], failure: list[Op] = ()) -> TxnResult:
        request = rpc_pb2.TxnRequest(compare=[self._compare(c) for c in compare],
                                     success=[self._op(o) for o in success],
                                     failure=[self._op(o) for o in failure])
        resp = self._call("kv", "Txn", request)
        ops = success if resp.succeeded else failure
        results = []
        for op, r in zip(ops, resp.responses):
            if op.kind == "get":
                kvs = r.response_range.kvs
                results.append(_kv(kvs[0]) if kvs else None)
            else:
                results.append(None)
        return TxnResult(resp.succeeded, resp.header.revision, results)

    @staticmethod
    def _compare(c: Compare):
        pb = rpc_pb2.Compare(key=_b(c.key), target=_TARGETS[c.target], result=_RESULTS[c.op])
        setattr(pb, _TARGET_FIELD[c.target], c.value)
        if c.range_end is not None:
            pb.range_end = _b(c.range_end)
        return pb

    @staticmethod
    def _op(op: Op):
        if op.kind == "put":
            return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=_b(op.key), value=op.value, lease=op.lease))
        if op.kind == "delete":
            return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=_b(op.key)))
        return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=_b(op.key)))

    def list(self, prefix: str, *, revision: int = 0, page_size: int = 1000, keys_only: bool = False) -> Listing:
        """Read in pages, every page at the revision of the first, so the result is one snapshot."""
        items: list[KeyValue] = []
        start, end = _b(prefix), _b(prefix_end(prefix))
        while True:
            resp = self._call("kv", "Range", rpc_pb2.RangeRequest(
                key=start, range_end=end, limit=page_size, revision=revision, keys_only=keys_only,
                sort_order=rpc_pb2.RangeRequest.ASCEND, sort_target=rpc_pb2.RangeRequest.KEY))
            revision = revision or resp.header.revision
            items.extend(_kv(kv) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return Listing(items, revision)
            start = resp.kvs[-1].key + b"\0"

    def keys(self, prefix: str) -> list[str]:
        """The keys under prefix without their values (cheap existence checks)."""
        found, start, end = [], _b(prefix), _b(prefix_end(prefix))
        revision = 0
        while True:
            resp = self._call("kv", "Range", rpc_pb2.RangeRequest(
                key=start, range_end=end, limit=5000, revision=revision, keys_only=True))
            revision = revision or resp.header.revision
            found.extend(kv.key.decode() for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return found
            start = resp.kvs[-1].key + b"\0"

    def compact(self, revision: int) -> None:
        self._call("kv", "Compact", rpc_pb2.CompactionRequest(revision=revision, physical=True))

    # -- leases -----------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        return self._call("lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl)).ID

    def lease_keepalive(self, lease_id: int) -> int:
        def once(service, timeout):
            for resp in service.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)]), timeout=timeout):
                return max(resp.TTL, 0)
            return 0

        self.requests[("lease", "other")] += 1
        return self._attempts("lease", once)

    def lease_revoke(self, lease_id: int) -> None:
        try:
            self._call("lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease_id))
        except DatastoreUnavailable as err:
            if "not found" not in str(err):
                raise

    # -- watch ------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> EtcdWatch:
        return EtcdWatch(self, prefix, start_revision)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
                self._channel = None


class EtcdWatch(QueuedWatch):
    """Events under a prefix from a revision on, delivered through a queue.

    A thread keeps one gRPC watch stream open. When the stream breaks (etcd restarted,
    endpoint lost, the member lost its leader) it opens a new one, on the next member,
    from the revision after the last event it saw, so nothing is missed or repeated.
    When etcd has compacted that revision away, it re-lists the prefix and sends one
    "resync" event instead.

    A member that stops answering breaks nothing: the stream would just stay quiet. So
    a quiet stream asks for a progress report every _PROBE seconds, which etcd answers
    at once; a stream that heard nothing for _SILENT seconds is given up for the next member.
    """

    _RETRY_MAX = 2.0
    _PROBE = 1.0
    _SILENT = 3.0

    def __init__(self, kv: EtcdKV, prefix: str, start_revision: int):
        self._kv = kv
        self._prefix = prefix
        self.next_revision = start_revision
        self._events: queue.Queue[WatchEvent | None] = queue.Queue()
        self._stop = threading.Event()
        self._stream = None
        self._thread = threading.Thread(target=self._run, name=f"watch {prefix}", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        self._thread.join(timeout=5)
        self._events.put(None)

    def _run(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            try:
                if self._stream_once():
                    delay = 0.05
            except (grpc.RpcError, DatastoreUnavailable):
                pass
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._RETRY_MAX)

    def _requests(self, ended: threading.Event, heard: list[float], silent: threading.Event):
        yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=_b(self._prefix), range_end=_b(prefix_end(self._prefix)),
            start_revision=self.next_revision))
        # The stream stays open as long as this generator does not end; it ends with
        # the stream so that gRPC's request thread does not outlive it.
        while not (ended.wait(self._PROBE) or self._stop.is_set()):
            quiet = time.monotonic() - heard[0]
            if quiet > self._SILENT:
                silent.set()
                stream = self._stream
                if stream is not None:
                    stream.cancel()
                return
            if quiet > self._PROBE:
                yield rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())

    def _stream_once(self) -> bool:
        """Follow one stream until it ends; True if it delivered anything."""
        service, endpoint = self._kv._stub("watch")
        self._kv.requests[("watch", area(_b(self._prefix)))] += 1
        ended, silent, heard = threading.Event(), threading.Event(), [time.monotonic()]
        self._stream = service.Watch(self._requests(ended, heard, silent), metadata=_REQUIRE_LEADER)
        delivered = False
        try:
            for resp in self._stream:
                heard[0] = time.monotonic()
                if resp.compact_revision:
                    self._resync()
                    return True
                if resp.canceled:
                    if "leader" in resp.cancel_reason:
                        self._kv._failover(endpoint)
                    return delivered
                for ev in resp.events:
                    kind = "delete" if ev.type == kv_pb2.Event.DELETE else "put"
                    self._events.put(WatchEvent(kind, ev.kv.mod_revision, kv=_kv(ev.kv)))
                    self.next_revision = ev.kv.mod_revision + 1
                    delivered = True
        except grpc.RpcError as err:
            if not self._stop.is_set():  # our own cancel on close is no error
                self._kv.errors[err.code().name.lower()] += 1
            if silent.is_set() or err.code() in _FAILOVER - {grpc.StatusCode.CANCELLED}:
                self._kv._failover(endpoint)
            raise
        finally:
            ended.set()
            self._stream = None
        return delivered

    def _resync(self) -> None:
        listing = self._kv.list(self._prefix)
        self._events.put(WatchEvent("resync", listing.revision, items=listing.items))
        self.next_revision = listing.revision + 1


def wait_ready(kv: EtcdKV, timeout: float = 10.0) -> None:
    """Block until etcd answers, for start-up ordering in the agent and the lab."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            kv.revision()
            return
        except DatastoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
