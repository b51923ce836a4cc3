"""The one JSON reader for what arrives on the wire: a JWS header, the claims, an opened payload.

RFC 8259 leaves duplicate member names to the reader, and readers disagree: orjson and Python's
``json`` keep the last, others the first. A message whose header says ``alg`` twice, or whose
claims name ``iss`` twice, would then mean one thing to the broker and another to whoever reads
the signed original later. So a duplicate member name anywhere is refused, as is nesting deeper
than any message type needs (the schema validator gives up at 255 levels, with an error that is
not the sender's contract code). The failure names where (a JSON pointer made of member names
and indices), never a value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

MAX_DEPTH: Final = 32  # the deepest message type is about 6 levels
_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class StrictJSONError(ValueError):
    """Not strict JSON: ``where`` is a pointer into the document ("" for the whole)."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where


class _Duplicate(ValueError):
    pass


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


def loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` (UTF-8 JSON); raise :class:`StrictJSONError` on bad JSON, a duplicate member
    name or nesting deeper than ``max_depth``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError("not UTF-8") from exc
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate:
        raise StrictJSONError("a member name appears twice in one object", _locate(text)) from None
    except (ValueError, RecursionError) as exc:
        raise StrictJSONError("not JSON") from exc
    # no deeper than the number of objects and arrays in it: count those first (cheap), walk if needed
    if data.count(b"{") + data.count(b"[") > max_depth and depth(doc) > max_depth:
        raise StrictJSONError(f"nested more than {max_depth} levels deep")
    return doc


def _locate(text: str) -> str:
    """The pointer to the first object holding a duplicate member name, and that name."""
    found = _find(json.loads(text, object_pairs_hook=_marking), "")
    return found if found is not None else ""


def _find(node: Any, at: str) -> str | None:
    if isinstance(node, _Marked) and node.duplicate:
        return f"{at}/{_token(node.duplicate)}"
    if isinstance(node, Mapping):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return None
    for key, child in items:
        found = _find(child, f"{at}/{_token(key)}")
        if found is not None:
            return found
    return None


def _token(key: str | int) -> str:
    """A pointer token: a field-like name or an index; anything else (it may be data) as ``*``."""
    if isinstance(key, int):
        return str(key)
    return key if _NAME.match(key) else "*"
