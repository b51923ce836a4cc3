"""One way for each thing, held by the code itself: one JWS reader, one boundary for the NATS
client's errors, one error tree, and an SDK whose every public name says what it is for."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import adapters.sdk
import broker.errors
import broker.store
from broker.errors import BrokerError, StoreError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for package in ("broker", "adapters") for p in (ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports (``import a.b`` and ``from a.b import c`` both give ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def _importers(module: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in SOURCES if any(m == module or m.startswith(module + ".")
                                                              for m in _imports(p))}


def test_only_the_api_token_verifier_uses_pyjwt() -> None:
    """Wire and audit tokens are signed and read by :mod:`broker.wire.jws` on its own (held to PyJWT
    by ``tests/test_wire.py``); API bearer tokens, a different kind, by :mod:`broker.http.tokens`."""
    assert _importers("jwt") == {"broker/http/tokens.py"}


def test_only_the_boundary_names_the_nats_client_s_errors() -> None:
    """Everything else catches :class:`TransportError` (or ``NATS_FAILURES`` in a retry loop), so a
    bug is never taken for a transport failure."""
    assert _importers("nats.errors") == {"broker/transport/errors.py"}


def test_the_store_s_error_is_in_the_one_tree() -> None:
    assert issubclass(StoreError, BrokerError)
    assert StoreError.__module__ == broker.errors.__name__
    assert "StoreError" not in vars(broker.store) or broker.store.StoreError is StoreError


def _public_members(cls: type) -> list[tuple[str, object]]:
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        target = value.fget if isinstance(value, property) else value
        if callable(target) or isinstance(value, property):
            members.append((f"{cls.__name__}.{name}", target))
    return members


@pytest.mark.parametrize("name", adapters.sdk.__all__)
def test_every_public_name_of_the_sdk_says_what_it_is_for(name: str) -> None:
    obj = getattr(adapters.sdk, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return  # a constant: its comment is in its module
    undocumented = [name] if not (obj.__doc__ or "").strip() else []
    if inspect.isclass(obj):
        undocumented += [member for member, target in _public_members(obj)
                         if not (getattr(target, "__doc__", None) or "").strip()]
    assert not undocumented
