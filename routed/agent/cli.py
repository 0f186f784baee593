"""`routed agent`: run the node agent in the foreground."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading

from routed.datastore.config import EtcdConfig
from routed.errors import RoutedError
from routed.k8s import api_source
from routed.runtime import logs
from routed.runtime.metrics import add_arguments as add_metrics_arguments


def parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for part in filter(None, (text or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise RoutedError(f"--node-labels: {part!r} is not KEY=VALUE")
        labels[key.strip()] = value.strip()
    return labels


def run(args) -> int:
    from .agent import Agent, AgentConfig

    logs.setup(args.log_level)
    if args.liveness_ttl < 3:
        raise RoutedError("--liveness-ttl must be at least 3 seconds")
    etcd = EtcdConfig.from_env(endpoints=args.etcd_endpoints)
    config = AgentConfig(
        liveness_ttl=args.liveness_ttl,
        node_name=args.node_name, etcd=etcd, node_ip=args.node_ip, node_ip6=args.node_ip6, node_labels=parse_labels(args.node_labels),
        netns=args.netns or None, cni_socket=args.cni_socket, spool_dir=args.spool_dir, state_dir=args.state_dir,
        health_host=args.health_host, health_port=args.health_port, metrics_host=args.metrics_host,
        metrics_port=args.metrics_port, block_grace=args.block_grace,
        bgp=args.bgp, policy=args.policy, bgp_dir=args.bgp_dir, bgp_socket=args.bgp_socket, secrets_dir=args.secrets_dir,
        cni_workers=args.cni_workers, cni_read_timeout=args.cni_read_timeout, stuck_after=args.stuck_after,
        cleanup_on_stop=args.cleanup_on_stop, cni_conf_dir=args.cni_conf_dir, cni_bin_dir=args.cni_bin_dir,
        mtu=args.mtu, resync=args.resync,
        kube=api_source(args.kube_server, args.kubeconfig))
    agent = Agent(config)
    agent.start()
    terminated = threading.Event()

    def terminate(*_):
        terminated.set()
        agent.stop_event.set()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    agent.stop_event.wait()
    if agent.leaving.is_set():  # uninstalled: exiting now would restart it
        terminated.wait()
    agent.stop()
    if agent.fatal:
        raise RoutedError(agent.fatal)
    return 0


def register(sub) -> None:
    env = os.environ.get
    p = sub.add_parser("agent", help="run the node agent")
    p.add_argument("--node-name", default=env("ROUTED_NODE_NAME") or socket.gethostname())
    p.add_argument("--node-ip", default=env("ROUTED_NODE_IP"), help="IPv4 address/prefix (default: autodetect)")
    p.add_argument("--node-ip6", default=env("ROUTED_NODE_IP6"),
                   help="IPv6 address/prefix (dual stack); 'none': IPv4 only (default: the Kubernetes Node's "
                        "IPv6 InternalIP, else the address on the IPv6 default route's interface, else none)")
    p.add_argument("--node-labels", default=env("ROUTED_NODE_LABELS", ""), help="k=v,k2=v2")
    p.add_argument("--netns", default=env("ROUTED_NETNS"), help="network namespace playing this node's host")
    p.add_argument("--cni-socket", default=env("ROUTED_CNI_SOCKET", "/var/run/routed/cni.sock"))
    p.add_argument("--spool-dir", default=env("ROUTED_SPOOL_DIR", "/var/lib/routed/cni-spool"))
    p.add_argument("--state-dir", default=env("ROUTED_STATE_DIR", "/var/lib/routed"))
    p.add_argument("--health-host", default="127.0.0.1")
    p.add_argument("--health-port", type=int, default=int(env("ROUTED_HEALTH_PORT", "9099")))
    add_metrics_arguments(p, env)
    p.add_argument("--mtu", type=int, default=int(env("ROUTED_MTU", "0") or 0),
                   help="pod MTU; 0 (default): the uplink's MTU less the pools' encapsulation overhead")
    p.add_argument("--resync", type=float, default=30.0,
                   help="seconds between full reconciles (routes, BGP peers, MTU, labels)")
    p.add_argument("--liveness-ttl", type=int, default=int(env("ROUTED_LIVENESS_TTL", "30")), metavar="SECONDS",
                   help="TTL of this node's liveness lease in etcd (the controller keeps live nodes)")
    p.add_argument("--block-grace", type=float, default=300.0, help="seconds an empty block is kept")
    p.add_argument("--bgp", action=argparse.BooleanOptionalAction,
                   default=env("ROUTED_BGP", "true").lower() == "true", help="run the BGP controller")
    p.add_argument("--policy", action=argparse.BooleanOptionalAction,
                   default=env("ROUTED_POLICY", "true").lower() == "true",
                   help="enforce network policy in this node's nftables table")
    p.add_argument("--bgp-dir", default=env("ROUTED_BGP_DIR", "/var/run/routed/bgp"),
                   help="where the ExaBGP configuration is written for the bgp-speaker")
    p.add_argument("--bgp-socket", default=env("ROUTED_BGP_SOCKET", "/var/run/routed/bgp.sock"))
    p.add_argument("--secrets-dir", default=env("ROUTED_SECRETS_DIR", "/etc/routed/secrets"),
                   help="mounted secrets, <name>/<key>, for BGP passwords")
    p.add_argument("--cni-workers", type=int, default=16, help="CNI requests served at once")
    p.add_argument("--cni-read-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long a CNI client may take to send its request")
    p.add_argument("--stuck-after", type=float, default=150.0, metavar="SECONDS",
                   help="/healthz fails when a CNI request or a controller pass is this late")
    p.add_argument("--cleanup-on-stop", action="store_true",
                   default=env("ROUTED_CLEANUP_ON_STOP", "false").lower() == "true",
                   help="remove block routes and natOutgoing rules when stopping (taking routed off the node); "
                        "pods' own interfaces and routes always stay")
    p.add_argument("--cni-conf-dir", default=env("ROUTED_CNI_CONF_DIR", "/etc/cni/net.d"),
                   help="where install-cni wrote the conflist (removed when routed is uninstalled)")
    p.add_argument("--cni-bin-dir", default=env("ROUTED_CNI_BIN_DIR", "/opt/cni/bin"),
                   help="where install-cni put the plugin (removed when routed is uninstalled)")
    p.add_argument("--etcd-endpoints", default=None)
    p.add_argument("--kube-server", default=None, metavar="URL",
                   help="Kubernetes API without credentials (tests, kubectl proxy); default: in-cluster "
                        "when KUBERNETES_SERVICE_HOST is set, else no Kubernetes")
    p.add_argument("--kubeconfig", default=None, metavar="FILE", help="Kubernetes API from a kubeconfig")
    logs.add_argument(p, env("ROUTED_LOG_LEVEL", "info"))
    p.set_defaults(func=run)
