"""``sgb adapter run``: an agency's adapter as a long-running service.

Both ways at once, for the agency's kind (:mod:`adapters.profiles`):

- **in**: the agency system's records through ``POST /records/{format}`` (HMAC-signed, on the
  adapter's own address) and a watched drop folder, mapped whole, sent to the broker, answered
  with the message ids (:mod:`adapters.inbound`);
- **out**: deliveries from the agency's durable handed to the agency system by webhook or drop
  folder in its native format, or kept for the school's Operation Encompass inbox
  (:mod:`adapters.deliverer`).

``/healthz``, ``/readyz`` and ``/metrics`` on the same address, structured logs, a graceful stop
on SIGTERM. Settings come from the ``[adapter]`` section of the TOML settings file (the broker's
``--config`` / ``SGB_CONFIG``), with command-line options over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from adapters import inbound_http
from adapters.consent import CASE_FACTS
from adapters.deliverer import DeadLetters, Deliverer
from adapters.inbound import InboundCounts, Submitter
from adapters.inbound_folder import FolderIntake
from adapters.mapping import MapContext
from adapters.profiles import Profile, profile_for
from adapters.school import Inbox, render_sealed
from adapters.sdk import AgencyClient, SeenStore
from adapters.sinks import DropFolderSink, Sink, WebhookSettings, WebhookSink
from broker.catalogue import Catalogue
from broker.config import Settings
from broker.errors import ConfigError
from broker.keystore import load_identity
from broker.registry import Registry
from broker.service import check_key_file, connected, jetstream

log = structlog.get_logger("sgb.adapter")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterSettings:
    """One adapter process. Paths are the agency's own; secrets are files (mode 0600)."""

    agency: str
    # out: where deliveries go (one of these; a school with neither keeps them for its inbox)
    webhook_url: str | None = None
    webhook_secret_file: Path | None = None
    drop_folder: Path | None = None
    # in: where the agency system's records come from
    inbound_secret_file: Path | None = None   # enables POST /records/{format}
    inbound_folder: Path | None = None        # watched: <folder>/<format>/<file>
    local_authority: str | None = None        # police: the LA that receives referrals
    sharing: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # default sharing block by type
    attempts: int = 6
    timeout: float = 10.0
    max_document_bytes: int = 4 * 1024 * 1024
    poll: float = 1.0
    remember_submissions_days: float = 400.0  # a document sent again within this is not sent twice

    @classmethod
    def from_sources(cls, agency: str, section: Mapping[str, Any], **options: Any) -> AdapterSettings:
        """The ``[adapter]`` table of the settings file, then the command line's ``options``
        (None means not given). Raises :class:`ConfigError` naming every problem."""
        known = {f.name: f for f in fields(cls)} | {"webhook": None}
        problems = [f"unknown adapter setting {key!r}" for key in section if key not in known or key == "agency"]
        values: dict[str, Any] = {}
        for key, value in {**section, **{k: v for k, v in options.items() if v is not None}}.items():
            key = "webhook_url" if key == "webhook" else key
            if key not in known or key == "agency":
                continue
            default = getattr(cls(agency=agency), key)
            if key == "sharing":
                if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                    problems.append("[adapter.sharing] holds one table per message type")
                    continue
                values[key] = value
            elif key.endswith(("_file", "_folder")):
                values[key] = Path(str(value)).expanduser()
            elif isinstance(default, (int, float)) and not isinstance(value, bool):
                try:
                    values[key] = type(default)(value)
                except (TypeError, ValueError):
                    problems.append(f"adapter setting {key} must be a number")
            elif isinstance(value, str):
                values[key] = value
            else:
                problems.append(f"adapter setting {key} must be a string")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(agency=agency, **values)

    def check(self, kind: str) -> None:
        if self.webhook_url and self.drop_folder:
            raise ConfigError("give the agency system's webhook URL or a drop folder, not both")
        if not (self.webhook_url or self.drop_folder) and kind != "school":
            raise ConfigError("give the agency system's webhook URL (with its secret file) or a drop folder")
        if self.webhook_url and not self.webhook_secret_file:
            raise ConfigError("a webhook needs webhook_secret_file (the HMAC key shared with the agency system)")


MIN_SECRET_BYTES: Final = 16


def read_secret(path: Path) -> bytes:
    """A shared HMAC secret from a file only its owner may read, long enough to mean something."""
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} is readable by others; chmod 600 it")
        secret = path.read_bytes().strip()
    except FileNotFoundError as exc:
        raise ConfigError(f"no secret file at {path}") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"the secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


# Stand-ins for the case's facts, so that a configured block is checked against the sharing
# schema for everything else (the facts themselves come from each record).
_CASE_STAND_INS: Final = {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "CANNOT_BE_GIVEN",
                          "subjectInformed": "INFORMED"}


