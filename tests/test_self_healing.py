"""Faults injected into real processes (issue 12): ``sgb serve`` and its embedded nats-server.

- A broker killed with SIGKILL leaves its nats-server running on its own log file; the next
  broker adopts it, and the server survives logging (a bad login used to kill it through the
  dead broker's pipe).
- A nats-server killed under a running broker is started again on the same store and port, and
  clients (an agency's SDK client here) carry on without a restart.
- When it cannot be brought back, ``/healthz`` fails (so systemd acts), and SIGTERM still keeps
  the drain deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from adapters.sdk import AgencyClient
from broker.config import Settings
from broker.identity.devkeys import init_dev_keys
from broker.identity.keys import load_identity
from broker.transport.connection import connected, jetstream
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from tests.helpers import eventually, referral, sharing
from tests.support.casesystem import free_port
from tests.support.cli import serving

pytestmark = pytest.mark.timeout(90)




def _serve(home: Path, port: int, config: Path | None = None
           ) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """``sgb serve --http`` with one worker."""
    return serving(home, "--workers", "1", "--http", f"127.0.0.1:{port}",
                   *(["--config", str(config)] if config else []), log=f"serve-{port}.log")


async def _status(port: int, path: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
            return r.status
    except aiohttp.ClientError:
        return None


async def _until_status(port: int, path: str, status: int, what: str, timeout: float = 30.0) -> None:
    async def probe() -> bool:
        return await _status(port, path) == status
    await eventually(probe, what=what, timeout=timeout, every=0.1)


def _nats(home: Path) -> tuple[str, int]:
    url, pid = (home / "nats" / "url").read_text().split()
    return url, int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_everything(home: Path) -> None:
    """Tidy up a nats-server the test left running in its own session."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(_nats(home)[1], signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "h"
    init_dev_keys(home, home / "registry.json")
    yield home
    _stop_everything(home)


async def _bad_login(url: str) -> bytes:
    host, port = url.removeprefix("nats://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"user":"nobody","pass":"wrong","verbose":false}\r\nPING\r\n')
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def _ping(url: str) -> bool:
    host, port = url.removeprefix("nats://").split(":")
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    try:
        return (await asyncio.wait_for(reader.readline(), 5)).startswith(b"INFO")
    finally:
        writer.close()


async def test_a_killed_broker_leaves_a_server_that_survives_its_own_logging(home: Path) -> None:
    port = free_port()
    async with _serve(home, port) as first:
        await _until_status(port, "/readyz", 200, "the first broker to be ready")
        url, pid = _nats(home)
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert _alive(pid)  # the server lives on by itself
    async with _serve(home, port) as second:
        await _until_status(port, "/readyz", 200, "the second broker to be ready")
        assert _nats(home) == (url, pid)  # adopted, not started twice on one store
        assert b"Authorization Violation" in await _bad_login(url)  # nats-server logs this line
        assert await _ping(url) and _alive(pid)  # ... and is still there after writing it
        assert await _status(port, "/readyz") == 200
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0
    assert not _alive(pid) or not await _ping(url)  # the broker that supervised it stopped it


async def test_a_killed_nats_server_is_restarted_and_clients_carry_on(home: Path, tmp_path: Path) -> None:
    port = free_port()
    async with _serve(home, port) as serve:
        await _until_status(port, "/readyz", 200, "the broker to be ready")
        url, pid = _nats(home)
        settings = Settings(home=home, registry_path=home / "registry.json", instance="client").with_nats_url(url)
        catalogue = Catalogue()
        registry = Registry.load(settings.registry_path, catalogue)
        async with connected(settings, url, name="police", party="police-met") as nc:
            police = AgencyClient(nc, jetstream(nc, settings), registry, load_identity(home, "police-met"), catalogue)
            first = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            assert (await police.wait_outcome(first, timeout=20)).type == "receipt"
            os.kill(pid, signal.SIGKILL)

            async def restarted() -> bool:
                return _nats(home)[1] != pid and await _ping(url)
            await eventually(restarted, what="the supervisor to start nats-server again", timeout=30)
            assert _nats(home)[0] == url  # same port: clients reconnect by themselves
            await _until_status(port, "/readyz", 200, "the broker to be ready again")

            async def sent() -> str | None:
                try:
                    return await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
                except Exception:  # still reconnecting
                    return None
            second = await eventually(sent, what="the client to publish again", timeout=30, every=0.2)
            assert (await police.wait_outcome(second, timeout=20)).type == "receipt"
        assert await _status(port, "/healthz") == 200
        serve.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serve.wait(), 30) == 0


async def test_healthz_fails_while_nats_cannot_be_restarted_and_sigterm_keeps_the_deadline(home: Path) -> None:
    port = free_port()
    config = home / "broker.toml"
    config.write_text("[nats]\nsupervise_interval = 0.2\nsupervise_give_up = 1.0\n[pipeline]\ndrain_timeout = 4.0\n")
    async with _serve(home, port, config) as serve:
        await _until_status(port, "/readyz", 200, "the broker to be ready")
        url, pid = _nats(home)
        nats_port = int(url.rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        async def taken() -> bool:
            try:
                squatter.bind(("127.0.0.1", nats_port))
            except OSError:
                # The supervisor may have won the race and restarted it: kill that one too.
                with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
                    os.kill(_nats(home)[1], signal.SIGKILL)
                return False
            squatter.listen()
            return True
        await eventually(taken, what="the dead server's port to come free")
        try:
            await _until_status(port, "/healthz", 503, "/healthz to fail while NATS cannot come back")
            assert await _status(port, "/readyz") == 503
            serve.send_signal(signal.SIGTERM)
            await asyncio.wait_for(serve.wait(), 4.0 + 5.0)  # the drain deadline, and a margin for the interpreter
        finally:
            squatter.close()
