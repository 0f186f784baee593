"""Shared fixtures. Real components only: a missing dependency fails, never skips."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.etcd import ETCD, EtcdServer, free_port, make_tls


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
def browser():
    """Real headless Chromium (scripts/setup.sh installs Debian's chromium-headless-shell)."""
    from tests.support.browser import Browser, chromium

    binary = chromium()
    _require(binary is not None, "Chromium (Debian package chromium-headless-shell)")
    return Browser(binary)


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


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory):
    """A real kube-apiserver (scripts/build-kube.sh builds it) on its own etcd, for the
    whole session as envtest runs one; stopped by PID at the end, also on failure."""
    from routed.errors import RoutedError
    from routed.lab import kubeplane
    from tests.support.kubeapi import KubeAPI

    _require(os.access(ETCD, os.X_OK), "etcd (Debian package etcd-server)")
    _require(shutil.which("openssl") is not None, "openssl")
    try:
        kubeplane.binary("kube-apiserver")
    except RoutedError as err:
        pytest.fail(f"missing test dependency: {err}", pytrace=False)
    workdir = tmp_path_factory.mktemp("kube-api")
    etcd = EtcdServer(workdir / "etcd").start()
    server = kubeplane.APIServer(workdir / "apiserver", etcd.url, free_port())
    try:
        server.start()
        yield KubeAPI(server, etcd)
    finally:
        server.stop()
        etcd.stop()


@pytest.fixture
def kube(kube_api):
    """The real API server's objects for one test; what the test created is deleted after it."""
    from tests.support.kubeapi import KubeObjects

    objects = KubeObjects(kube_api)
    try:
        yield objects
    finally:
        objects.cleanup()
