"""Where NATS is and how to connect to it: an external deployment (``SGB_NATS_URL``), or the
embedded server of this home (adopted when already running, started otherwise, and supervised
for a long-running broker); connections with each party's credentials, TLS and inbox prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from broker.config import Settings
from broker.identity import natsauth
from broker.identity.keys import BROKER_ID
from broker.transport.errors import nats_failures, quietly
from broker.transport.natsserver import EmbeddedServer

log = structlog.get_logger("sgb.nats")


@contextlib.asynccontextmanager
async def nats_location(settings: Settings) -> AsyncIterator[str]:
    """``SGB_NATS_URL`` if set; else the embedded server already running on this home; else a
    new embedded server for the lifetime of the context."""
    if settings.nats.url:
        yield settings.nats.url
        return
    server = embedded_server(settings)
    if not server.adopt():
        await server.start()
    try:
        assert server.url is not None
        yield server.url
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def supervised_nats(settings: Settings) -> AsyncIterator[EmbeddedServer | None]:
    """For a broker that runs for long (``sgb serve``): the embedded server of this home, started or
    adopted, kept alive by :meth:`EmbeddedServer.supervise` and stopped with the broker. None when
    ``SGB_NATS_URL`` names an external deployment (which looks after itself)."""
    if settings.nats.url:
        yield None
        return
    server = embedded_server(settings)
    if not server.adopt():
        await server.start()
    stop = asyncio.Event()
    watch = asyncio.create_task(server.supervise(stop, interval=settings.nats.supervise_interval,
                                                 give_up_after=settings.nats.supervise_give_up),
                                name="sgb-nats-supervisor")
    try:
        yield server
    finally:
        stop.set()
        await watch
        await server.stop(adopted_too=True)


def embedded_server(settings: Settings) -> EmbeddedServer:
    """The embedded nats-server for this home, with the authorisation ``sgb keys init`` wrote, and
    TLS when ``<home>/nats/tls/server.pem`` and ``server.key`` are there (clients then trust
    ``<home>/nats/tls/ca.pem``)."""
    extra = []
    if (settings.nats_dir / natsauth.AUTH_FILE).exists():
        extra.append(f'include "{natsauth.AUTH_FILE}"')
    tls = settings.nats_dir / "tls"
    if (tls / "server.pem").exists() and (tls / "server.key").exists():
        extra.append(f'tls {{ cert_file: "{tls / "server.pem"}", key_file: "{tls / "server.key"}" }}')
    return EmbeddedServer(settings.nats_dir, max_payload=settings.nats.embedded_max_payload,
                          extra_config="\n".join(extra))


@contextlib.asynccontextmanager
async def embedded(settings: Settings) -> AsyncIterator[str]:
    """A new embedded server for this home (tests and the demo), stopped on exit."""
    server = embedded_server(settings)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def connected(settings: Settings, url: str, *, name: str, party: str | None = None,
                    on_reconnect: Callable[[], None] | None = None) -> AsyncIterator[NATS]:
    """A NATS connection as ``party`` (an agency id; None: the broker). Credentials: the
    configured nkey seed for the broker, else ``<home>/keys/nats/<party>.nk`` when present;
    an agency's connection uses its own inbox prefix, the only one its permissions allow."""
    async def on_error(exc: Exception) -> None:
        log.warning("nats error", error=str(exc))

    holder: list[NATS] = []

    async def on_disconnected() -> None:
        if holder and not (holder[0].is_closed or holder[0].is_draining):
            log.warning("nats disconnected; reconnecting")

    async def on_reconnected() -> None:
        log.info("nats reconnected")
        if on_reconnect is not None:
            on_reconnect()

    options: dict[str, object] = {
        "name": name, "connect_timeout": settings.nats.connect_timeout, "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5, "error_cb": on_error, "allow_reconnect": True,
        "disconnected_cb": on_disconnected, "reconnected_cb": on_reconnected,
    }
    seed = settings.nats.nkey_seed if party is None else None
    candidate = natsauth.seed_path(settings.home, party or BROKER_ID)
    if seed is None and candidate.exists():
        seed = candidate
    if seed is not None:
        options["nkeys_seed"] = str(seed)
    home_ca = settings.nats_dir / "tls" / "ca.pem"
    ca = settings.nats.tls_ca_path or (home_ca if home_ca.exists() else None)
    if ca or settings.nats.tls_cert_path:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if settings.nats.tls_cert_path:
            context.load_cert_chain(str(settings.nats.tls_cert_path),
                                    str(settings.nats.tls_key_path) if settings.nats.tls_key_path else None)
        options["tls"] = context
    if party is not None:
        options["inbox_prefix"] = natsauth.inbox_prefix(party)
    if settings.nats.user:
        options |= {"user": settings.nats.user, "password": settings.nats.password}
    servers = [u.strip() for u in url.split(",") if u.strip()]  # SGB_NATS_URL may list a cluster's nodes
    # nats-py retries a refused connection for ever; the first connection has a deadline
    with nats_failures(f"cannot connect to NATS at {url} (check the address and this party's credentials)"):
        nc = await asyncio.wait_for(nats.connect(servers, **options), settings.nats.connect_timeout * 3)
    holder.append(nc)
    try:
        yield nc
    finally:
        with quietly():
            await asyncio.wait_for(nc.drain(), settings.nats.request_timeout)
        if not nc.is_closed:
            await nc.close()


def jetstream(nc: NATS, settings: Settings) -> JetStreamContext:
    """A JetStream context whose requests wait ``[nats] request_timeout`` (pipelined publishes go
    through :mod:`broker.transport.acks`, not nats-py's ``publish_async``)."""
    return nc.jetstream(timeout=settings.nats.request_timeout)
