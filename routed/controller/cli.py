"""`routed controller`: the GC controller in the foreground (the chart's Deployment)."""

from __future__ import annotations

import logging
import os
import signal
import threading

from routed.datastore.config import EtcdConfig
from routed.errors import RoutedError
from routed.k8s import api_source
from routed.runtime import logs
from routed.runtime.metrics import add_arguments as add_metrics_arguments


def run(args) -> int:
    from ipam.usage import snapshot
    from routed.datastore.resources import ResourceStore
    from routed.k8s.client import KubeClient
    from routed.runtime.health import HealthServer
    from routed.runtime.metrics import Metrics, Server, etcd_families

    from .gc import GarbageCollector
    from .leader import LeaderElector
    from .metrics import ipam_families
    from .policysync import PolicySync

    logs.setup(args.log_level)
    source = api_source(args.kube_server, args.kubeconfig)
    if args.grace < 0 or args.interval <= 0:
        raise RoutedError("--grace must be >= 0 and --interval > 0 seconds")
    kv = EtcdConfig.from_env(endpoints=args.etcd_endpoints).connect()
    stop = threading.Event()
    _check_schema(kv, stop)
    # Without Kubernetes only the nodes whose agents stopped are collected (by their
    # liveness leases): which pods exist, only the API knows.
    kube = KubeClient.connect(**source) if source is not None else None
    gc = GarbageCollector(kv, kube, grace=args.grace)

    def shutdown(*_):
        stop.set()
        gc.wake.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    elector = election = None
    if args.leader_election:
        elector = LeaderElector(kv, "controller", args.identity, args.lease_ttl,
                                on_started=gc.wake.set, on_stopped=gc.forget)
        election = threading.Thread(target=elector.run, args=(stop,), name="leader-election", daemon=True)
        election.start()

    def leading() -> bool:
        return elector is None or elector.leading.is_set()

    metrics = Metrics()
    metrics.gauge("routed_controller_leader", "1 while this replica leads (does the work), 0 on standby.",
                  lambda: int(leading()))
    for name, what in (("passes", "GC passes."), ("nodes", "Deleted nodes released."),
                       ("handles", "Deleted pods' handles released."), ("blocks", "Empty blocks deleted."),
                       ("errors", "GC passes skipped on an error.")):
        metrics.counter(f"routed_gc_{name}_total", what, lambda name=name: gc.stats[name])
    metrics.collectors.append(lambda: etcd_families(kv))
    # IPAM from the leader only: every replica reporting it would count it twice in a sum.
    metrics.collectors.append(lambda: ipam_families(snapshot(kv)) if leading() else [])

    policy = PolicySync(ResourceStore(kv), kube)
    policy_thread = threading.Thread(target=policy.run, args=(stop, args.policy_interval, leading),
                                     name="policy-sync", daemon=True)
    policy_thread.start()
    health = HealthServer(args.health_host, args.health_port,
                          lambda: (True, "leading" if leading() else "standby"), metrics.render)
    health.start()
    exposed = Server(metrics, args.metrics_host, args.metrics_port) if args.metrics_port else None
    logging.getLogger("routed.controller").info(
        "controller started: grace %gs, every %gs, %s, %s", args.grace, args.interval,
        f"leader election as {elector.identity}" if elector else "no leader election",
        "with Kubernetes" if kube is not None else "without Kubernetes: nodes by liveness only, pods not collected")
    try:
        gc.run(stop, args.interval, leading)
    finally:
        stop.set()
        health.stop()
        if exposed is not None:
            exposed.stop()
        if election is not None:
            election.join(timeout=10)  # it revokes the lease as it stops: a standby takes over now
        kv.close()
    return 0


def _check_schema(kv, stop: threading.Event) -> None:
    """Refuse a datastore layout we do not know (SchemaMismatch); wait while etcd is away."""
    from routed.datastore import schema
    from routed.errors import DatastoreUnavailable

    delay = 0.5
    while True:
        try:
            schema.ensure(kv, write=True)
            return
        except DatastoreUnavailable as err:
            logging.getLogger("routed.controller").warning("waiting for etcd: %s", err)
            if stop.wait(delay):
                raise
            delay = min(delay * 2, 10.0)
        except BaseException:
            kv.close()
            raise


def register(sub) -> None:
    env = os.environ.get
    p = sub.add_parser("controller", help="run the GC controller: addresses and blocks of deleted nodes and pods")
    p.add_argument("--leader-election", action="store_true",
                   help="work only while holding the etcd leader lease (for several replicas)")
    p.add_argument("--kube-server", default=None, metavar="URL",
                   help="Kubernetes API without credentials (tests, kubectl proxy); default: in-cluster "
                        "when KUBERNETES_SERVICE_HOST is set, else no Kubernetes (nodes by liveness only)")
    p.add_argument("--kubeconfig", default=None, metavar="FILE", help="Kubernetes API from a kubeconfig")
    p.add_argument("--grace", type=float, default=300.0, metavar="SECONDS",
                   help="how long a pod or node must stay missing before its addresses are released")
    p.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between GC passes")
    p.add_argument("--policy-interval", type=float, default=2.0, metavar="SECONDS",
                   help="seconds between syncs of Namespaces and NetworkPolicies into etcd")
    p.add_argument("--lease-ttl", type=int, default=15, metavar="SECONDS", help="leader lease TTL")
    p.add_argument("--identity", default=None, help="this replica's name in the election (default: $POD_NAME)")
    p.add_argument("--health-host", default="127.0.0.1")
    p.add_argument("--health-port", type=int, default=int(env("ROUTED_CONTROLLER_HEALTH_PORT", "9098")))
    add_metrics_arguments(p, env)
    p.add_argument("--etcd-endpoints", default=None)
    logs.add_argument(p, env("ROUTED_LOG_LEVEL", "info"))
    p.set_defaults(func=run)
