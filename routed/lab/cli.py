"""`routed lab up | down | status`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from routed import resources as r
from routed.cli.columns import resource_table
from routed.cli.render import format_table
from routed.datastore.etcd import EtcdKV
from routed.datastore.resources import ResourceStore

from . import etcd

DEFAULT_POOL = {
    "apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "default-ipv4-ippool"},
    "spec": {"cidr": "10.244.0.0/16", "blockSize": 26, "vxlanMode": "CrossSubnet", "natOutgoing": True},
}


def state_dir() -> Path:
    path = Path(os.environ.get("ROUTED_LAB_DIR", "/var/lib/routed-lab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def up(args) -> int:
    state = state_dir()
    pid = etcd.start(state)
    kv = EtcdKV([etcd.endpoint()])
    try:
        store = ResourceStore(kv)
        store.apply(r.parse(DEFAULT_POOL))
        print(f"etcd running (pid {pid}) at {etcd.endpoint()}, data in {state}")
        print(format_table(resource_table(r.IPPool, store.list(r.IPPool)), wide=True))
    finally:
        kv.close()
    print(f"\nTry: ROUTED_ETCD_ENDPOINTS={etcd.endpoint()} .venv/bin/routedctl get ippools -o yaml")
    print("Tear down: .venv/bin/routed lab down")
    return 0


def down(args) -> int:
    state = state_dir()
    etcd.stop(state)
    shutil.rmtree(state, ignore_errors=True)
    print("lab removed")
    return 0


def register(sub) -> None:
    lab = sub.add_parser("lab", help="a routed cluster on this machine, in network namespaces")
    verbs = lab.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("up", help="start the lab").set_defaults(func=up)
    verbs.add_parser("down", help="remove everything the lab created").set_defaults(func=down)
