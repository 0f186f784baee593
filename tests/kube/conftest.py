"""The Kubernetes lane: one small cluster of real kubelets (network namespaces on this
machine, containerd in each) for the whole module, always torn down."""

from __future__ import annotations

import os
import secrets
import shutil

import pytest

from routed.errors import RoutedError
from routed.lab import kubeplane
from routed.lab.kubecluster import KubeCluster


@pytest.fixture(scope="module")
def kube_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the Kubernetes lane needs root (network and mount namespaces)", pytrace=False)
    for tool in ("containerd", "ctr", "runc", "socat", "etcd", "openssl"):
        if not shutil.which(tool):
            pytest.fail(f"missing test dependency: {tool} (run scripts/setup.sh)", pytrace=False)
    try:
        for name in ("kube-apiserver", "kubelet", "kube-scheduler", "kube-controller-manager", "kubectl",
                     "crictl", "pause"):
            kubeplane.binary(name)
    except RoutedError as err:
        pytest.fail(f"missing test dependency: {err}", pytrace=False)
    # "rk" + random: never a lab's (rl-) or another test's (rt-) namespace.
    cluster = KubeCluster(tmp_path_factory.mktemp("kc"), prefix=f"rk{secrets.token_hex(2)}-", nodes=2)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
