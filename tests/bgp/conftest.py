"""Fixtures of the BGP tests."""

from __future__ import annotations

import pytest

from tests.support.cluster import Cluster


@pytest.fixture
def cluster(tmp_path, etcd, root):
    """A cluster of node namespaces for one test (real etcd, agents, ExaBGP), removed after it."""
    c = Cluster(tmp_path, etcd)
    try:
        yield c
    finally:
        c.close()
