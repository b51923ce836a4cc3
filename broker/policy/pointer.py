"""JSON pointers into a payload, as the rulebook uses them: conditions on what a message holds,
the date a clock starts from, and the members each recipient may receive.

A pointer (RFC 6901) may hold ``*`` for every item of an array (``/household/*/role``). Only
field names are ever reported back, never values, so what these functions return is safe to put
in a refusal, a log line or the audit log.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def values(doc: Any, pointer: str) -> Iterator[Any]:
    """Every value at ``pointer`` (several where it passes through ``*``); nothing if absent."""
    nodes = [doc]
    for raw in pointer.split("/")[1:]:
        name = raw.replace("~1", "/").replace("~0", "~")
        found = []
        for node in nodes:
            if name == "*" and isinstance(node, list):
                found.extend(node)
            elif isinstance(node, Mapping) and name in node:
                found.append(node[name])
        nodes = found
    for node in nodes:
        if node is not None:
            yield node


@dataclass(frozen=True, slots=True)
class Condition:
    """Holds when the field is present or, with ``any_of``, when its value (or any item of it) is one
    of those listed."""

    field: str
    any_of: frozenset[Any] | None = None

    def holds(self, doc: Any) -> bool:
        for value in values(doc, self.field):
            if self.any_of is None:
                return True
            items = value if isinstance(value, list) else [value]
            if any(_hashable(item) and item in self.any_of for item in items):
                return True
        return False


def _hashable(value: Any) -> bool:
    return isinstance(value, str | bool | int | float)


def first_holding(conditions: Sequence[Condition], doc: Any) -> str | None:
    """The field of the first condition that holds, or None."""
    return next((c.field for c in conditions if c.holds(doc)), None)


def narrow(payload: Mapping[str, Any], allowed: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names a recipient keeps and those withheld, for an allow-list of top-level members and
    ``member/sub-member`` entries (only those sub-members of an object member are kept)."""
    whole = {name for name in allowed if "/" not in name}
    parts: dict[str, set[str]] = {}
    for name in allowed:
        if "/" in name:
            top, sub = name.split("/", 1)
            parts.setdefault(top, set()).add(sub)
    kept: list[str] = []
    withheld: list[str] = []
    for name, value in payload.items():
        if name in whole:
            kept.append(name)
        elif name in parts and isinstance(value, Mapping):
            for sub in value:
                (kept if sub in parts[name] else withheld).append(f"{name}/{sub}")
        else:
            withheld.append(name)
    return tuple(sorted(kept)), tuple(sorted(withheld))


def project(payload: Mapping[str, Any], kept: Sequence[str]) -> dict[str, Any]:
    """The payload with only the ``kept`` names (as :func:`narrow` returns them)."""
    out: dict[str, Any] = {}
    for name in kept:
        if "/" in name:
            top, sub = name.split("/", 1)
            out.setdefault(top, {})[sub] = payload[top][sub]
        else:
            out[name] = payload[name]
    return out


def in_schema(schema: Mapping[str, Any], pointer: str, documents: Mapping[str, Any]) -> bool:
    """Whether a JSON Schema declares the member ``pointer`` names (``*``: an array's items),
    following ``$ref`` into ``documents`` (by file name) and through ``allOf``/``if``/``then``/``else``.
    The rulebook checks its pointers with this, so a misspelt one cannot silently match nothing."""
    nodes: list[Mapping[str, Any]] = [schema]
    for raw in pointer.split("/")[1:]:
        name = raw.replace("~1", "/").replace("~0", "~")
        found: list[Mapping[str, Any]] = []
        for node in _expand(nodes, schema, documents):
            child = node.get("items") if name == "*" else node.get("properties", {}).get(name)
            if isinstance(child, Mapping):
                found.append(child)
        if not found:
            return False
        nodes = found
    return True


def _expand(nodes: Sequence[Mapping[str, Any]], root: Mapping[str, Any],
            documents: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Each node, what its ``$ref`` points to, and its conditional branches."""
    stack = list(nodes)
    seen = 0
    while stack and seen < 256:
        node = stack.pop()
        seen += 1
        yield node
        ref = node.get("$ref")
        if isinstance(ref, str):
            file, _, path = ref.partition("#")
            target: Any = documents.get(file) if file else root
            for part in path.split("/")[1:]:
                target = target.get(part) if isinstance(target, Mapping) else None
            if isinstance(target, Mapping):
                stack.append(target)
        for key in ("allOf", "anyOf", "oneOf"):
            stack.extend(n for n in node.get(key, ()) if isinstance(n, Mapping))
        stack.extend(node[k] for k in ("if", "then", "else") if isinstance(node.get(k), Mapping))
