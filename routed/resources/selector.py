"""Calico's label selector language (the subset routed uses), parsed once, matched often.

    all()   has(k)   !has(k)   k == 'v'   k != 'v'   k in {'a', "b"}   k not in {...}
    !e      e && e   e || e    (e)

``!=`` and ``not in`` also match when the label is absent, as in Calico. ``&&`` binds
tighter than ``||``. An empty selector selects everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

from routed.errors import InvalidResource

# A deeply nested selector is a typo or an attack, and would hit Python's recursion limit.
_MAX_DEPTH = 64


class _Node:
    def matches(self, labels: Mapping[str, str]) -> bool:
        raise NotImplementedError


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


@dataclass(frozen=True)
class All(_Node):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True)
class Has(_Node):
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True)
class Equals(_Node):
    key: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) == self.value

    def __str__(self) -> str:
        return f"{self.key} == {_quote(self.value)}"


@dataclass(frozen=True)
class In(_Node):
    key: str
    values: tuple[str, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels and labels[self.key] in self.values

    def __str__(self) -> str:
        return f"{self.key} in {{{', '.join(map(_quote, self.values))}}}"


@dataclass(frozen=True)
class Not(_Node):
    operand: _Node

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)

    def __str__(self) -> str:
        # k != 'v' and k not in {...} are negations; print them the way they are written.
        if isinstance(self.operand, Equals):
            return f"{self.operand.key} != {_quote(self.operand.value)}"
        if isinstance(self.operand, In):
            return str(self.operand).replace(" in ", " not in ", 1)
        return f"!{_wrap(self.operand, Not)}"


@dataclass(frozen=True)
class And(_Node):
    left: _Node
    right: _Node

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.left.matches(labels) and self.right.matches(labels)

    def __str__(self) -> str:
        return f"{_wrap(self.left, And)} && {_wrap(self.right, And)}"


@dataclass(frozen=True)
class Or(_Node):
    left: _Node
    right: _Node

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.left.matches(labels) or self.right.matches(labels)

    def __str__(self) -> str:
        return f"{self.left} || {self.right}"


def _wrap(node: _Node, parent: type) -> str:
    """Parenthesise a child that binds more loosely than its parent operator."""
    looser = {Not: (And, Or), And: (Or,)}[parent]
    return f"({node})" if isinstance(node, looser) else str(node)


@dataclass(frozen=True)
class Selector:
    text: str
    root: _Node

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.root.matches(labels)

    def __str__(self) -> str:
        return str(self.root)


def parse_selector(text: str) -> Selector:
    if not text.strip():
        return Selector(text, All())
    return Selector(text, _Parser(text).parse())


_TOKEN = re.compile(
    r"""(?:
        (?P<op>&&|\|\||==|!=|!|\(|\)|\{|\}|,)
      | '(?P<single>[^']*)'
      | "(?P<double>[^"]*)"
      | (?P<word>[A-Za-z0-9_./-]+)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "op" (value is the operator), "str", "word" or "end"
    value: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            break
        m = _TOKEN.match(text, pos)
        if not m:
            what = "unterminated quote" if text[pos] in "'\"" else "unexpected character"
            raise InvalidResource(
                f'invalid selector "{text}": {what} {text[pos]!r} at position {pos}'
            )
        kind = m.lastgroup
        value = m.group(kind)
        tokens.append(_Token("str" if kind in ("single", "double") else kind, value, pos))
        pos = m.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over: or := and ('||' and)*; and := unary ('&&' unary)*;
    unary := '!' unary | '(' or ')' | all() | has(k) | k (== | != | in | not in) ..."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def parse(self) -> _Node:
        node = self._or()
        if self._peek().kind != "end":
            self._fail("expected && or || or the end of the selector")
        return node

    # -- token helpers --

    def _peek(self) -> _Token:
        return self.tokens[self.i]

    def _next(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def _at(self, kind: str, value: str | None = None) -> bool:
        token = self._peek()
        return token.kind == kind and (value is None or token.value == value)

    def _expect(self, kind: str, value: str | None, what: str) -> _Token:
        if not self._at(kind, value):
            self._fail(f"expected {what}")
        return self._next()

    def _fail(self, what: str) -> NoReturn:
        token = self._peek()
        found = "end of selector" if token.kind == "end" else repr(token.value)
        raise InvalidResource(
            f'invalid selector "{self.text}": {what}, found {found} at position {token.pos}'
        )

    # -- grammar --

    def _or(self) -> _Node:
        node = self._and()
        while self._at("op", "||"):
            self._next()
            node = Or(node, self._and())
        return node

    def _and(self) -> _Node:
        node = self._unary()
        while self._at("op", "&&"):
            self._next()
            node = And(node, self._unary())
        return node

    def _unary(self) -> _Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            self._fail(f"nesting deeper than {_MAX_DEPTH}")
        try:
            if self._at("op", "!"):
                self._next()
                return Not(self._unary())
            if self._at("op", "("):
                self._next()
                node = self._or()
                self._expect("op", ")", "')'")
                return node
            return self._term()
        finally:
            self.depth -= 1

    def _term(self) -> _Node:
        key = self._expect("word", None, "a label name, has(), all(), '!' or '('").value
        if key in ("all", "has") and self._at("op", "("):
            self._next()
            node: _Node = All() if key == "all" else Has(self._expect("word", None, "a label name").value)
            self._expect("op", ")", "')'")
            return node
        if self._at("op", "=="):
            self._next()
            return Equals(key, self._string())
        if self._at("op", "!="):
            self._next()
            return Not(Equals(key, self._string()))
        if self._at("word", "in"):
            self._next()
            return In(key, self._set())
        if self._at("word", "not"):
            self._next()
            self._expect("word", "in", "'in' after 'not'")
            return Not(In(key, self._set()))
        self._fail(f"expected ==, !=, in or not in after label {key!r}")

    def _string(self) -> str:
        return self._expect("str", None, "a quoted value").value

    def _set(self) -> tuple[str, ...]:
        self._expect("op", "{", "'{'")
        values: list[str] = []
        if not self._at("op", "}"):
            values.append(self._string())
            while self._at("op", ","):
                self._next()
                values.append(self._string())
        self._expect("op", "}", "',' or '}'")
        return tuple(values)
