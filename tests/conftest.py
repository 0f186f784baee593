"""Shared fixtures. Real components only: a missing dependency fails, never skips."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.etcd import ETCD, EtcdServer, make_tls


def _require(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"missing test dependency: {what} (run scripts/setup.sh)", pytrace=False)


@pytest.fixture
def etcd(tmp_path):
    """A fresh real etcd on loopback, killed by PID at the end (also on failure)."""
    _require(os.access(ETCD, os.X_OK), "etcd (Debian package etcd-server)")
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_tls(tmp_path):
    """A real etcd that requires mutual TLS."""
    _require(os.access(ETCD, os.X_OK), "etcd (Debian package etcd-server)")
    _require(shutil.which("openssl") is not None, "openssl")
    server = EtcdServer(tmp_path / "etcd", tls=make_tls(tmp_path / "pki"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kv(etcd):
    client = etcd.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def root():
    _require(os.geteuid() == 0, "root (network namespaces)")


@pytest.fixture
def pods():
    """make() -> a new namespace playing a pod; all removed at the end."""
    from tests.support.netns import Netns

    made = []

    def make():
        made.append(Netns("pod"))
        return made[-1]

    yield make
    for ns in made:
        ns.delete()