def check_sharing(sharing: Mapping[str, Mapping[str, Any]], catalogue: Catalogue) -> None:
    """A broken sharing default is the adapter's configuration fault: refuse to start, rather than
    refuse every document as if the agency's records were wrong. Configuration holds what is
    agency-wide (purpose, lawful basis and conditions, gateways, guidance edition, vocabulary, who
    decides by default, urgency by default); consent, the reason for sharing without it and
    whether the family was informed are facts of each case, carried by each record."""
    validator = catalogue.validator("sharing.v1.json")
    for typ, block in sharing.items():
        if catalogue.message_type(typ, 1) is None:
            raise ConfigError(f"[adapter.sharing.{typ}]: no such message type")
        facts = [key for key in CASE_FACTS if key in block]
        if facts:
            raise ConfigError(f"[adapter.sharing.{typ}] sets {', '.join(facts)}: whether consent was given (and why "
                              "not) and whether the family was informed are facts of each case, which each record "
                              "carries (see docs/adapters.md); remove them from the configuration")
        issue = Catalogue.first_issue(validator, _CASE_STAND_INS | dict(block))
        if issue is not None:
            raise ConfigError(f"[adapter.sharing.{typ}] is not a valid sharing block at {issue.pointer or '/'} "
                              f"('{issue.keyword}' failed)")


@dataclass
class Adapter:
    settings: AdapterSettings
    kind: str
    nc: NATS
    client: AgencyClient
    deliverer: Deliverer
    submitter: Submitter
    profile: Profile
    tasks: list[asyncio.Task[None]]
    metrics: CollectorRegistry
    inbound_secret: bytes | None
    inbox_pages: web.Application | None = None  # the school's Operation Encompass inbox, mounted at /inbox/


APP_KEY: Final = web.AppKey("adapter", Adapter)


class _RefusedCollector(Collector):
    def __init__(self, counts: InboundCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("sgb_adapter_documents_refused", "Native documents refused, by code",
                                   labels=["code"])
        for code, n in sorted(self._counts.refused.items()):
            family.add_metric([code], n)
        yield family


def _metrics(deliverer: Deliverer, inbound: InboundCounts) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    counts = deliverer.counts
    for name, help_text, read in (
        ("sgb_adapter_handed_over", "Deliveries the agency system accepted", lambda: counts.delivered),
        ("sgb_adapter_redeliveries", "Redeliveries acknowledged without a second hand-over",
         lambda: counts.redelivered),
        ("sgb_adapter_dead_letters", "Deliveries the agency system did not take (alert on any)",
         lambda: counts.dead_lettered),
        ("sgb_adapter_waiting_for_key", "Deliveries offered back because they are sealed to a key this adapter "
         "does not hold yet (reload its key file; alert if it keeps rising)", lambda: counts.waiting_for_key),
        ("sgb_adapter_documents_taken", "Native documents mapped and sent whole", lambda: inbound.documents),
        ("sgb_adapter_messages_sent", "Messages published to the broker from native documents",
         lambda: inbound.messages),
    ):
        Gauge(name, help_text, registry=registry).set_function(read)
    registry.register(_RefusedCollector(inbound))
    return registry


@contextlib.asynccontextmanager
async def _sink(settings: AdapterSettings, state: Path,
                client: AgencyClient) -> AsyncIterator[tuple[Sink, Inbox | None]]:
    """The hand-over to the agency system, and the school's inbox when that is where it goes."""
    if settings.drop_folder:
        yield DropFolderSink(settings.drop_folder), None
        return
    if settings.webhook_url:
        assert settings.webhook_secret_file
        secret = read_secret(settings.webhook_secret_file)
        async with aiohttp.ClientSession() as session:
            yield WebhookSink(session, WebhookSettings(url=settings.webhook_url, secret=secret,
                                                       attempts=settings.attempts, timeout=settings.timeout)), None
        return
    inbox = Inbox(state / "inbox.sqlite", client)
    try:
        yield inbox, inbox
    finally:
        inbox.close()


@contextlib.asynccontextmanager
async def running_adapter(settings: Settings, adapter: AdapterSettings, url: str) -> AsyncIterator[Adapter]:
    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    agency = registry.get(adapter.agency)
    if agency is None:
        raise ConfigError(f"{adapter.agency} is not in the trust registry")
    adapter.check(agency.kind)
    profile = profile_for(agency.kind)
    identity = load_identity(settings.home, adapter.agency)
    inbound_secret = read_secret(adapter.inbound_secret_file) if adapter.inbound_secret_file else None
    check_sharing(adapter.sharing, catalogue)
    state = settings.home / "adapters" / adapter.agency
    seen = SeenStore(state / "seen.sqlite")
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(seen.close)
        nc = await stack.enter_async_context(
            connected(settings, url, name=f"sgb-adapter-{adapter.agency}", party=adapter.agency))
        client = AgencyClient(nc, jetstream(nc, settings), registry, identity, catalogue, seen=seen,
                              request_timeout=settings.nats.request_timeout)
        sink, inbox = await stack.enter_async_context(_sink(adapter, state, client))
        render = profile.render if inbox is None else render_sealed
        deliverer = Deliverer(client, sink, DeadLetters(state / "dead-letters"), render=render)
        options = {"local_authority": adapter.local_authority} if adapter.local_authority else {}
        context = MapContext(agency=adapter.agency, registry=registry, catalogue=catalogue, options=options,
                             handed=seen.handed)
        pages = None
        if inbox is not None:
            from adapters.school import inbox_app, inbox_verifier

            pages = inbox_app(inbox, client, inbox_verifier(registry, settings.api, adapter.agency))
        submitter = Submitter(client, context, adapter.sharing, state,
                              max_message_bytes=settings.pipeline.max_message_bytes)
        now = time.time()  # bounded stores: what nothing will ask about again
        seen.prune_own_receipts(now - 7 * 86400)
        submitter.store.prune(now - adapter.remember_submissions_days * 86400)
        stack.callback(submitter.close)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(deliverer.run(stop), name="sgb-adapter-deliverer")]
        if adapter.inbound_folder:
            folder = FolderIntake(adapter.inbound_folder, submitter, profile.formats,
                                  max_bytes=adapter.max_document_bytes, poll=adapter.poll, settle=adapter.poll)
            tasks.append(asyncio.create_task(folder.run(stop), name="sgb-adapter-folder"))
        log.info("adapter running", agency=adapter.agency, kind=agency.kind, formats=sorted(profile.formats),
                 out="inbox" if inbox is not None else "drop folder" if adapter.drop_folder else "webhook",
                 inbound_http=inbound_secret is not None, inbound_folder=adapter.inbound_folder is not None)
        try:
            yield Adapter(adapter, agency.kind, nc, client, deliverer, submitter, profile, tasks,
                          _metrics(deliverer, submitter.counts), inbound_secret, pages)
        finally:
            stop.set()
            _, pending = await asyncio.wait(tasks, timeout=adapter.timeout * 2 + 5)
            for task in pending:
                task.cancel()  # the message in hand is not acked: JetStream gives it back
            log.info("adapter stopped", agency=adapter.agency, **deliverer.counts.__dict__,
                     documents=submitter.counts.documents, messages_sent=submitter.counts.messages)


