"""A program's Prometheus metrics (agent, controller), on the standard client library.

Values the program keeps anyway (counts, the BGP session table, IPAM in etcd, files in
the spool) are read when Prometheus scrapes, by collectors: nothing updates gauges in
the background. Only what happens once and is gone (a CNI request's latency) is
recorded as it happens, in a prometheus_client instrument.

Adding a metric: an unlabelled number, metrics.gauge() or metrics.counter(); labelled
ones, a function returning Family objects, metrics.collectors.append(fn); an event, a
prometheus_client instrument made with registry=metrics.registry. Counters are counters:
TYPE counter, named *_total, and nothing else is (checked when declared).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from routed.errors import RoutedError

# `*_created` series (a timestamp per counter and histogram) only double what a scrape
# already shows through resets; Calico's and most exporters' scrapes do not have them.
prometheus_client.disable_created_metrics()

# Seconds: a CNI request takes milliseconds when all is well, up to the shim's 120 s when not.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

log = logging.getLogger("routed.metrics")


def check_name(name: str, kind: str) -> None:
    if kind == "counter" and not name.endswith("_total"):
        raise ValueError(f"counter {name} must be named *_total")
    if kind == "gauge" and name.endswith("_total"):
        raise ValueError(f"gauge {name} must not be named *_total (that is a counter)")
    if kind not in ("counter", "gauge"):
        raise ValueError(f"{name}: a collector reports gauges and counters, not {kind}")


@dataclass(frozen=True)
class Family:
    """One labelled metric, as a collector reports it at scrape time."""

    name: str
    kind: str  # "gauge" | "counter"
    help: str
    samples: list[tuple[dict[str, str], float]]

    def __post_init__(self):
        check_name(self.name, self.kind)

    def prometheus(self):
        family = (CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily)(self.name, self.help)
        for labels, value in self.samples:
            family.add_sample(self.name, {k: str(v) for k, v in labels.items()}, value)
        return family


Collect = Callable[[], Iterable[Family]]


class Metrics:
    """One program's registry: collectors read at scrape time, and instruments."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        self.collectors: list[Collect] = []  # append a function returning Family objects
        self.registry.register(_Collectors(self.collectors))

    def counter(self, name: str, help: str, value: Callable[[], float]) -> None:
        self._number(name, "counter", help, value)

    def gauge(self, name: str, help: str, value: Callable[[], float]) -> None:
        self._number(name, "gauge", help, value)

    def _number(self, name: str, kind: str, help: str, value: Callable[[], float]) -> None:
        check_name(name, kind)
        self.collectors.append(lambda: [Family(name, kind, help, [({}, value())])])

    def render(self) -> str:
        return generate_latest(self.registry).decode()


class _Collectors:
    """The collectors as prometheus_client sees one: collect() at every scrape."""

    def __init__(self, collectors: list[Collect]):
        self.collectors = collectors

    def collect(self):
        for collect in list(self.collectors):
            try:
                families = list(collect())
            except Exception as err:  # a value that cannot be read leaves out its families, not the scrape
                log.debug("metrics collector %s failed: %s", getattr(collect, "__qualname__", collect), err)
                continue
            for family in families:
                yield family.prometheus()


def add_arguments(parser: argparse.ArgumentParser, env) -> None:
    """--metrics-host/--metrics-port of a program (agent, controller); env: os.environ.get."""
    parser.add_argument("--metrics-host", default=env("ROUTED_METRICS_HOST", "0.0.0.0"),
                        help="address /metrics is served on for Prometheus (with --metrics-port)")
    parser.add_argument("--metrics-port", type=int, default=int(env("ROUTED_METRICS_PORT", "0") or 0),
                        help="port of a listener serving /metrics alone; 0 (default): none (the health "
                             "port on the loopback serves /metrics too)")


class Server:
    """/metrics alone on its own address, for a Prometheus elsewhere in the cluster. The
    health port stays on the loopback: it also answers /bgp/peers, /node, ... which are
    for the node's own tools (routedctl), not for the network."""

    def __init__(self, metrics: Metrics, host: str, port: int):
        try:
            self._server, _ = prometheus_client.start_http_server(port, host, registry=metrics.registry)
        except OSError as err:
            raise RoutedError(f"cannot serve /metrics on {host}:{port} (--metrics-host, --metrics-port): "
                              f"{err.strerror or err}") from None
        self.port = self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def etcd_families(kv) -> list[Family]:
    """What an etcd client (routed.datastore.etcd.EtcdKV) sent, and the errors it met."""
    requests, errors = dict(getattr(kv, "requests", {})), dict(getattr(kv, "errors", {}))
    return [Family("routed_etcd_requests_total", "counter", "Requests sent to etcd, by operation and the part of "
                   "the key layout they address.",
                   [({"op": op, "keys": where}, n) for (op, where), n in sorted(requests.items())]),
            Family("routed_etcd_request_errors_total", "counter", "etcd requests that failed, by gRPC status "
                   "(unavailable, deadline_exceeded, ...); a failed attempt that another member answered counts too.",
                   [({"code": code}, n) for code, n in sorted(errors.items())])]
