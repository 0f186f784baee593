"""routed.resources.selector: Calico's label selector language."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routed.errors import InvalidResource
from routed.resources.selector import All, And, Equals, Has, In, Not, Or, parse_selector

LABELS = {"zone": "a", "rack": "r1", "kubernetes.io/hostname": "node-1", "edge": ""}

# (selector, expected match against LABELS)
TRUTH = [
    ("", True),
    ("   ", True),
    ("all()", True),
    ("has(zone)", True),
    ("has(missing)", False),
    ("!has(missing)", True),
    ("!has(zone)", False),
    ("has(edge)", True),  # an empty value is still a label
    ("zone == 'a'", True),
    ('zone == "a"', True),
    ("zone == 'b'", False),
    ("missing == 'a'", False),
    ("zone != 'b'", True),
    ("zone != 'a'", False),
    ("missing != 'a'", True),  # != also matches an absent label, as in Calico
    ("edge == ''", True),
    ("zone in {'a', 'b'}", True),
    ('zone in {"b","c"}', False),
    ("zone in {}", False),
    ("missing in {'a'}", False),
    ("zone not in {'b', 'c'}", True),
    ("zone not in {'a'}", False),
    ("missing not in {'a'}", True),
    ("kubernetes.io/hostname == 'node-1'", True),
    ("kubernetes.io/hostname in {'node-2', 'node-3'}", False),
    ("zone == 'a' && rack == 'r1'", True),
    ("zone == 'a' && rack == 'r2'", False),
    ("zone == 'b' || rack == 'r1'", True),
    ("zone == 'b' || rack == 'r2'", False),
    # && binds tighter than ||
    ("zone == 'b' && rack == 'r2' || has(edge)", True),
    ("zone == 'b' && (rack == 'r2' || has(edge))", False),
    ("has(edge) || zone == 'b' && rack == 'r2'", True),
    ("!(zone == 'a' && rack == 'r1')", False),
    ("!zone == 'b'", True),  # ! applies to the comparison
    ("!!has(zone)", True),
    ("((has(zone)))", True),
    ("all() && !has(missing)", True),
    ("zone=='a'&&rack!='r2'", True),
    ("  zone  ==  'a'  ", True),
    ("all == 'x'", False),  # a label may be called all or has
    ("has(has)", False),
]


@pytest.mark.parametrize("text, expected", TRUTH)
def test_truth_table(text, expected):
    assert parse_selector(text).matches(LABELS) is expected


def test_no_labels():
    assert parse_selector("all()").matches({})
    assert not parse_selector("has(a)").matches({})
    assert parse_selector("a != 'x'").matches({})


def test_value_with_other_quote():
    assert parse_selector('note == "it\'s"').matches({"note": "it's"})


# (selector, position the message must point at)
ERRORS = [
    ("zone ==", 7),
    ("zone == a", 8),
    ("zone = 'a'", 5),
    ("zone", 4),
    ("has(zone", 8),
    ("has()", 4),
    ("all(", 4),
    ("(has(zone)", 10),
    ("has(zone))", 9),
    ("has(a) &&", 9),
    ("|| has(a)", 0),
    ("has(a) has(b)", 7),
    ("zone in 'a'", 8),
    ("zone in {'a' 'b'}", 13),
    ("zone in {'a',}", 13),
    ("zone not {'a'}", 9),
    ("zone == 'a", 8),
    ("zone == 'it''s'", 12),  # no escapes, and adjacent strings do not concatenate
    ("zone == 'a' & rack == 'b'", 12),
    ("zone == 'a' ; x", 12),
    ("!", 1),
]


@pytest.mark.parametrize("text, position", ERRORS)
def test_syntax_errors_name_selector_and_position(text, position):
    with pytest.raises(InvalidResource) as info:
        parse_selector(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f'invalid selector "{text}": ')
    assert message.endswith(f"position {position}"), message


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(InvalidResource, match="nesting deeper than"):
        parse_selector("(" * 500 + "all()" + ")" * 500)


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("", "all()"),
        ("zone=='a'", "zone == 'a'"),
        ("zone!='a'", "zone != 'a'"),
        ('zone in {"a","b"}', "zone in {'a', 'b'}"),
        ("zone not in {'a'}", "zone not in {'a'}"),
        ("(a == 'x' || b == 'y') && !has(c)", "(a == 'x' || b == 'y') && !has(c)"),
        ("a == 'x' || b == 'y' && c == 'z'", "a == 'x' || b == 'y' && c == 'z'"),
        ("!(has(a) && has(b))", "!(has(a) && has(b))"),
    ],
)
def test_canonical_text(text, canonical):
    assert str(parse_selector(text)) == canonical
    assert parse_selector(text).text == text


# --- property: printing a selector and parsing it back gives the same selector ---------

keys = st.sampled_from(["a", "b", "example.com/c"])
values = st.sampled_from(["", "x", "y", "it's"])
leaves = st.one_of(
    st.just(All()),
    keys.map(Has),
    st.builds(Equals, keys, values),
    st.builds(In, keys, st.lists(values, max_size=3).map(tuple)),
)
trees = st.recursive(
    leaves,
    lambda sub: st.one_of(sub.map(Not), st.builds(And, sub, sub), st.builds(Or, sub, sub)),
    max_leaves=8,
)
label_sets = st.dictionaries(keys, values, max_size=3)


@given(trees, st.lists(label_sets, min_size=1, max_size=5))
def test_printed_selector_parses_to_the_same_meaning(tree, label_list):
    reparsed = parse_selector(str(tree))
    assert str(reparsed) == str(parse_selector(str(reparsed)))
    for labels in label_list:
        assert reparsed.matches(labels) == tree.matches(labels)
