"""Where the Kubernetes binaries come from: the pinned release, the cache directory the
build script names, and a loud error (with the command to run) when one is missing."""

from __future__ import annotations

import pytest

from routed.errors import RoutedError
from routed.lab import kubeplane


def test_release_is_the_one_pinned_in_tools_kube_go_mod():
    text = (kubeplane.REPO / "tools" / "kube" / "go.mod").read_text()
    assert f"k8s.io/kubernetes {kubeplane.release()}" in text and kubeplane.release().startswith("v1.")


def test_cache_dir_is_named_by_the_build_script(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTED_KUBE_CACHE", str(tmp_path / "kube"))
    assert kubeplane.bin_dir() == tmp_path / "kube"
    monkeypatch.delenv("ROUTED_KUBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kubeplane.bin_dir() == tmp_path / "routed" / f"kube-{kubeplane.release()}"


def test_missing_binary_names_the_build_script(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTED_KUBE_CACHE", str(tmp_path))
    with pytest.raises(RoutedError, match=r"kube-apiserver is not built: run scripts/build-kube.sh \(expected "):
        kubeplane.binary("kube-apiserver")
