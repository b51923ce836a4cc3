"""structlog, configured once: JSON lines when not on a terminal, readable on one.

Log lines carry ids, codes, fields and rules; never payload values. A traceback shows neither
a frame's local variables nor the message of an exception that is not the project's own (a
``ValueError`` from ``int()`` quotes the text it could not read, which may be a child's name):
only the project's errors (:class:`~broker.errors.BrokerError`) are written to name no values.

:func:`enabled` tells the hot path whether a level would be written, so that at ``ERROR`` (as
brokers run under load) it neither binds per-message context nor builds log calls that the
filtering logger would drop.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from broker.errors import BrokerError


def enabled(level: int) -> bool:
    """Whether a log call at ``level`` (``logging.INFO`` ...) would be written now. Read from
    structlog's configuration each time (a test or a reload may configure it again); a wrapper
    class that does not filter by level writes everything."""
    effective = getattr(structlog.get_config()["wrapper_class"], "get_effective_level", None)
    return effective is None or level >= effective(None)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _said(exc: BaseException) -> str:
    """What a log line may say of an exception: its type, and its message only if it is ours."""
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, BrokerError) else type(exc).__name__


class _WithoutValues(ExceptionDictTransformer):
    """structlog's exception dicts (no locals), each message blanked unless the exception is ours."""

    def __call__(self, exc_info: Any) -> list[dict[str, Any]]:
        stacks = super().__call__(exc_info)
        ours = {type(e).__name__ for e in _chain(exc_info[1]) if isinstance(e, BrokerError)}
        for stack in stacks:
            if stack.get("exc_type") not in ours:
                stack["exc_value"] = ""
        return stacks


def _plain_without_values(sio: TextIO, exc_info: Any) -> None:
    """The readable traceback, oldest exception first, each with its type (and our messages) only."""
    for exc in reversed(list(_chain(exc_info[1]))):
        sio.write("\nTraceback (most recent call last):\n" + "".join(traceback.format_tb(exc.__traceback__))
                  + _said(exc) + "\n")


def configure(*, level: str = "INFO", json: bool | None = None, stream: object = None) -> None:
    out = stream or sys.stderr
    as_json = (not getattr(out, "isatty", lambda: False)()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=_plain_without_values)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks without local variables: a frame's locals may hold an opened payload.
            structlog.processors.ExceptionRenderer(_WithoutValues(show_locals=False))
            if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
