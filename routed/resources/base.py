"""The k8s-shaped envelope every resource shares, and the one-line error format.

Validators raise ``field_error(...)`` rather than ValueError: pydantic prefixes
ValueError messages with "Value error, ", and a custom error can carry the name of the
field it is about even when it is raised by a validator that sees the whole model.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from routed.errors import InvalidResource
from routed.resources.selector import parse_selector

API_VERSION = "routed.io/v1"

# strict: YAML and JSON already give real ints and bools, so "179" or true where a
# number belongs is a mistake worth reporting, not something to coerce.
MODEL_CONFIG = ConfigDict(
    alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True
)


class Model(BaseModel):
    model_config = MODEL_CONFIG


def field_error(message: str, field: str | None = None) -> PydanticCustomError:
    """An error for a validator to raise; ``field`` (wire name, dotted) is appended to
    the error location, for checks that a model-level validator makes."""
    ctx: dict[str, Any] = {"detail": message}
    if field:
        ctx["field"] = field
    # The message goes through ctx, not the template, so braces in it stay literal.
    return PydanticCustomError("routed", "{detail}", ctx)


# --- names and labels -----------------------------------------------------------------

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def dns_subdomain_problem(name: str) -> str | None:
    """Why ``name`` is not a DNS-1123 subdomain, or None if it is one."""
    if not name:
        return "must not be empty"
    if len(name) > 253:
        return f"{name[:20]}... is {len(name)} characters, more than 253"
    if not _DNS_SUBDOMAIN.fullmatch(name):
        return (
            f'"{name}" is not a valid name: use lower-case letters, digits, "-" and ".", '
            "starting and ending with a letter or digit"
        )
    return None


def check_dns_subdomain(name: str) -> str:
    problem = dns_subdomain_problem(name)
    if problem:
        raise field_error(problem)
    return name


def _label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and dns_subdomain_problem(prefix):
        return f'label key "{key}": prefix "{prefix}" must be a DNS subdomain'
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return (
            f'label key "{key}": name must be 1-63 characters of letters, digits, '
            '"-", "_" and ".", starting and ending with a letter or digit'
        )
    return None


def _label_value_problem(key: str, value: str) -> str | None:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        return (
            f'label "{key}": value "{value}" must be at most 63 characters of letters, '
            'digits, "-", "_" and ".", starting and ending with a letter or digit'
        )
    return None


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Labels (or a label selector's) as Kubernetes allows them; the first problem raised."""
    for key, value in labels.items():
        problem = _label_key_problem(key) or _label_value_problem(key, value)
        if problem:
            raise field_error(problem)
    return labels


class ObjectMeta(Model):
    name: str
    namespace: str | None = None  # only for namespaced kinds (NetworkPolicy)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = None
    uid: str | None = None
    creation_timestamp: str | None = None

    _check_name = field_validator("name")(check_dns_subdomain)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, namespace: str) -> str:
        if not NAMESPACE_NAME.fullmatch(namespace):
            raise field_error(f'"{namespace}" is not a namespace name (a DNS label, at most 63 characters)')
        return namespace

    _check_labels = field_validator("labels")(lambda labels: check_labels(labels))

    @field_validator("creation_timestamp", mode="before")
    @classmethod
    def _timestamp_text(cls, value: Any) -> Any:
        # An unquoted RFC 3339 time in YAML arrives as a datetime.
        if isinstance(value, datetime.datetime):
            text = value.isoformat()
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        return value


# --- field types shared by several kinds ----------------------------------------------

AS_TRANS = 23456
AS_MAX = 2**32 - 1


def _as_number(value: Any) -> int:
    """Accept 64512, "64512" or asdot "1.10" (= 1*65536 + 10)."""
    if isinstance(value, str):
        text = value.strip()
        high, dot, low = text.partition(".")
        if text.isdigit():
            value = int(text)
        elif dot and high.isdigit() and low.isdigit() and max(int(high), int(low)) < 65536:
            value = int(high) * 65536 + int(low)
        else:
            raise field_error(f'"{value}" is not an AS number (use e.g. 64512 or asdot 1.10)')
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error(f"{value!r} is not an AS number (use e.g. 64512 or asdot 1.10)")
    if value == AS_TRANS:
        raise field_error(f"AS {AS_TRANS} (AS_TRANS) is reserved and cannot be used")
    if not 1 <= value <= AS_MAX:
        raise field_error(f"AS number {value} is out of range (1-{AS_MAX})")
    return value


ASNumber = Annotated[int, BeforeValidator(_as_number)]


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network with an explicit prefix and no host bits, or a field_error saying
    what to write instead."""
    if "/" not in text:
        raise field_error(f'"{text}" has no prefix length (e.g. {text}/16)')
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise field_error(f'"{text}" is not a valid CIDR') from None
    raise field_error(f"host bits set in {text} (did you mean {loose}?)")


# A CIDR stored in its normalised form (compressed IPv6, no host bits).
CIDR = Annotated[str, AfterValidator(lambda text: str(parse_cidr(text)))]


def _check_selector(text: str) -> str:
    try:
        parse_selector(text)
    except InvalidResource as err:
        raise field_error(str(err)) from None
    return text


# A selector kept as the user wrote it, but only if it parses.
SelectorText = Annotated[str, AfterValidator(_check_selector)]


# --- the envelope ---------------------------------------------------------------------


class Resource(Model):
    """apiVersion/kind/metadata/spec. Subclasses set ``kind`` (a Literal with a default),
    ``spec``, ``kind_name``, ``plural`` and the words ``resolve_kind`` accepts."""

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    api_group: ClassVar[str] = API_VERSION  # the apiVersion documents of this kind carry
    namespaced: ClassVar[bool] = False

    api_version: Literal["routed.io/v1"] = API_VERSION
    kind: str
    metadata: ObjectMeta
    spec: Model

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @pydantic.model_validator(mode="after")
    def _namespace_only_if_namespaced(self):
        if self.metadata.namespace is not None and not self.namespaced:
            raise field_error(f"unknown field ({self.kind_name} is not namespaced)", "metadata.namespace")
        return self

    def to_dict(self) -> dict[str, Any]:
        # exclude_none drops unset optional fields (metadata.uid, BGPPeer.node...);
        # every None field defaults to None, so parse() reads the dict back unchanged.
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def describe(kind: str, name: str | None) -> str:
    """``IPPool "pool-a"``, the way every message names a resource."""
    if not name:
        return kind
    return f'{kind} "{name if len(name) <= 63 else name[:60] + "..."}"'


def format_validation_error(kind: str, name: str | None, err: pydantic.ValidationError) -> str:
    """``IPPool "a": spec.cidr: host bits set ... (and 2 more)`` -- one line."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = list(first["loc"]) + (first.get("ctx") or {}).get("field", "").split(".")
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        elif part != "":
            # pydantic reports a field by the name the input used (camelCase on the
            # wire), and dict keys (label names) as they are: both echo the user.
            parts.append(str(part))
    path = ".".join(parts)
    message = _message(first)
    line = f"{path}: {message}" if path else message
    prefix = describe(kind, name)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"{prefix}: {line}{more}".split())


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "field is required"
    if kind == "extra_forbidden":
        return "unknown field"
    msg = error["msg"]
    for noise in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(noise)
    return msg
