"""Kubernetes glue: the API client wrapper (client.py) and the agent's pod cache (podinfo.py).

Only the agent and the controller import the submodules: `import kubernetes` costs
~300 ms, which the CNI shim never pays (it forwards to the agent and imports nothing).
This package module itself imports nothing heavy, so the errors below can be used
anywhere (cni.plugin maps them to CNI error codes).
"""

from __future__ import annotations

import os

from routed.errors import RoutedError


class KubeError(RoutedError):
    """The Kubernetes API refused a request or could not be reached."""


class Gone(KubeError):
    """410 Gone: the resourceVersion a watch wanted is too old; list again."""


class AnnotationError(RoutedError):
    """A pod's or namespace's routed.io/* annotation does not parse: that pod's ADD fails."""


class PodNotKnown(RoutedError):
    """The pod is not (yet) in the agent's cache: the runtime should try again."""


def api_source(server: str | None, kubeconfig: str | None, environ=None) -> dict | None:
    """Where the Kubernetes API is, from --kube-server / --kubeconfig, else in-cluster when
    KUBERNETES_SERVICE_HOST is set (a pod), else None: run without Kubernetes."""
    environ = os.environ if environ is None else environ
    if server and kubeconfig:
        raise RoutedError("give --kube-server or --kubeconfig, not both")
    if server:
        return {"server": server}
    if kubeconfig:
        return {"kubeconfig": kubeconfig}
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return {"in_cluster": True}
    return None


__all__ = ["KubeError", "Gone", "AnnotationError", "PodNotKnown", "api_source"]
