"""routed's k8s-shaped resources: the kinds, and the way text becomes validated objects.

    for doc in load_documents(text):
        resource = parse(doc)      # InvalidResource with one line on any problem
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
import yaml

from routed.errors import InvalidResource
from routed.resources.base import (
    API_VERSION,
    ObjectMeta,
    Resource,
    describe,
    format_validation_error,
)
from routed.resources.bgp import BGPConfiguration, BGPConfigurationSpec, BGPPeer, BGPPeerSpec
from routed.resources.ipamconfig import IPAMConfig, IPAMConfigSpec
from routed.resources.ippool import IPPool, IPPoolSpec, check_pool_overlap, check_pool_update
from routed.resources.node import Node, NodeBGP, NodeSpec
from routed.resources.policy import (
    GlobalNetworkPolicy,
    KubeNetworkPolicy,
    Namespace,
    NetworkPolicy,
)
from routed.resources.selector import Selector, parse_selector
from routed.resources.service import EndpointSlice, Service

KINDS: dict[str, type[Resource]] = {
    cls.kind_name: cls
    for cls in (IPPool, IPAMConfig, BGPConfiguration, BGPPeer, Node, NetworkPolicy, GlobalNetworkPolicy)
}
# Kubernetes documents routedctl stores as they are: (apiVersion, kind) -> class.
KUBE_KINDS: dict[tuple[str, str], type[Resource]] = {
    (cls.api_group, cls.model_fields["kind"].default): cls for cls in (KubeNetworkPolicy, Namespace, Service, EndpointSlice)
}

# Every word routedctl accepts for a kind, as calicoctl does: "ippool", "IPPools", "pool"...
_WORDS: dict[str, type[Resource]] = {
    word: cls
    for cls in (*KINDS.values(), *KUBE_KINDS.values())
    for word in (cls.kind_name.lower(), cls.plural, *cls.aliases)
}


def resolve_kind(word: str) -> type[Resource]:
    try:
        return _WORDS[word.lower()]
    except KeyError:
        known = ", ".join(sorted(cls.plural for cls in (*KINDS.values(), *KUBE_KINDS.values())))
        raise InvalidResource(f'unknown resource type "{word}"; known: {known}') from None


def parse(doc: Any) -> Resource:
    """A validated resource from one decoded document."""
    if not isinstance(doc, dict):
        raise InvalidResource(
            f"a resource must be a mapping with apiVersion, kind, metadata and spec, "
            f"not {type(doc).__name__}"
        )
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    name = name if isinstance(name, str) else None
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    # NetworkPolicy is both routed's and Kubernetes' kind: apiVersion decides.
    versions = [v for v, k in KUBE_KINDS if k == kind]
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if api_version in versions:
        cls = KUBE_KINDS[(api_version, kind)]
    elif cls is not None:
        versions.insert(0, cls.api_group)
    if cls is None and versions:
        cls = KUBE_KINDS[(versions[0], kind)]
    if cls is None:
        known = ", ".join(sorted(KINDS))
        if kind is None:
            raise InvalidResource(f"kind: field is required (one of {known})")
        hint = ""
        if isinstance(kind, str) and kind.lower() in _WORDS:
            hint = f' (did you mean "{_WORDS[kind.lower()].kind_name}"?)'
        raise InvalidResource(f'kind: unknown kind "{kind}"{hint}; known: {known}')
    prefix = describe(kind, name)
    if api_version != cls.api_group:
        got = "it is missing" if api_version is None else f'got "{api_version}"'
        wanted = " or ".join(f'"{v}"' for v in versions or [cls.api_group])
        raise InvalidResource(f'{prefix}: apiVersion: must be {wanted}, {got}')
    try:
        return cls.model_validate(doc)
    except pydantic.ValidationError as err:
        raise InvalidResource(format_validation_error(kind, name, err)) from None


def load_documents(text: str) -> list[dict]:
    """The resource documents in YAML (one or several ``---`` documents) or JSON (an
    object or a list), with ``kind: List`` / ``items:`` wrappers unwrapped and empty
    documents skipped. Nothing is validated beyond "each one is a mapping"."""
    if not text.strip():
        return []
    json_error = None
    if text.lstrip()[0] in "{[":
        # JSON first: PyYAML reads most JSON, but not all of it (tabs, "\/" escapes).
        try:
            return _flatten(json.loads(text), [])
        except json.JSONDecodeError as err:
            json_error = f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
    try:
        decoded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        # Text that looks like JSON gets JSON's complaint, the more useful one.
        raise InvalidResource(json_error or _yaml_error(err)) from None
    return _flatten(decoded, [])


def _flatten(doc: Any, out: list[dict]) -> list[dict]:
    """Append the resources in ``doc`` (lists and List wrappers unwrapped) to ``out``."""
    if isinstance(doc, list):
        for item in doc:
            _flatten(item, out)
    elif isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
        _flatten(doc["items"] or [], out)
    elif isinstance(doc, dict):
        out.append(doc)
    elif doc is not None:  # None: an empty document
        raise InvalidResource(
            f"document {len(out) + 1}: expected a resource (a mapping), "
            f"got {type(doc).__name__} {str(doc)[:40]!r}"
        )
    return out


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return " ".join(f"invalid YAML{where}: {problem}".split())


__all__ = [
    "API_VERSION",
    "KINDS",
    "BGPConfiguration",
    "BGPConfigurationSpec",
    "BGPPeer",
    "BGPPeerSpec",
    "IPAMConfig",
    "IPAMConfigSpec",
    "IPPool",
    "IPPoolSpec",
    "GlobalNetworkPolicy",
    "KUBE_KINDS",
    "KubeNetworkPolicy",
    "Namespace",
    "NetworkPolicy",
    "Node",
    "NodeBGP",
    "NodeSpec",
    "ObjectMeta",
    "Resource",
    "Selector",
    "Service",
    "EndpointSlice",
    "check_pool_overlap",
    "check_pool_update",
    "format_validation_error",
    "load_documents",
    "parse",
    "parse_selector",
    "resolve_kind",
]
