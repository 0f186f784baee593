"""routed.runtime.metrics: collectors read at scrape time, over prometheus_client (pure)."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from routed.errors import RoutedError
from routed.runtime.metrics import Family, Metrics, Server, etcd_families


def parsed(metrics: Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(metrics.render())}


def test_a_labelled_counter_is_a_counter_and_a_family_must_be_named_for_its_kind():
    metrics = Metrics()
    metrics.collectors.append(lambda: [Family("routed_things_total", "counter", "Things.", [({"kind": "a"}, 3)])])
    got = parsed(metrics)
    assert got["routed_things"].type == "counter"
    assert [(s.name, s.labels, s.value) for s in got["routed_things"].samples] == \
        [("routed_things_total", {"kind": "a"}, 3.0)]
    with pytest.raises(ValueError, match="must be named"):
        Family("routed_things", "counter", "x", [])
    with pytest.raises(ValueError, match="histogram"):
        Family("routed_things", "histogram", "x", [])


def test_values_are_read_at_each_scrape_and_a_failing_collector_leaves_out_only_its_own():
    metrics, depth = Metrics(), [1]
    metrics.gauge("routed_depth", "Depth.", lambda: depth[0])
    metrics.gauge("routed_broken", "Cannot be read.", lambda: 1 / 0)
    assert parsed(metrics)["routed_depth"].samples[0].value == 1
    depth[0] = 7
    got = parsed(metrics)
    assert got["routed_depth"].samples[0].value == 7
    assert "routed_broken" not in got


def test_no_created_series():
    metrics = Metrics()
    metrics.counter("routed_x_total", "X.", lambda: 1)
    assert "_created" not in metrics.render()


def test_etcd_requests_and_errors_by_label():
    class KV:
        requests = {("range", "ipam/blocks"): 4}
        errors = {"unavailable": 2}

    families = {f.name: f for f in etcd_families(KV())}
    assert families["routed_etcd_requests_total"].samples == [({"op": "range", "keys": "ipam/blocks"}, 4)]
    assert families["routed_etcd_request_errors_total"].samples == [({"code": "unavailable"}, 2)]


def test_the_metrics_listener_serves_the_registry_and_a_taken_port_is_one_clear_error():
    metrics = Metrics()
    metrics.gauge("routed_depth", "Depth.", lambda: 4)
    server = Server(metrics, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            assert "routed_depth 4.0" in resp.read().decode()
        with pytest.raises(RoutedError, match=rf"cannot serve /metrics on 127.0.0.1:{server.port} .*in use"):
            Server(metrics, "127.0.0.1", server.port)
    finally:
        server.stop()
