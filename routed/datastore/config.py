"""Where etcd is and how to reach it, from the environment (or flags that mirror it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from routed.errors import RoutedError

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: list[str]
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls, environ=os.environ, endpoints: str | None = None) -> EtcdConfig:
        """From ROUTED_ETCD_*; endpoints (a --etcd-endpoints flag) overrides only the URLs,
        never the TLS files."""
        raw = endpoints or environ.get("ROUTED_ETCD_ENDPOINTS") or DEFAULT_ENDPOINTS
        return cls.parse(raw, environ.get("ROUTED_ETCD_CA"), environ.get("ROUTED_ETCD_CERT"),
                         environ.get("ROUTED_ETCD_KEY"))

    @classmethod
    def parse(cls, endpoints: str, ca=None, cert=None, key=None) -> EtcdConfig:
        urls = [e.strip() for e in endpoints.split(",") if e.strip()]
        if not urls:
            raise RoutedError("ROUTED_ETCD_ENDPOINTS is empty")
        for url in urls:
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
                raise RoutedError(f"invalid etcd endpoint {url!r}: expected http(s)://HOST:PORT")
        if bool(cert) != bool(key):
            raise RoutedError("ROUTED_ETCD_CERT and ROUTED_ETCD_KEY must be given together")
        if (ca or cert) and not all(u.startswith("https://") for u in urls):
            raise RoutedError("etcd TLS files are set but an endpoint is not https://")
        return cls(urls, ca or None, cert or None, key or None)

    def connect(self, timeout: float = 5.0):
        from .etcd import EtcdKV

        return EtcdKV(self.endpoints, ca=_read(self.ca, "ROUTED_ETCD_CA"),
                      cert=_read(self.cert, "ROUTED_ETCD_CERT"), key=_read(self.key, "ROUTED_ETCD_KEY"),
                      timeout=timeout)


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise RoutedError(f"cannot read {what} {path}: {err.strerror}") from None
