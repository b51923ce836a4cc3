"""The one HTTP app factory of every service of ours, the broker's and the adapters': ``/healthz``,
``/readyz`` and ``/metrics``, with whatever routes the service adds to the app it returns.

Readiness is a set of named checks, each with its state (``ok``, ``warn``, ``fail``) and a detail
that says what it means; ``warn`` keeps the service ready, any ``fail`` makes ``/readyz`` answer
503 so a load balancer or orchestrator stops sending it work. Liveness (``/healthz``) is ``ok``
unless the service says it cannot recover by itself and should be restarted. The metrics are
what the service's :data:`Exposition` gives: its Prometheus registry (:func:`exposition`), or
for ``sgb serve --workers N`` every worker's, merged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

State = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness (or liveness) check: its state and what it means, in words."""

    state: State
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"state": self.state, "detail": self.detail}


Readiness = Callable[[], Awaitable[Mapping[str, Check]]]
Liveness = Callable[[], Check]
Exposition = Callable[[], Awaitable[bytes]]  # the /metrics body, in the Prometheus text format


def exposition(registry: CollectorRegistry) -> Exposition:
    """The metrics of one process: its registry."""
    async def latest() -> bytes:
        return generate_latest(registry)
    return latest


def report(checks: Mapping[str, Check]) -> tuple[dict[str, Any], int]:
    """The ``/readyz`` body and status: every check by name; 503 if any fails."""
    ready = all(c.state != "fail" for c in checks.values())
    body = {"status": "ready" if ready else "not-ready", "checks": {k: v.as_json() for k, v in checks.items()}}
    return body, 200 if ready else 503


def make_app(*, metrics: Exposition, readiness: Readiness, liveness: Liveness | None = None,
             client_max_size: int = 64 * 1024, middlewares: Iterable[Middleware] = ()) -> web.Application:
    """An aiohttp app with the three probes; the caller adds its own routes to it."""

    async def healthz(request: web.Request) -> web.Response:
        """Alive, unless ``liveness`` fails: then a supervisor (systemd, an orchestrator) should
        restart the whole service."""
        check = liveness() if liveness is not None else None
        if check is not None and check.state == "fail":
            return web.json_response({"status": "failing", "detail": check.detail}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        body, status = report(await readiness())
        return web.json_response(body, status=status)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=await metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=client_max_size, middlewares=list(middlewares))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
