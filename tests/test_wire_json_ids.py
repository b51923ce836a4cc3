"""The wire's strict JSON reader against an obvious, slow reading, and derived ids against the
uuid5 ids they always were (the rest of the wire is tests/test_wire.py)."""

from __future__ import annotations

import json
import math
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.wire import strictjson

# -- strict JSON: the quick checks against the obvious, slow reading -----------------------------


def _slow_strict(data: bytes) -> object:
    """Strict JSON spelled the obvious way: a hook per object for duplicates, a walk for the depth,
    writing it out again for NaN and half surrogate pairs."""

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        obj = dict(items)
        if len(obj) != len(items):
            raise ValueError("a duplicate member name")
        return obj

    def no_constant(name: str) -> float:
        raise ValueError(name)

    def finite(text: str) -> float:
        if math.isinf(value := float(text)):
            raise ValueError(text)
        return value

    doc = json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=no_constant, parse_float=finite)
    if strictjson.depth(doc) > strictjson.MAX_DEPTH:
        raise ValueError("too deep")
    json.dumps(doc, allow_nan=False, ensure_ascii=False).encode("utf-8")
    return doc


_NAMES = st.sampled_from(["a", "b", "a:b", "{", "]", "\\u003a", "\\u003A", "x\\\"y", "\\\\", "é", "", "\\ud800"])
_SCALARS = st.one_of(
    st.sampled_from(["1", "-0", "1.5", "1e400", "NaN", "true", "null", '"s:t"', '"\\u003a"', '"\\ud800"',
                     '"}]"', '"\\\\"', '"\\\""', "123456789012345678901234", "-9223372036854775809"]),
    st.integers(-(2**70), 2**70).map(str))
_SPACE = st.sampled_from(["", " ", "\n "])


def _json_texts() -> st.SearchStrategy[str]:
    def containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        members = st.lists(st.tuples(_NAMES, _SPACE, children), max_size=4).map(
            lambda kv: "{" + ",".join(f'"{k}":{w}{v}' for k, w, v in kv) + "}")
        items = st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
        return st.one_of(members, items)

    nested = st.tuples(st.integers(28, 36), st.sampled_from("[{")).map(
        lambda n_open: "".join(("[" if o == "[" else '{"d":') for o in n_open[1] * n_open[0])
        + "1" + "".join(("]" if o == "[" else "}") for o in n_open[1] * n_open[0]))
    return st.one_of(st.recursive(_SCALARS, containers, max_leaves=25), nested)


@settings(max_examples=300, deadline=None)
@given(text=_json_texts())
def test_strict_json_agrees_with_the_slow_reading(text: str) -> None:
    """The colon count for duplicates and the bracket passes for depth decide as a hook per object
    and a walk would."""
    data = text.encode("utf-8", "surrogatepass")
    try:
        expected: tuple[str, object] = ("ok", _slow_strict(data))
    except (ValueError, RecursionError):
        expected = ("refused", None)
    try:
        got: tuple[str, object] = ("ok", strictjson.loads(data))
    except strictjson.StrictJSONError:
        got = ("refused", None)
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.one_of(st.text(max_size=40), st.integers(), st.uuids()), min_size=1, max_size=5))
def test_derived_ids_are_the_uuid5_ids_they_always_were(parts: list[object]) -> None:
    """Ids are what JetStream deduplicates on: the written-out uuid5 must give exactly the ids that
    :func:`uuid.uuid5` gave, or a broker upgraded mid-stream would republish under new ids."""
    from broker.wire import ids

    assert ids.derived_id(*parts) == str(uuid.uuid5(ids._NS, "/".join(str(p) for p in parts)))
