"""routed's datastore: a small KV interface (kv), its etcd implementation (etcd),
the key layout (keys) and typed resource storage (resources)."""

from .config import EtcdConfig
from .kv import KV, Compare, KeyValue, Listing, Op, TxnResult, WatchEvent

__all__ = ["EtcdConfig", "KV", "Compare", "KeyValue", "Listing", "Op", "TxnResult", "WatchEvent"]
