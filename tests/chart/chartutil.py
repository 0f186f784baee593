"""Helpers for the chart tests: lint and render through helm-python-sdk (Helm 4's Go
code, no helm binary), validate with kubernetes-validate's Kubernetes 1.32 schemas.

Both packages are test dependencies: when one is missing every test that needs it
FAILS with the pip command to run, it never skips.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "routed"
KUBE_VERSION = "1.32.0"
RELEASE = "routed"
NAMESPACE = "kube-system"

# The versions these tests were written against (the lead pins them in pyproject).
HELM_SDK = "helm-python-sdk==0.2.2"
KUBE_VALIDATE = "kubernetes-validate==1.37.0"

try:
    import helm_python
except ImportError as err:  # pragma: no cover - the failure path
    helm_python = None
    _HELM_IMPORT_ERROR = err
try:
    from kubernetes_validate import utils as kv_utils
except ImportError as err:  # pragma: no cover
    kv_utils = None
    _KV_IMPORT_ERROR = err


def require_helm():
    if helm_python is None:
        pytest.fail(f"helm-python-sdk is not installed ({_HELM_IMPORT_ERROR}): "
                    f".venv/bin/pip install {HELM_SDK}", pytrace=False)
    return helm_python


def require_kubernetes_validate():
    if kv_utils is None:
        pytest.fail(f"kubernetes-validate is not installed ({_KV_IMPORT_ERROR}): "
                    f".venv/bin/pip install {KUBE_VALIDATE}", pytrace=False)
    return kv_utils


# --- rendering ------------------------------------------------------------------------


@dataclass
class Rendered:
    """One `helm template` of the chart: the files and the manifests in them."""

    files: dict[str, str]  # template path -> text
    docs: list[dict] = field(default_factory=list)

    @property
    def notes(self) -> str:
        return next(text for name, text in self.files.items() if name.endswith("NOTES.txt"))

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def config(self) -> dict[str, str]:
        """The environment ConfigMap every etcd client reads."""
        return self.get("ConfigMap", f"{RELEASE}-config")["data"]

    def resources_yaml(self) -> str:
        """What the hook job hands to `routedctl apply -f`."""
        return self.get("ConfigMap", f"{RELEASE}-resources")["data"]["resources.yaml"]

    def daemonset(self) -> dict:
        return self.get("DaemonSet", RELEASE)

    def container(self, workload: dict, name: str, init: bool = False) -> dict:
        spec = workload["spec"]["template"]["spec"]
        found = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
        assert len(found) == 1, f"no container {name} in {workload['kind']} {workload['metadata']['name']}"
        return found[0]


def merge(base: dict, override: dict) -> dict:
    """Values the way `-f` files combine: maps merge key by key, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@functools.lru_cache(maxsize=1)
def chart():
    return require_helm().Chart.load(str(CHART))


@functools.lru_cache(maxsize=None)
def _render(values_json: str) -> Rendered:
    files = chart().render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = [doc for name, text in sorted(files.items()) if name.endswith((".yaml", ".yml"))
            for doc in yaml.safe_load_all(text) if doc]
    return Rendered(files, docs)


def render(values: dict | None = None) -> Rendered:
    """Rendered once per distinct set of values, however many tests ask."""
    return _render(json.dumps(values or {}, sort_keys=True))


def render_error(values: dict) -> str:
    """The error `helm install` would stop with for these values (schema or template)."""
    helm = require_helm()
    try:
        chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as err:
        return str(err)
    raise AssertionError(f"the chart accepted bad values: {values}")


def lint(values: dict | None = None) -> dict:
    return require_helm().lint(str(CHART), values or None, strict=True, namespace=NAMESPACE,
                               kube_version=f"v{KUBE_VERSION}")


# --- validation -----------------------------------------------------------------------


# The custom resources the chart may render (Prometheus Operator's, monitoring.coreos.com/v1).
# kubernetes-validate knows only Kubernetes' own kinds, so these are checked against the
# part of their CRD schema the chart writes, strictly (an unknown or misspelt field is a
# problem, as --strict makes it for the others); tests/chart also checks what they select.
_DURATION = {"type": "string",
             "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": _STRINGS,
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["key", "operator"],
        "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                       "values": {"type": "array", "items": {"type": "string"}}}}}}}
_ENDPOINT = {"type": "object", "additionalProperties": False, "required": ["port"], "properties": {
    "port": {"type": "string"}, "path": {"type": "string"}, "interval": _DURATION, "scrapeTimeout": _DURATION}}


def _monitor(endpoints: str) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"type": "string"},
                "metadata": {"type": "object", "required": ["name", "namespace"], "properties": {
                    "name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRINGS}},
                "spec": {"type": "object", "additionalProperties": False, "required": ["selector", endpoints],
                         "properties": {
                             "selector": _SELECTOR,
                             "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                                 "any": {"type": "boolean"},
                                 "matchNames": {"type": "array", "items": {"type": "string"}}}},
                             endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT}}}}}


CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): _monitor("endpoints"),
               ("monitoring.coreos.com/v1", "PodMonitor"): _monitor("podMetricsEndpoints")}


def _crd_problems(doc: dict, what: str) -> list[str]:
    import jsonschema  # kubernetes-validate's own dependency

    schema = CRD_SCHEMAS[(doc.get("apiVersion"), doc.get("kind"))]
    return [f"{what}: {'.'.join(map(str, err.path))}: {err.message}"
            for err in jsonschema.Draft7Validator(schema).iter_errors(doc)]


def validation_errors(docs: list[dict]) -> list[str]:
    """kubernetes-validate --strict against Kubernetes 1.32, as a list of problems.
    A kind without a schema is a problem here (the CLI would only warn), except the
    custom resources of CRD_SCHEMAS, checked against those."""
    kv = require_kubernetes_validate()
    problems = []
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in CRD_SCHEMAS:
            problems += _crd_problems(doc, what)
            continue
        try:
            kv.validate(doc, KUBE_VERSION, strict=True)
        except kv.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            problems.append(f"{what}: {path}: {err.message}")
        except kv.SchemaNotFoundError as err:
            problems.append(f"{what}: {err.message}")
    return problems


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def argv(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volumes(workload: dict) -> dict[str, dict]:
    return {v["name"]: v for v in pod_spec(workload).get("volumes", [])}


def host_path_of(workload: dict, container: dict, mount_path: str) -> str:
    """The host directory behind a container's hostPath mount."""
    mount = mounts(container)[mount_path]
    return volumes(workload)[mount["name"]]["hostPath"]["path"]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
