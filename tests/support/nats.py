"""One nats-server per pytest-xdist worker, emptied before each test, and checked after it.

The server is configured as :func:`broker.transport.natsserver.embedded_nats` configures the
broker's own (127.0.0.1, JetStream on a store of its own, ``max_payload`` 8 MiB), so a test sees
the same limits on either. Before a test every stream is deleted (key-value buckets are
``KV_*`` streams, so they go too): each test starts from an empty JetStream, as it did on a
server of its own. After a test no client may still be connected: a broker, an adapter or an
``sgb`` process left running would otherwise consume the next test's messages.

A test that needs a server to itself (it configures, kills, restarts or reads the store of the
server) asks for the ``own_nats_url`` fixture instead (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import nats

from broker.transport.natsserver import nats_server_binary
from tests.helpers import eventually

MAX_PAYLOAD: Final = 8 * 1024 * 1024  # as embedded_nats
_CLIENTS: Final = re.compile(rb"Listening for client connections on ([0-9.]+):([0-9]+)")
_MONITOR: Final = re.compile(rb"Starting http monitor on ([0-9.]+):([0-9]+)")
_READY: Final = b"Server is ready"


@dataclass(frozen=True)
class SharedServer:
    url: str
    monitor: str  # the monitoring endpoint (http://host:port), for /connz
    store: Path


def _config(store: Path) -> str:
    return (f'listen: "127.0.0.1:-1"\nhttp: "127.0.0.1:-1"\nmax_payload: {MAX_PAYLOAD}\n'
            f'jetstream {{ store_dir: "{store / "jetstream"}" }}\nlog_file: "{store / "nats-server.log"}"\n')


@contextlib.contextmanager
def shared_server(store: Path) -> Iterator[SharedServer]:
    """Start nats-server on ``store`` and wait until it is ready; stop it on exit."""
    store.mkdir(parents=True, exist_ok=True)
    conf, log = store / "nats-server.conf", store / "nats-server.log"
    conf.write_text(_config(store))
    with (store / "early.log").open("ab") as early:
        proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=early, start_new_session=True)
    try:
        yield asyncio.run(_ready(proc, log, store))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _ready(proc: subprocess.Popen[bytes], log: Path, store: Path) -> SharedServer:
    async def ready() -> SharedServer | None:
        assert proc.poll() is None, f"nats-server exited ({proc.returncode}); see {store}"
        text = log.read_bytes() if log.exists() else b""
        clients, monitor = _CLIENTS.search(text), _MONITOR.search(text)
        if clients is None or monitor is None or _READY not in text:
            return None
        return SharedServer(f"nats://{clients[1].decode()}:{clients[2].decode()}",
                            f"http://{monitor[1].decode()}:{monitor[2].decode()}", store)

    return await eventually(ready, what="the shared nats-server to be ready", timeout=15)


async def emptied(server: SharedServer) -> None:
    """Delete every stream (and so every key-value bucket) on the server."""
    nc = await nats.connect(server.url, name="test-cleaner", allow_reconnect=False)
    try:
        manager = nc.jsm()
        for info in await manager.streams_info():
            await manager.delete_stream(info.config.name or "")
        assert (await manager.account_info()).streams == 0, "a stream survived the cleaning"
    finally:
        await nc.close()


async def no_clients_left(server: SharedServer, *, timeout: float = 10.0) -> None:
    """Wait until no client is connected: whatever the test started has let go of the server."""
    async with aiohttp.ClientSession() as http:
        async def none_connected() -> bool:
            async with http.get(f"{server.monitor}/connz") as resp:
                body = await resp.json()
            return int(body["num_connections"]) == 0

        await eventually(none_connected, what="every client of the test to disconnect from the shared nats-server",
                         timeout=timeout)
