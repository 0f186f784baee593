"""The agent's Prometheus metrics, kept by hand: a few counters and one histogram.

Counters are counters: TYPE counter, named *_total, read from a count that only grows
(a gauge is anything else). counter() and gauge() take one number; labelled metrics
come from collectors (a list of Family each).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class Family:
    """One labelled metric, as a collector reports it."""

    name: str
    kind: str  # "gauge" | "counter"
    help: str
    samples: list[tuple[dict[str, str], float]]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._cni = defaultdict(int)  # (command, result) -> count
        self._hist = defaultdict(lambda: [0] * (len(BUCKETS) + 1))  # command -> bucket counts (+Inf last)
        self._sum = defaultdict(float)
        self._values: dict[str, tuple[str, str, Callable[[], float]]] = {}  # name -> (kind, help, value)
        self.collectors: list[Callable[[], list[Family]]] = []  # labelled metrics of a component

    def counter(self, name: str, help: str, value: Callable[[], float]) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must be named *_total")
        self._values[name] = ("counter", help, value)

    def gauge(self, name: str, help: str, value: Callable[[], float]) -> None:
        if name.endswith("_total"):
            raise ValueError(f"gauge {name} must not be named *_total (that is a counter)")
        self._values[name] = ("gauge", help, value)

    def observe_cni(self, command: str, code: int, seconds: float) -> None:
        with self._lock:
            self._cni[(command, "ok" if code == 0 else "error")] += 1
            counts = self._hist[command]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self._sum[command] += seconds

    def render(self) -> str:
        lines = ["# HELP routed_cni_requests_total CNI requests served, by command and result.",
                 "# TYPE routed_cni_requests_total counter"]
        with self._lock:
            for (command, result), n in sorted(self._cni.items()):
                lines.append(f'routed_cni_requests_total{{command="{command}",result="{result}"}} {n}')
            lines += ["# HELP routed_cni_request_seconds Time to serve a CNI request.",
                      "# TYPE routed_cni_request_seconds histogram"]
            for command, counts in sorted(self._hist.items()):
                for bound, n in zip((*BUCKETS, "+Inf"), counts):
                    lines.append(f'routed_cni_request_seconds_bucket{{command="{command}",le="{bound}"}} {n}')
                lines.append(f'routed_cni_request_seconds_sum{{command="{command}"}} {self._sum[command]:.6f}')
                lines.append(f'routed_cni_request_seconds_count{{command="{command}"}} {counts[-1]}')
        for name, (kind, help, fn) in sorted(self._values.items()):
            try:
                value = fn()
            except Exception:  # a value that cannot be read is left out, not fatal
                continue
            lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {value}"]
        for collect in self.collectors:
            try:
                families = collect()
            except Exception:
                continue
            for family in families:
                lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
                lines += [f"{family.name}{_labels(labels)} {value}" for labels, value in family.samples]
        return "\n".join(lines) + "\n"
