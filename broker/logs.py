"""structlog, configured once: JSON lines when not on a terminal, readable on one.

Log lines carry ids, codes, fields and rules; never payload values.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.tracebacks import ExceptionDictTransformer


def configure(*, level: str = "INFO", json: bool | None = None, stream: object = None) -> None:
    out = stream or sys.stderr
    as_json = (not getattr(out, "isatty", lambda: False)()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks without local variables: a frame's locals may hold an opened payload.
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
            if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
