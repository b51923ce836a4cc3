"""What the command groups share: exit codes, JSON lines on stdout, an agency's connected client."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import orjson

from broker.config import Settings
from broker.identity.keys import load_identity
from broker.transport.connection import connected, jetstream, nats_location
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry, addressable

if TYPE_CHECKING:
    from adapters.sdk import AgencyClient

EXIT_REJECTED: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_TAMPERED: Final = 5


def emit(obj: Any) -> None:
    """One JSON object on a line of stdout."""
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


@contextlib.asynccontextmanager
async def agency_client(settings: Settings, agency: str) -> AsyncIterator[AgencyClient]:
    """The SDK's client for ``agency`` (:func:`adapters.sdk.agency_client`), on the configured NATS
    or on an embedded one started for the command (whose streams the broker's credentials set up)."""
    from adapters.sdk import agency_client as sdk_client
    from broker.transport.topology import ensure_topology

    async with nats_location(settings) as url:
        if not settings.nats.url:
            registry = Registry.load(settings.registry_path, Catalogue())
            async with connected(settings, url, name="sgb-setup") as setup:
                await ensure_topology(jetstream(setup, settings), settings.streams, settings.pipeline,
                                      addressable(registry))
        async with sdk_client(settings, agency, url=url) as client:
            yield client


def offline_client(settings: Settings, agency: str) -> AgencyClient:
    """A client that builds and signs messages without NATS (``sgb send --out``)."""
    from adapters.sdk import AgencyClient

    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    return AgencyClient(None, None, registry, load_identity(settings.home, agency), catalogue)  # type: ignore[arg-type]