def reload_keys(adapter: Adapter, settings: Settings) -> None:
    """After a key rotation (SIGHUP): the registry and this agency's key file, read again. Every
    check comes first; a key file the new registry does not back (a signing key it does not list,
    an encryption key it lists that the file lacks) is refused and the old keys stay in use."""
    client, agency = adapter.client, adapter.settings.agency
    new = Registry.load(settings.registry_path, client.catalogue)
    identity = load_identity(settings.home, agency)
    party = new.get(agency)
    if party is None:
        raise ConfigError(f"the new registry does not list {agency}")
    if new.broker_id != client.registry.broker_id:
        raise ConfigError(f"the new registry names broker {new.broker_id}, not {client.registry.broker_id}")
    check_key_file(party, identity, time.time())
    shared = client.registry  # the object the mappers' context holds too
    client.reload(new, identity)
    shared.replace_with(new)
    client.registry = shared
    log.info("keys reloaded", agency=adapter.settings.agency, signing_key=identity.sig_kid,
             decryption_keys=len(identity.kem))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    adapter = request.app[APP_KEY]
    checks = {
        "nats": {"state": "ok" if adapter.nc.is_connected else "fail", "detail": "connection to NATS"},
        "deliverer": {"state": "fail" if adapter.tasks[0].done() else "ok", "detail": "hand-over loop"},
    }
    if len(adapter.tasks) > 1:
        checks["drop-folder"] = {"state": "fail" if adapter.tasks[1].done() else "ok",
                                 "detail": "watching the inbound drop folder"}
    ready = all(c["state"] == "ok" for c in checks.values())
    return web.json_response({"status": "ready" if ready else "not-ready", "checks": checks},
                             status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[APP_KEY].metrics),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(adapter: Adapter) -> web.Application:
    app = web.Application(client_max_size=adapter.settings.max_document_bytes)
    app[APP_KEY] = adapter
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if adapter.inbound_secret is not None:
        inbound_http.add_routes(app, adapter.submitter, adapter.profile.formats, adapter.inbound_secret,
                                max_bytes=adapter.settings.max_document_bytes)
    if adapter.inbox_pages is not None:
        app.add_subapp("/inbox/", adapter.inbox_pages)
    return app
