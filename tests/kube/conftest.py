"""The Kubernetes lane: one cluster of real kubelets (network namespaces on this machine,
containerd in each) with routed installed by Helm, made by `routed lab up --kubernetes`
exactly as a user makes it, for the whole lane; `routed lab down` removes it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from routed.errors import RoutedError
from routed.lab import kubeplane
from routed.lab.kubecluster import KubeCluster

ROUTED = str(Path(sys.executable).with_name("routed"))


@pytest.fixture(scope="session")
def kube_lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the Kubernetes lane needs root (network and mount namespaces)", pytrace=False)
    for tool in ("containerd", "ctr", "runc", "socat", "etcd", "openssl"):
        if not shutil.which(tool):
            pytest.fail(f"missing test dependency: {tool} (run scripts/setup.sh)", pytrace=False)
    try:
        for name in ("kube-apiserver", "kubelet", "kube-scheduler", "kube-controller-manager", "kubectl",
                     "crictl"):
            kubeplane.binary(name)
    except RoutedError as err:
        pytest.fail(f"missing test dependency: {err}", pytrace=False)
    directory = tmp_path_factory.mktemp("klab")
    # rl-kt<hex>-: never the default lab's (rl-) namespaces, nor the tests' (rt-)
    env = {**os.environ, "ROUTED_LAB_DIR": str(directory), "ROUTED_LAB_PREFIX": f"rl-kt{secrets.token_hex(2)}-"}
    try:
        up = subprocess.run([ROUTED, "lab", "up", "--kubernetes"], env=env, capture_output=True, text=True,
                            timeout=1800)
        if up.returncode != 0:
            pytest.fail(f"routed lab up --kubernetes failed ({up.returncode}):\n{up.stderr[-4000:]}", pytrace=False)
        cluster = KubeCluster(directory / "kubernetes")
        cluster.load()
        yield type("KubeLab", (), {"cluster": cluster, "stdout": up.stdout, "env": env, "dir": directory})
    finally:
        down = subprocess.run([ROUTED, "lab", "down"], env=env, capture_output=True, text=True, timeout=600)
        assert down.returncode == 0, down.stderr


@pytest.fixture
def kube_cluster(kube_lab):
    return kube_lab.cluster
