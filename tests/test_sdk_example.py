"""The SDK example in docs/ runs as an agency developer would run it, against a real broker."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

from broker.pipeline.service import Broker
from tests.conftest import ClientFactory
from tests.helpers import drain

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "agency_system.py"


@pytest.mark.timeout(90)
async def test_the_documented_example_sends_and_reads(broker: Broker, agency: ClientFactory) -> None:
    settings = broker.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")} | {
        "SGB_HOME": str(settings.home), "SGB_NATS_URL": settings.nats.url or "",
        "PYTHONPATH": str(EXAMPLE.parents[2])}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(EXAMPLE), "police-met", "la-camden", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert lines[0]["outcome"] == "receipt" and lines[0]["status"] == "routed"
    assert lines[0]["recipients"] == ["la-camden"]
    (delivered,) = await drain(await agency("la-camden"), want=1)
    assert delivered.claims["origin"]["jti"] == lines[0]["sent"]
