"""routedctl apply | create | replace | get | delete | patch."""

from __future__ import annotations

import json
import sys

from routed import resources as r
from routed.resources import calico
from routed.errors import InvalidResource, NotFound, RoutedError
from routed.render import Output

from .columns import resource_table


def read_resources(path: str, stdin=None) -> list[r.Resource]:
    """Parse every document of a file (or '-') before anything is written; projectcalico.org/v3
    documents are converted to routed.io/v1 on the way."""
    if path == "-":
        text = (stdin or sys.stdin).read()
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise RoutedError(f"cannot read {path}: {err.strerror}") from None
    try:
        docs = r.load_documents(text)
    except InvalidResource as err:  # a YAML/JSON syntax error: say which file it is in
        raise InvalidResource(f"{path}: {err}") from None
    if not docs:
        raise InvalidResource(f"{path}: no resources found")
    parsed, seen = [], set()
    for i, doc in enumerate(docs, 1):
        try:
            # A Calico document is converted first, then validated like any routed one.
            res = r.parse(calico.to_routed(doc) if calico.is_calico(doc) else doc)
        except InvalidResource as err:
            raise InvalidResource(f"{path}: document {i}: {err}" if len(docs) > 1 else f"{path}: {err}") from None
        ident = (res.kind_name, res.namespace, res.metadata.name)
        if ident in seen:
            raise InvalidResource(f'{path}: {_ref(res)} appears twice')
        seen.add(ident)
        parsed.append(res)
    return parsed


def _ref(res) -> str:
    where = f"{res.namespace}/" if res.namespace else ""
    return f"{res.kind_name.lower()}/{where}{res.metadata.name}"


def write(ctx, args, mode: str) -> Output:
    """Write every resource of the file; on a failure, undo the ones already written."""
    store = ctx.store
    done: list[tuple[r.Resource, r.Resource | None]] = []  # (written, what it replaced)
    messages = []
    try:
        for res in read_resources(args.filename, ctx.stdin):
            before = store.find(type(res), res.metadata.name, res.namespace)
            if mode == "apply":
                saved, created = store.apply(res)
                verb = "created" if created else "configured"
            elif mode == "create":
                saved, verb = store.create(res), "created"
            else:
                saved, verb = store.replace(res), "replaced"
            done.append((saved, before))
            messages.append(f"{_ref(saved)} {verb}")
    except RoutedError as err:
        undone = _undo(store, done)
        if undone:
            raise type(err)(f"{err} (rolled back: {', '.join(undone)})") from None
        raise
    return Output(messages=messages)


def _undo(store, done) -> list[str]:
    undone = []
    for saved, before in reversed(done):
        try:
            if before is None:
                store.delete(type(saved), saved.metadata.name, namespace=saved.namespace)
            else:
                before.metadata.resource_version = None
                store.replace(before)
            undone.append(_ref(saved))
        except RoutedError:
            pass  # the caller's error says what failed; an undo that fails is not worse
    return undone


def get(ctx, args) -> Output:
    cls = r.resolve_kind(args.kind)
    messages = []
    if args.name:
        items = [ctx.store.get(cls, args.name, args.namespace)]
        data = items[0].to_dict()
    else:
        store = ctx.store
        items = sorted(store.list(cls, args.namespace), key=lambda i: (i.namespace or "", i.metadata.name))
        data = {"apiVersion": r.API_VERSION, "kind": "List", "items": [i.to_dict() for i in items]}
        messages = store.unreadable.notes()  # one line per record left out
    return Output(data=data, table=resource_table(cls, items), messages=messages)


def delete(ctx, args) -> Output:
    if args.filename:
        targets = [(type(res), res.metadata.name, res.namespace)
                   for res in read_resources(args.filename, ctx.stdin)]
    elif args.kind and args.name:
        targets = [(r.resolve_kind(args.kind), args.name, args.namespace)]
    else:
        raise RoutedError("delete needs KIND NAME or -f FILE")
    messages = []
    for cls, name, namespace in targets:
        try:
            gone = ctx.store.delete(cls, name, namespace=namespace)
        except NotFound:
            if args.skip_not_found:
                continue
            raise
        messages.append(f"{_ref(gone)} deleted")
    return Output(messages=messages)


def patch(ctx, args) -> Output:
    cls = r.resolve_kind(args.kind)
    try:
        body = json.loads(args.patch)
    except ValueError as err:
        raise RoutedError(f"--patch is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise RoutedError("--patch must be a JSON object")
    saved = ctx.store.patch(cls, args.name, body, args.namespace)
    return Output(data=saved.to_dict(), table=resource_table(cls, [saved]), messages=[f"{_ref(saved)} patched"])


def convert(ctx, args) -> Output:
    """The routed.io/v1 form of a file (Calico's or routed's own), validated, written nowhere."""
    items = [res.to_dict() for res in read_resources(args.filename, ctx.stdin)]
    for item in items:  # identity in a datastore is the datastore's to give
        for field in ("uid", "resourceVersion", "creationTimestamp"):
            item["metadata"].pop(field, None)
    data = items[0] if len(items) == 1 else {"apiVersion": r.API_VERSION, "kind": "List", "items": items}
    # The point of convert is the document: YAML unless -o says otherwise.
    return Output(data=data, default_format="yaml")


def register(sub) -> None:
    for mode, help_ in (("apply", "create or update resources from a file"),
                        ("create", "create resources from a file (error if one exists)"),
                        ("replace", "replace existing resources from a file")):
        p = sub.add_parser(mode, help=help_)
        p.add_argument("-f", "--filename", required=True, help="YAML or JSON file, or - for stdin")
        p.set_defaults(func=lambda ctx, args, mode=mode: write(ctx, args, mode), writes=True)

    p = sub.add_parser("convert", help="print the routed.io form of a file (e.g. Calico's projectcalico.org/v3)")
    p.add_argument("-f", "--filename", required=True, help="YAML or JSON file, or - for stdin")
    p.set_defaults(func=convert)

    p = sub.add_parser("get", help="show resources")
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    _namespace_option(p, "(without a name: all namespaces unless given)")
    p.set_defaults(func=get)

    p = sub.add_parser("delete", help="delete resources")
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("-f", "--filename")
    p.add_argument("--skip-not-found", action="store_true")
    _namespace_option(p, "(default: default)")
    p.set_defaults(func=delete, writes=True)

    p = sub.add_parser("patch", help="merge-patch one resource")
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("-p", "--patch", required=True, help="JSON merge patch")
    _namespace_option(p, "(default: default)")
    p.set_defaults(func=patch, writes=True)


def _namespace_option(p, default: str) -> None:
    p.add_argument("-n", "--namespace", help=f"the namespace of a namespaced kind {default}")
