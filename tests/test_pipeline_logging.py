"""The pipeline's logging at the level brokers run at under load (``ERROR``): no per-message lines
and no per-message context, yet a bug's error line still names the message it met; at ``INFO``
the lines carry the message's context as before."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest

from broker import logs
from broker.config import Settings
from broker.pipeline import loop
from broker.pipeline.service import running_broker
from tests.conftest import ClientFactory
from tests.helpers import referral, sharing
from tests.support.pipeline import Buggy as _Buggy

pytestmark = pytest.mark.timeout(60)


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("level", ["ERROR", "INFO"])
async def test_a_bug_s_error_line_names_its_message_at_any_level(
        level: str, settings: Settings, topology: None, agency: ClientFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "_NAK_DELAY_MAX", 0.05)  # the redelivery comes at once
    out = io.StringIO()
    logs.configure(level=level, json=True, stream=out)
    police = await agency("police-met")
    async with running_broker(settings, settings.nats.url or "", policy=_Buggy(times=1)) as broker:
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        assert (await police.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
        assert broker.pipeline.counters.internal == 1
    lines = _lines(out)
    (bug,) = [line for line in lines if line["event"].startswith("internal error")]
    assert bug["level"] == "error" and bug["msg_id"] == jti and bug["sender"] == "police-met"
    assert isinstance(bug["seq"], int) and "ZeroDivisionError" in str(bug.get("exception"))
    processed = [line for line in lines if line["event"] == "message processed"]
    if level == "ERROR":
        assert all(line["level"] == "error" for line in lines) and processed == []
    else:
        (done,) = processed
        assert done["msg_id"] == jti and done["message"] == jti and done["type"] == "referral"
