"""The adapter's watched drop folder, for batch exports.

The agency system writes each document into ``<folder>/<format>/`` (the adapter makes one
sub-folder per format it takes). A file is taken once it has stopped changing (same size and
modification time for ``settle`` seconds; names beginning with ``.`` or ending ``.tmp``/``.part``
are left alone, so writing under a temporary name and renaming is safest). Oldest first:

- every message published: ``<folder>/sent/<time>-<file_ref>.json`` gets the message ids
  (``file_ref``: the first 12 hex digits of the SHA-256 of the file's name), and the file is
  removed (the export holds personal data in clear; the adapter keeps only ids);
- refused (unmappable, too large): the file moves to ``<folder>/failed/`` with
  ``<name>.error.json`` naming the code and the field, for the agency to correct and drop again;
- the broker cannot be reached: the file stays and is tried again on the next pass; its message
  ids are derived from its content, so nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from adapters.formats.mapping import Mapper
from adapters.runtime.inbound import Submitter
from broker.errors import InternalFailure, RejectedMessage, TooLarge, TransportError
from broker.files import write_private
from broker.timestamps import iso

log = structlog.get_logger("sgb.adapter")
SENT: Final = "sent"
FAILED: Final = "failed"
_IGNORED_SUFFIXES: Final = (".tmp", ".part", ".partial")
_MAX_FAILURES: Final = 3


class FolderIntake:
    def __init__(self, folder: Path, submitter: Submitter, formats: Mapping[str, Mapper], *, max_bytes: int,
                 poll: float = 1.0, settle: float = 1.0, per_pass: int = 32) -> None:
        if {SENT, FAILED} & set(formats):
            raise ValueError("a format cannot be named 'sent' or 'failed'")
        self.folder = folder
        self.submitter = submitter
        self.formats = formats
        self.max_bytes = max_bytes
        self.poll = poll
        self.settle = settle
        self.per_pass = per_pass
        self._last: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) at the previous pass
        self._failures: dict[Path, int] = {}           # path -> internal errors so far
        for name in (*formats, SENT, FAILED):
            (folder / name).mkdir(parents=True, exist_ok=True, mode=0o700)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.scan_once()
            except OSError as exc:
                log.warning("drop folder unreadable; trying again", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)

    def _ready(self) -> list[tuple[str, Path, int]]:
        """``(format, file, size)`` of the files that have stopped changing, oldest first, at most
        ``per_pass``."""
        now = time.time()
        seen: dict[Path, tuple[int, int]] = {}
        ready: list[tuple[int, str, Path, int]] = []
        for fmt in self.formats:
            for entry in os.scandir(self.folder / fmt):
                if not entry.is_file(follow_symlinks=False) or entry.name.startswith(".") \
                        or entry.name.endswith(_IGNORED_SUFFIXES):
                    continue
                path, st = Path(entry.path), entry.stat(follow_symlinks=False)
                seen[path] = (st.st_size, st.st_mtime_ns)
                if self._last.get(path) == seen[path] and now - st.st_mtime >= self.settle:
                    ready.append((st.st_mtime_ns, fmt, path, st.st_size))
        self._last = seen
        return [(fmt, path, size) for _, fmt, path, size in sorted(ready)[: self.per_pass]]

    async def scan_once(self) -> int:
        """One pass; returns how many files were taken or refused."""
        handled = 0
        for fmt, path, size in await asyncio.to_thread(self._ready):
            file_ref = hashlib.sha256(path.name.encode()).hexdigest()[:12]  # a file name may name someone
            with structlog.contextvars.bound_contextvars(stage="intake", format=fmt, file_ref=file_ref):
                try:
                    if size > self.max_bytes:
                        raise TooLarge(f"documents are at most {self.max_bytes} bytes", field="/")
                    body = await asyncio.to_thread(path.read_bytes)
                    done = await self.submitter.submit(body, self.formats[fmt])
                except TransportError as exc:
                    log.warning("cannot reach the broker; the file stays for the next pass", error=type(exc).__name__)
                    return handled
                except RejectedMessage as exc:
                    await asyncio.to_thread(self._refuse, path, exc)
                except Exception as exc:  # a fault of ours: the file waits; after a few passes it is set aside
                    failures = self._failures[path] = self._failures.get(path, 0) + 1
                    log.error("file not taken: internal error", error=type(exc).__name__, failures=failures)
                    if failures < _MAX_FAILURES:
                        continue
                    await asyncio.to_thread(self._refuse, path, InternalFailure(
                        "the adapter could not take this file; tell its operator", field="/", rule="internal"))
                else:
                    record = done.as_json() | {"file_ref": file_ref, "format": fmt, "at": iso(time.time())}
                    await asyncio.to_thread(self._sent, record)
                    await asyncio.to_thread(path.unlink)
                    log.info("file sent", messages=len(done.messages))
                self._last.pop(path, None)
                self._failures.pop(path, None)
                handled += 1
        return handled

    def _sent(self, record: dict[str, Any]) -> None:
        """``sent/<time>-<hash of the name>.json``: file names are not kept, and a nightly export
        under the same name does not overwrite the last night's record."""
        name = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}-{record['file_ref']}.json"
        write_private(self.folder / SENT / name, orjson.dumps(record, option=orjson.OPT_INDENT_2))

    def _refuse(self, path: Path, exc: RejectedMessage) -> None:
        target = self.folder / FAILED / path.name
        if target.exists():
            target = target.with_name(f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}-{path.name}")
        why = {"code": exc.code, "reason": exc.reason, "field": exc.field, "rule": exc.rule, "at": iso(time.time())}
        write_private(target.with_name(f"{target.name}.error.json"), orjson.dumps(why, option=orjson.OPT_INDENT_2))
        path.replace(target)
        log.info("file refused", code=exc.code, field=exc.field)
