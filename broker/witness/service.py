"""``sgb witness serve``: the witness over HTTP, on the one probes app (:mod:`broker.http.probes`).

Routes: ``POST /add-checkpoint`` (the submission prefix is the root), ``GET /<sha256 hex of the
origin>/checkpoint`` (the latest cosigned checkpoint, the spec's monitoring API), and the probes.
``/readyz`` has a ``forks`` check that fails while any fork is recorded; ``/metrics`` counts
cosignatures, refusals by reason, and ``sgb_witness_forks_total`` by origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from broker.audit import notes
from broker.config import Settings
from broker.errors import ConfigError, StoreError
from broker.http import probes
from broker.http.probes import Check
from broker.witness.keys import key_path, load_key, log_keys, state_path
from broker.witness.protocol import Refused, open_signed, parse_request
from broker.witness.state import Outcome, WitnessState

log = structlog.get_logger("sgb.witness")

SIZE_CONTENT_TYPE = "text/x.tlog.size"


@dataclass
class Witness:
    """A witness ready to answer: its key, the logs it witnesses, its state, its metrics."""

    cosigner: notes.Cosigner
    logs: Mapping[str, tuple[notes.VerifierKey, ...]]
    state: WitnessState
    max_body: int = 64 * 1024
    request_deadline: float = 10.0
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self.forks = Counter("sgb_witness_forks", "Forks seen: a log signed two different trees for one size "
                             "(alert on any; the witness refused to cosign)", ["origin"], registry=self.registry)
        self.cosigned = Counter("sgb_witness_cosigned", "Checkpoints cosigned", ["origin"], registry=self.registry)
        self.refused = Counter("sgb_witness_refused", "add-checkpoint requests refused, by reason", ["reason"],
                               registry=self.registry)
        for origin in self.logs:
            self.forks.labels(origin=origin)
            self.cosigned.labels(origin=origin)
        self._by_hash = {hashlib.sha256(o.encode("utf-8")).hexdigest(): o for o in self.logs}

    async def add_checkpoint(self, body: bytes) -> Outcome:
        """Check and cosign one request body; raises :class:`Refused` (with the 409's size)."""
        request = parse_request(body)
        signed = open_signed(request, self.logs)
        outcome = await self.state.add(request, signed, self.cosigner)
        fork = outcome.fork
        if fork is not None:
            if fork.new:
                self.forks.labels(origin=fork.origin).inc()
            log.error("witness: fork: the log signed two different trees for one size; not cosigned",
                      origin=fork.origin, size=fork.size, old_size=request.old_size,
                      checkpoint_size=signed.checkpoint.size, first_seen=fork.new)
        if outcome.refused is not None:
            raise outcome.refused
        self.cosigned.labels(origin=signed.checkpoint.origin).inc()
        return outcome

    async def readiness(self) -> dict[str, Check]:
        try:
            forks = await self.state.forks()
        except StoreError as exc:
            return {"store": Check("fail", str(exc))}
        checks = {"store": Check("ok", "the witness state answers")}
        if forks:
            logs = ", ".join(f"{origin} ({n})" for origin, n in forks.items())
            checks["forks"] = Check("fail", f"forks recorded for {logs}: the log signed two trees for one size; "
                                    "see docs/transparency.md, Witnesses")
        else:
            checks["forks"] = Check("ok", f"no fork seen in {len(self.logs)} log(s)")
        return checks

    def make_app(self) -> web.Application:
        app = probes.make_app(metrics=probes.exposition(self.registry), readiness=self.readiness,
                              client_max_size=self.max_body)
        app.router.add_post("/add-checkpoint", self._add_checkpoint)
        app.router.add_get("/{origin_hash:[0-9a-f]{64}}/checkpoint", self._checkpoint)
        return app

    async def _add_checkpoint(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(self.request_deadline):
                body = await request.read()  # past client_max_size: 413 from aiohttp
                outcome = await self.add_checkpoint(body)
        except Refused as refused:
            self.refused.labels(reason=refused.reason).inc()
            if refused.status == 409:
                latest = await self._size_of(body)
                return web.Response(status=409, text=f"{latest}\n", content_type=SIZE_CONTENT_TYPE)
            return web.Response(status=refused.status, text=refused.detail + "\n")
        except web.HTTPRequestEntityTooLarge:
            self.refused.labels(reason="too-large").inc()
            raise
        except (TimeoutError, StoreError):
            self.refused.labels(reason="unavailable").inc()
            log.warning("witness: a request was not answered in time", deadline=self.request_deadline)
            return web.Response(status=503, text="the witness could not answer in time\n")
        assert outcome.line is not None
        return web.Response(text=outcome.line, content_type="text/plain", charset="utf-8")

    async def _size_of(self, body: bytes) -> int:
        origin = parse_request(body).checkpoint.origin  # parsed before a 409 is possible
        latest = await self.state.latest(origin)
        return 0 if latest is None else latest[0]

    async def _checkpoint(self, request: web.Request) -> web.Response:
        origin = self._by_hash.get(request.match_info["origin_hash"])
        latest = None if origin is None else await self.state.latest(origin)
        if latest is None:
            return web.Response(status=404, text="no checkpoint cosigned for that log\n")
        return web.Response(body=latest[2], content_type="text/plain", charset="utf-8")


@contextlib.asynccontextmanager
async def running_witness(settings: Settings) -> AsyncIterator[Witness]:
    """The witness of ``settings``: its key (``sgb witness init``), its logs, its state, open."""
    logs = log_keys(settings.witness.logs)
    if not logs:
        raise ConfigError("[witness] logs names no log to witness (origin = \"<verifier key>\")")
    cosigner = load_key(key_path(settings))
    async with WitnessState(state_path(settings)) as state:
        yield Witness(cosigner, logs, state, max_body=settings.witness.max_body,
                      request_deadline=settings.witness.request_deadline)


@contextlib.asynccontextmanager
async def serving(witness: Witness, host: str, port: int, *, deadline: float = 10.0) -> AsyncIterator[int]:
    """The HTTP service on ``host:port`` (0: any free port); yields the port it listens on."""
    runner = web.AppRunner(witness.make_app(), access_log=None, shutdown_timeout=deadline)
    async with asyncio.timeout(deadline):
        await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        async with asyncio.timeout(deadline):
            await site.start()
        bound = int(runner.addresses[0][1]) if runner.addresses else port
        log.info("witness serving", host=host, port=bound, key=str(witness.cosigner.key), logs=sorted(witness.logs))
        yield bound
    finally:
        async with asyncio.timeout(deadline + 5):
            await runner.cleanup()
