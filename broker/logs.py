"""structlog, configured once: JSON lines when not on a terminal, readable on one.

Log lines carry ids, codes, fields and rules; never payload values.

:func:`enabled` tells the hot path whether a level would be written, so that at ``ERROR`` (as
brokers run under load) it neither binds per-message context nor builds log calls that the
filtering logger would drop.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.tracebacks import ExceptionDictTransformer


def enabled(level: int) -> bool:
    """Whether a log call at ``level`` (``logging.INFO`` ...) would be written now. Read from
    structlog's configuration each time (a test or a reload may configure it again); a wrapper
    class that does not filter by level writes everything."""
    effective = getattr(structlog.get_config()["wrapper_class"], "get_effective_level", None)
    return effective is None or level >= effective(None)


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
