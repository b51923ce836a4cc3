"""Logs never carry personal data, even when an unexpected error dumps a traceback."""

from __future__ import annotations

import io

import pytest
import structlog

from broker import logs
from broker.errors import TransportError

MARKER = "Zebedee-Okafor-9990001235"


def _fails_holding_personal_data() -> None:
    payload = {"child": {"name": MARKER}}  # a local in the failing frame
    raise RuntimeError(f"failed on a payload with {len(payload)} members")


@pytest.mark.parametrize("as_json", [True, False])
def test_tracebacks_do_not_show_local_variables(as_json: bool) -> None:
    out = io.StringIO()
    logs.configure(level="INFO", json=as_json, stream=out)
    log = structlog.get_logger("t")
    try:
        _fails_holding_personal_data()
    except RuntimeError:
        log.exception("unexpected error while processing", stage="process")
    text = out.getvalue()
    assert "unexpected error while processing" in text and "RuntimeError" in text
    assert MARKER not in text


@pytest.mark.parametrize("as_json", [True, False])
def test_an_exceptions_message_is_written_only_if_it_is_ours(as_json: bool) -> None:
    """A library's message may quote the value it failed on; the project's own errors name no values."""
    out = io.StringIO()
    logs.configure(level="INFO", json=as_json, stream=out)
    log = structlog.get_logger("t")
    try:
        try:
            int(MARKER)
        except ValueError as exc:
            raise TransportError("the deadline store: TimeoutError") from exc
    except TransportError:
        log.exception("transport failure", stage="publish")
    text = out.getvalue()
    assert "ValueError" in text and "TransportError" in text and "the deadline store: TimeoutError" in text
    assert MARKER not in text
