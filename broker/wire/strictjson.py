"""The one JSON reader for what arrives on the wire: a JWS header, the claims, an opened payload.

RFC 8259 leaves duplicate member names to the reader, and readers disagree: orjson and Python's
``json`` keep the last, others the first. A message whose header says ``alg`` twice, or whose
claims name ``iss`` twice, would then mean one thing to the broker and another to whoever reads
the signed original later. So a duplicate member name anywhere is refused, as is nesting deeper
than any message type needs (the schema validator gives up at 255 levels, with an error that is
not the sender's contract code). ``NaN``, ``Infinity`` and numbers beyond a double, which Python's
reader takes but RFC 8259 does not, are refused, and so is a string escaping half a surrogate pair
(not Unicode text: I-JSON, RFC 7493, forbids it, and no encoder can write it out again). The
failure names where (a JSON pointer made of member names and indices), never a value.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

MAX_DEPTH: Final = 32  # the deepest message type is about 6 levels
_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_NOT_STRUCTURE: Final = bytes(sorted(set(range(256)) - set(b'{}[]"')))


class StrictJSONError(ValueError):
    """Not strict JSON: ``where`` is a pointer into the document ("" for the whole)."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where


class _Duplicate(ValueError):
    pass


class _NotANumber(ValueError):
    pass


def _constant(name: str) -> float:
    raise _NotANumber(name)


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotANumber(text)
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Duplicate
    return obj


class _Marked(dict[str, Any]):
    """An object that held a duplicate member (only built to say where, after one was found)."""

    duplicate: str = ""


def _marking(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = _Marked(pairs)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            obj.duplicate = key
            break
        seen.add(key)
    return obj


def depth(node: Any) -> int:
    """How deeply arrays and objects nest in a parsed document."""
    deepest, stack = 0, [(node, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _brackets(text: bytes) -> bytes:
    """The brackets of well-formed JSON text outside its strings, in order. Every byte but brackets
    and quotes goes (after the escaped backslashes and quotes, so each quote left opens or closes a
    string); an empty string goes, and only what is left of the rare string holding a bracket is
    split out. C-speed passes, where walking a parsed audit block of hundreds of records in Python
    costs more than parsing it."""
    if b"\\" in text:
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = text.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    return b"".join(shape.split(b'"')[0::2]) if b'"' in shape else shape


def _deeper_than(text: bytes, levels: int) -> bool:
    """Whether well-formed JSON text nests deeper than ``levels`` (as :func:`depth` counts): its
    brackets, the innermost pairs taken away once a level."""
    brackets = _brackets(text)
    for _ in range(levels):
        if not brackets:
            return False
        # a placeholder for each innermost pair, so that its parent becomes innermost only next pass
        brackets = brackets.replace(b"{}", b".").replace(b"[]", b".").replace(b".", b"")
    return bool(brackets)


def loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` (UTF-8 JSON); raise :class:`StrictJSONError` on bad JSON, a duplicate member
    name or nesting deeper than ``max_depth``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError("not UTF-8") from exc
    try:
        doc = json.loads(text, parse_constant=_constant, parse_float=_float)
    except _NotANumber:
        raise StrictJSONError("NaN, Infinity or a number beyond a double is not JSON") from None
    except (ValueError, RecursionError) as exc:
        raise StrictJSONError("not JSON") from exc
    if _dropped_a_member(data, text, doc):
        raise StrictJSONError("a member name appears twice in one object", _locate(text) or "")
    # no deeper than the number of objects and arrays in it: count those first (cheap), then look closer
    if data.count(b"{") + data.count(b"[") > max_depth and _deeper_than(data, max_depth):
        raise StrictJSONError(f"nested more than {max_depth} levels deep")
    if _SURROGATE_ESCAPE.search(text):
        where = _find(doc, "", _lone_surrogate)
        if where is not None:
            raise StrictJSONError("a string holds half a surrogate pair (not Unicode text)", where)
    return doc


def _dropped_a_member(data: bytes, text: str, doc: Any) -> bool:
    """Whether the reader dropped a duplicate member (it keeps the last). Written out again, the
    document keeps every colon of the text but a dropped member's: one count each, where a hook
    per object would cost a third of the reading on a block of hundreds of records. Where a colon
    may be escaped (``\\u003a``) or the document cannot be written out (an integer beyond 64 bits,
    half a surrogate pair), read again with that hook."""
    if b"\\u003" not in data:
        with contextlib.suppress(orjson.JSONEncodeError):
            return data.count(b":") != orjson.dumps(doc).count(b":")
    try:
        json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_constant, parse_float=_float)
    except _Duplicate:
        return True
    return False


def _locate(text: str) -> str | None:
    """The pointer to the first object holding a duplicate member name, and that name; None when
    the text is not JSON at all."""
    try:
        doc = json.loads(text, object_pairs_hook=_marking, parse_constant=_constant, parse_float=_float)
    except (ValueError, RecursionError):
        return None
    try:
        found = _find(doc, "", _duplicate)
    except RecursionError:  # parsed at the very edge of the stack: say there is one, not where
        return ""
    return found if found is not None else ""


def _duplicate(node: Any) -> str | None:
    return node.duplicate if isinstance(node, _Marked) and node.duplicate else None


def _lone_surrogate(node: Any) -> str | None:
    """The member name (or "" for the node itself) that is not Unicode text."""
    if isinstance(node, str):
        return None if _is_text(node) else ""
    if isinstance(node, Mapping):
        return next((key for key in node if not _is_text(key)), None)
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _find(node: Any, at: str, hit: Any) -> str | None:
    """The pointer to the first node (depth first) where ``hit`` says something is wrong."""
    name = hit(node)
    if name is not None:
        return f"{at}/{_token(name)}" if name else at
    if isinstance(node, Mapping):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return None
    for key, child in items:
        found = _find(child, f"{at}/{_token(key)}", hit)
        if found is not None:
            return found
    return None


def _token(key: str | int) -> str:
    """A pointer token: a field-like name or an index; anything else (it may be data) as ``*``."""
    if isinstance(key, int):
        return str(key)
    return key if _NAME.match(key) else "*"
