"""``sgb adapter dead-letters list|retry|discard`` as an operator runs it (a separate process),
beside a running adapter, a real broker and nats-server, and a real HTTP agency system that is
down, then back, then refusing: a retried letter reaches the agency system once, under the
delivery id it was first sent with, and the sender hears ``delivered``."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

from adapters.runtime.deadletters import DISCARDED, REFUSED, RETRIES_EXHAUSTED
from adapters.runtime.service import AdapterSettings, running_adapter
from broker.config import Settings
from broker.files import write_private
from broker.pipeline.service import Broker
from tests.conftest import ClientFactory
from tests.helpers import eventually, referral, sharing
from tests.support.casesystem import SECRET, CaseSystem, free_port, receipts, serve

pytestmark = pytest.mark.timeout(120)


async def sgb(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")} | {
        "SGB_HOME": str(settings.home), "SGB_NATS_URL": settings.nats.url or ""}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "broker.cli", "adapter", "dead-letters", *args,
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_dead_letters_are_listed_retried_once_and_discarded(broker: Broker, agency: ClientFactory,
                                                                  tmp_path: Path) -> None:
    settings, police = broker.settings, await agency("police-met")
    port, secret = free_port(), tmp_path / "webhook.secret"
    write_private(secret, SECRET)
    url = f"http://127.0.0.1:{port}/referrals"
    adapter = AdapterSettings(agency="la-camden", webhook_url=url, webhook_secret_file=secret, retry_for=0.5,
                              backoff_max=0.1)
    to_system = ("--webhook", url, "--webhook-secret-file", str(secret))
    async with running_adapter(settings, adapter, settings.nats.url or "") as la:
        async def dead_letters(n: int) -> bool:
            return la.deliverer.counts.dead_lettered >= n

        # The agency system is down for longer than the window: a dead letter, the police told.
        message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        await eventually(lambda: dead_letters(1), what="the dead letter")
        assert "not-delivered" in await receipts(police, message, {"not-delivered"})

        code, out, _ = await sgb(settings, "list", "--as", "la-camden", "--json")
        (letter,) = [orjson.loads(line) for line in out.splitlines()]
        key = letter["key"]
        assert code == 0 and key == letter["delivery"]
        assert (letter["type"], letter["sender"], letter["message"], letter["code"]) == (
            "referral", "police-met", message, RETRIES_EXHAUSTED)
        code, out, _ = await sgb(settings, "list", "--as", "la-camden")
        assert code == 0 and key in out and "1 dead letter" in out and RETRIES_EXHAUSTED in out
        assert "Okafor" not in out and "Okafor" not in orjson.dumps(letter).decode()  # codes, never content

        # Retried while the system is still down: it stays, saying so.
        code, out, _ = await sgb(settings, "retry", "--as", "la-camden", key, *to_system)
        assert code == 1 and f"{key}  failed" in out and la.deliverer.dead.entries() == [key]

        # The system is back: one retry hands it over, under the delivery id it was first sent with.
        system = CaseSystem()
        server = await serve(system, port)
        try:
            code, out, err = await sgb(settings, "retry", "--as", "la-camden", "--all", *to_system)
            assert code == 0, err[-2000:]
            assert f"{key}  delivered" in out and la.deliverer.dead.entries() == []
            assert list(system.taken) == [key] and system.posts == 1
            assert system.taken[key]["envelope"]["origin"]["jti"] == message
            assert "delivered" in await receipts(police, message, {"delivered"})
            code, out, err = await sgb(settings, "retry", "--as", "la-camden", key, *to_system)
            assert code == 1 and "no such dead letter" in err and system.posts == 1  # nothing twice

            # A delivery the system refuses for good, discarded by the operator: ids kept, logged.
            system.status = 422
            second = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            await eventually(lambda: dead_letters(2), what="the refused delivery's dead letter")
        finally:
            await server.close()
        (refused,) = la.deliverer.dead.letters()
        assert (refused.code, refused.message) == (REFUSED, second) and "HTTP 422" in refused.reason
        code, out, err = await sgb(settings, "discard", "--as", "la-camden")
        assert code == 1 and "--all" in err  # which ones must be said
        code, out, err = await sgb(settings, "discard", "--as", "la-camden", refused.key)
        assert code == 0 and f"{refused.key}  discarded" in out and refused.key in err  # logged, ids only
        assert la.deliverer.dead.entries() == []
        (kept,) = [orjson.loads(line) for line in (la.deliverer.dead.folder / DISCARDED).read_bytes().splitlines()]
        assert (kept["key"], kept["code"], kept["message"]) == (refused.key, REFUSED, second) and kept["by"]
        assert "reason" not in kept and b"Okafor" not in (la.deliverer.dead.folder / DISCARDED).read_bytes()
    assert la.deliverer.counts.delivered == 0  # every hand-over of the referral was the operator's one
