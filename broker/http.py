"""The broker's HTTP face. For now the two probes an operator needs; the metrics, the API and
the IG pages join this application in later issues."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from broker.service import Broker

BROKER_KEY: Final = web.AppKey("broker", Broker)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    broker = request.app[BROKER_KEY]
    checks = {
        "nats": "ok" if broker.nc.is_connected else "fail",
        "pipeline": "ok" if not broker.task.done() else "fail",
    }
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ready else "not-ready", "checks": checks},
                             status=200 if ready else 503)


def make_app(broker: Broker) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[BROKER_KEY] = broker
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
