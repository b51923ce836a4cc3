"""Fixtures: a real nats-server per pytest-xdist worker, emptied before each test (or, for a test
that asks for ``own_nats_url``, one of its own), development keys per test, a running broker, and
agency clients. No mocks stand in for NATS or crypto."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.sdk import AgencyClient, SeenStore
from broker.audit import notes
from broker.config import AuditSettings, NatsSettings, PipelineSettings, Settings, StreamSettings
from broker.identity.devkeys import init_dev_keys
from broker.identity.keys import load_identity
from broker.pipeline import loop
from broker.pipeline.service import Broker, running_broker
from broker.transport.connection import connected, jetstream
from broker.transport.natsserver import embedded_nats
from broker.transport.topology import ensure_topology
from broker.web.app import audit_service, make_app
from broker.web.context import AuditService
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry, addressable
from tests.support.nats import SharedServer, emptied, no_clients_left, shared_server
from tests.support.witness import ORIGIN

EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return Catalogue()


@pytest.fixture(scope="session")
def key_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Development keys made once per session, copied into each test's home."""
    home = tmp_path_factory.mktemp("keys-template")
    init_dev_keys(home, home / "registry.json")
    return home


@pytest.fixture
def home(tmp_path: Path, key_template: Path) -> Path:
    target = tmp_path / "home"
    shutil.copytree(key_template, target)
    return target


@pytest.fixture(scope="session")
def worker_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    """This worker's nats-server, started once (a sync fixture: no event loop outlives a test)."""
    with shared_server(tmp_path_factory.mktemp("worker-nats")) as server:
        yield server


@pytest.fixture
async def shared_nats_url(worker_nats: SharedServer) -> AsyncIterator[str]:
    """The worker's server with no stream or bucket in it; after the test, no client left on it."""
    await emptied(worker_nats)
    yield worker_nats.url
    await no_clients_left(worker_nats)


@pytest.fixture
async def own_nats_url(tmp_path: Path) -> AsyncIterator[str]:
    """A nats-server of the test's own (store under ``tmp_path / "nats"``): for a test that kills,
    restarts or configures the server, or reads its store. ``settings`` (and so ``broker`` and
    ``agency``) then use it too."""
    async with embedded_nats(tmp_path / "nats") as url:
        yield url


@pytest.fixture
def nats_url(request: pytest.FixtureRequest) -> str:
    """The test's NATS: its own server if it asks for ``own_nats_url``, else the worker's, emptied."""
    name = "own_nats_url" if "own_nats_url" in request.fixturenames else "shared_nats_url"
    return str(request.getfixturevalue(name))


def make_settings(home: Path, url: str, instance: str = "test-1", **pipeline: float) -> Settings:
    return Settings(
        home=home, registry_path=home / "registry.json", instance=instance,
        nats=NatsSettings(url=url, request_timeout=2.0),
        streams=StreamSettings(duplicate_window=60.0),
        audit=AuditSettings(checkpoint_interval=0.5, publish_deadline=2.0),
        pipeline=PipelineSettings(**({"fetch_timeout": 0.2, "ack_wait": 5.0, "deadline_scan_interval": 0.3,  # type: ignore[arg-type]
                                      "publish_deadline": 2.0, "drain_timeout": 3.0} | pipeline)),
    )


@pytest.fixture
def settings(home: Path, nats_url: str) -> Settings:
    return make_settings(home, nats_url)


@pytest.fixture
def registry(home: Path, catalogue: Catalogue) -> Registry:
    """The development trust registry (no server: reading it needs none)."""
    return Registry.load(home / "registry.json", catalogue)


@pytest.fixture
async def topology(settings: Settings, registry: Registry) -> None:
    async with connected(settings, settings.nats.url or "", name="setup") as nc:
        await ensure_topology(jetstream(nc, settings), settings.streams, settings.pipeline, addressable(registry))


@pytest.fixture
async def broker(settings: Settings, topology: None) -> AsyncIterator[Broker]:
    async with running_broker(settings, settings.nats.url or "") as b:
        yield b


ClientFactory = Callable[[str], Awaitable[AgencyClient]]


@pytest.fixture
async def agency(settings: Settings, registry: Registry, catalogue: Catalogue, topology: None,
                 tmp_path: Path) -> AsyncIterator[ClientFactory]:
    """``await agency("police-met")`` gives a connected client for that agency."""
    async with contextlib.AsyncExitStack() as stack:
        async def make(agency_id: str) -> AgencyClient:
            nc = await stack.enter_async_context(connected(settings, settings.nats.url or "", name=agency_id))
            seen = SeenStore(tmp_path / "seen" / f"{agency_id}.sqlite")
            stack.callback(seen.close)
            return AgencyClient(nc, jetstream(nc, settings), registry, load_identity(settings.home, agency_id),
                                catalogue, seen=seen, request_timeout=2.0)

        yield make


@pytest.fixture
async def service(broker: Broker) -> AsyncIterator[AuditService]:
    """The audit index, its follower and verification next to the running broker."""
    async with audit_service(broker) as svc:
        yield svc


@pytest.fixture
async def client(broker: Broker, service: AuditService,
                 aiohttp_client: Callable[..., Awaitable[TestClient]]) -> TestClient:  # type: ignore[type-arg]
    """An HTTP client for the broker's whole web app: probes, API and IG pages."""
    return await aiohttp_client(make_app(broker, service))


# -- a real browser (Debian's Chromium, driven by Playwright) ---------------------------------------


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("CI needs Chromium for the browser tests: apt-get install chromium")
    pytest.skip("no Chromium here (apt-get install chromium); the browser tests run in CI")


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


@pytest.fixture
async def browser_page(tmp_path: Path) -> AsyncIterator[Any]:
    executable = chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            await context.close()
            await browser.close()


@pytest.fixture
async def live_url(broker: Broker, service: AuditService) -> AsyncIterator[str]:
    """The broker's web app on a real port, for the browser."""
    server = TestServer(make_app(broker, service), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
def log_signer() -> notes.NoteSigner:
    """A transparency log's signing key (the witness tests)."""
    return notes.NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


@pytest.fixture
def cosigner() -> notes.Cosigner:
    """A witness's cosigning key (the witness tests)."""
    return notes.Cosigner("witness.example.test/w1", Ed25519PrivateKey.generate())


@pytest.fixture
def short_naks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's nak delay cut to 50 ms, so a handed-back message comes back at once."""
    monkeypatch.setattr(loop, "_NAK_DELAY_MAX", 0.05)


@pytest.fixture
async def js(settings: Settings, topology: None) -> AsyncIterator[Any]:
    """A JetStream context on the test's server, its streams made (tests that drive a part alone)."""
    async with connected(settings, settings.nats.url or "", name="test-js") as nc:
        yield jetstream(nc, settings)


@pytest.fixture
def identity(home: Path, registry: Registry) -> Any:
    """The broker's own identity (its keys) in the test's home."""
    return load_identity(home, registry.broker_id)
