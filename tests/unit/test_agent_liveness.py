"""The agent's liveness bookkeeping, per-key locks, metrics naming and spool names (pure)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from routed.agent.liveness import Heartbeats, InFlight, verdict
from routed.agent.locks import KeyedLocks
from routed.runtime.metrics import Metrics
from routed.agent.spool import _spooled_at


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_controller_that_stops_beating_is_named_once_late_by_more_than_grace():
    clock = Clock()
    beats = Heartbeats(grace=5, clock=clock)
    beats.register("block-routes", 30)
    beats.register("releases", 5)
    clock.now += 9
    beats.beat("releases")
    clock.now += 9  # releases: 9s since its beat (5 + 5 allowed); block-routes: 18s (30 + 5)
    assert beats.stale() == []
    clock.now += 2
    assert beats.stale() == ["controller releases has not run for 11s (expected every 5s)"]
    beats.forget("releases")  # returned because the agent stops: not dead
    assert beats.stale() == []


def test_a_request_in_flight_past_the_limit_is_stuck_until_it_ends():
    clock = Clock()
    flight = InFlight(clock)
    with flight.track("CNI ADD for container c1"):
        clock.now += 3
        assert flight.stuck(5) == [] and flight.count() == 1
        clock.now += 3
        assert flight.stuck(5) == ["CNI ADD for container c1 running for 6s"]
    assert flight.stuck(5) == [] and flight.count() == 0
    assert verdict([]) == (True, "ok")
    assert verdict(["a", "b"]) == (False, "a; b")


def test_keyed_locks_serialise_one_key_and_let_others_through():
    locks = KeyedLocks()
    inside, release = threading.Event(), threading.Event()
    order = []

    def holder():
        with locks.hold("c1"):
            inside.set()
            release.wait(10)
            order.append("first")

    def waiter():
        with locks.hold("c1"):
            order.append("second")

    first = threading.Thread(target=holder)
    first.start()
    inside.wait(10)
    second = threading.Thread(target=waiter)
    second.start()
    with locks.hold("c2"):  # another key is not held up
        order.append("other")
    release.set()
    first.join(10)
    second.join(10)
    assert order == ["other", "first", "second"]
    assert len(locks) == 0  # nothing kept for keys nobody holds


def test_counters_are_named_total_and_gauges_are_not():
    metrics = Metrics()
    with pytest.raises(ValueError):
        metrics.counter("routed_things", "x", lambda: 1)
    with pytest.raises(ValueError):
        metrics.gauge("routed_things_total", "x", lambda: 1)
    metrics.counter("routed_errors_total", "Errors.", lambda: 2)
    assert "# TYPE routed_errors_total counter\nrouted_errors_total 2.0\n" in metrics.render()


@pytest.mark.parametrize("name, at", [("abc-eth0-1700000000000000000.req", 1700000000000000000),
                                      ("a-b-c-net-1-42.req", 42), ("garbage.req", 0), ("x-eth0-.req", 0)])
def test_the_spool_time_is_the_last_part_of_the_name(name, at):
    assert _spooled_at(Path(name)) == at
