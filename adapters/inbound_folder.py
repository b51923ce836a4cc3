"""The adapter's watched drop folder, for batch exports.

The agency system writes each document into ``<folder>/<format>/`` (the adapter makes one
sub-folder per format it takes). A file is taken once it has stopped changing (same size and
modification time for ``settle`` seconds; names beginning with ``.`` or ending ``.tmp``/``.part``
are left alone, so writing under a temporary name and renaming is safest). Oldest first:

- every message published: ``<folder>/sent/<name>.json`` gets the message ids, and the file
  is removed (the export holds personal data in clear; the adapter keeps only ids);
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
from typing import Final

import orjson
import structlog

from adapters.inbound import Submitter
from adapters.mapping import Mapper
from broker.errors import RejectedMessage, TooLarge, TransportError
from broker.keystore import write_private

log = structlog.get_logger("sgb.adapter")
SENT: Final = "sent"
FAILED: Final = "failed"
_IGNORED_SUFFIXES: Final = (".tmp", ".part", ".partial")


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

    def _ready(self) -> list[tuple[str, Path]]:
        """Files that have stopped changing, oldest first, at most ``per_pass``."""
        now = time.time()
        seen: dict[Path, tuple[int, int]] = {}
        ready: list[tuple[int, str, Path]] = []
        for fmt in self.formats:
            for entry in os.scandir(self.folder / fmt):
                if not entry.is_file(follow_symlinks=False) or entry.name.startswith(".") \
                        or entry.name.endswith(_IGNORED_SUFFIXES):
                    continue
                path, st = Path(entry.path), entry.stat(follow_symlinks=False)
                seen[path] = (st.st_size, st.st_mtime_ns)
                if self._last.get(path) == seen[path] and now - st.st_mtime >= self.settle:
                    ready.append((st.st_mtime_ns, fmt, path))
        self._last = seen
        return [(fmt, path) for _, fmt, path in sorted(ready)[: self.per_pass]]

    async def scan_once(self) -> int:
        """One pass; returns how many files were taken or refused."""
        handled = 0
        for fmt, path in await asyncio.to_thread(self._ready):
            file_ref = hashlib.sha256(path.name.encode()).hexdigest()[:12]  # a file name may name someone
            with structlog.contextvars.bound_contextvars(stage="intake", format=fmt, file_ref=file_ref):
                try:
                    body = await asyncio.to_thread(path.read_bytes)
                    if len(body) > self.max_bytes:
                        raise TooLarge(f"documents are at most {self.max_bytes} bytes", field="/")
                    done = await self.submitter.submit(body, self.formats[fmt])
                except TransportError as exc:
                    log.warning("cannot reach the broker; the file stays for the next pass", error=type(exc).__name__)
                    return handled
                except RejectedMessage as exc:
                    await asyncio.to_thread(self._refuse, path, exc)
                else:
                    record = done.as_json() | {"file": path.name, "format": fmt, "at": _now()}
                    await asyncio.to_thread(self._sent, path, orjson.dumps(record, option=orjson.OPT_INDENT_2))
                    log.info("file sent", messages=len(done.messages))
                self._last.pop(path, None)
                handled += 1
        return handled

    def _sent(self, path: Path, record: bytes) -> None:
        write_private(self.folder / SENT / f"{path.name}.json", record)
        path.unlink()

    def _refuse(self, path: Path, exc: RejectedMessage) -> None:
        target = self.folder / FAILED / path.name
        if target.exists():
            target = target.with_name(f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}-{path.name}")
        why = {"code": exc.code, "reason": exc.reason, "field": exc.field, "rule": exc.rule, "at": _now()}
        write_private(target.with_name(f"{target.name}.error.json"), orjson.dumps(why, option=orjson.OPT_INDENT_2))
        path.replace(target)
        log.info("file refused", code=exc.code, field=exc.field)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
