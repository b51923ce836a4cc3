"""Files only their owner may read, and the check made before one is trusted.

One writer for every private file of the broker and the adapters, keys or not (key files,
NATS seeds, the blind-index keyring, dead letters, a drop folder's deliveries, the inbound drop
folder's receipts, SQLite stores): the folder is 0700, the file 0600, written atomically
(temporary file, fsync, rename, fsync of the folder), so a reader never sees half of it and a
crash leaves the old file or the new one. One check for every secret read from disk: a file
that its group or others may read is refused, naming the file and the fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from broker.errors import BrokerError, KeyStoreError

PRIVATE_FILE: Final = 0o600
PRIVATE_FOLDER: Final = 0o700


def private_folder(folder: Path) -> Path:
    """``folder`` (and its parents) made if missing; ``folder`` itself only its owner's (0700)."""
    folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_FOLDER)
    os.chmod(folder, PRIVATE_FOLDER)
    return folder


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically, in a folder only its owner can enter."""
    private_folder(path.parent)
    _write_atomic(path, data, PRIVATE_FILE)


def write_public(path: Path, data: bytes) -> None:
    """Write a public file (the registry) atomically, as :func:`write_private` does, keeping its
    mode (0644 for a new file)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, data, mode)


def append_private(path: Path, data: bytes) -> None:
    """Append to a private log file (created 0600), synced to disk before returning."""
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path) -> None:
    """Make ``path`` an owner-only file, empty if it was missing (before SQLite opens it, so its
    journal and shared-memory files get the same mode). A missing folder is made 0700; one that
    exists is left as it is (it may be a shared one the operator chose, such as ``/var/lib/sgb``)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_FOLDER)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
    os.chmod(path, PRIVATE_FILE)


def check_private(path: Path, *, error: type[BrokerError] = KeyStoreError) -> None:
    """Refuse (``error``) a file its group or others may read or write. ``FileNotFoundError`` passes
    through for the caller to name what is missing."""
    _check_mode(path, path.stat().st_mode, error)


def read_private(path: Path, *, error: type[BrokerError] = KeyStoreError) -> bytes:
    """The bytes of a file only its owner may read; the mode is checked on the file opened, so
    it cannot be swapped between the check and the read. ``FileNotFoundError`` passes through."""
    with path.open("rb") as handle:
        _check_mode(path, os.fstat(handle.fileno()).st_mode, error)
        return handle.read()


def _check_mode(path: Path, mode: int, error: type[BrokerError]) -> None:
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error(f"{path} is readable by others; chmod 600 it")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        _write_all(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
