"""The police side: a PPN as the force's records system posts it, a CSV export as it drops one, and
the force's adapter running against a broker."""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from adapters.runtime.service import Adapter, AdapterSettings, running_adapter
from adapters.runtime.sinks import signed_headers
from broker.config import Settings
from broker.files import write_private

Client = TestClient[web.Request, web.Application]
DATA = Path(__file__).resolve().parent.parent / "data"
PPN: dict[str, Any] = {
    "incidentReference": "MPS/2026/7781", "occurredAt": "2026-11-23T23:40:00Z", "location": "Family home",
    "summary": "Domestic abuse incident; two children in the household", "details": "Officers attended.",
    "categories": ["domestic-abuse"], "riskLevel": "high",
    "consent": "not-sought", "withoutConsentReason": "would-increase-risk-of-harm", "familyInformed": "no-unsafe",
    "parentsInformed": False, "reasonNotInformed": "Informing the parents would increase the risk",
    "doNotContactParents": True, "circumstances": "Argument between the adults; police called by a neighbour",
    "advice": "Be alert to tiredness",
    "officer": {"given": "Sam", "family": "Officer", "collarNumber": "PC1234"},
    "children": [
        {"given": "Ada", "family": "Okafor-Demo", "dateOfBirth": "2017-03-14", "nhsNumber": "9990001235",
         "present": True, "whereChildWas": "Upstairs", "voice": "Said she hid under the bed",
         "schoolAgencyId": "school-hillside"},
        {"given": "Ben", "family": "Okafor-Demo", "dateOfBirth": "2024-09-02", "present": False},
    ],
    "adults": [{"given": "Kay", "family": "Demo", "role": "alleged-perpetrator", "relationship": "Step-parent"}],
}
CSV = (DATA / "ppn-export.csv").read_text()  # as an RMS exports it
SECRET = b"police-rms-to-adapter-secret-0001"  # the records system's secret for the adapter's endpoint
DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy" / "adapters"
# The force's shipped agency-wide defaults: each record's consent facts are laid over them.
POLICE_SHARING = tomllib.loads((DEPLOY / "police-met.toml").read_text())["adapter"]["sharing"]


@contextlib.asynccontextmanager
async def police_adapter(settings: Settings, tmp_path: Path, **extra: Any) -> AsyncIterator[Adapter]:
    write_private(tmp_path / "inbound.secret", SECRET)
    adapter = AdapterSettings(
        agency="police-met", drop_folder=tmp_path / "police-out", inbound_secret_file=tmp_path / "inbound.secret",
        local_authority="la-camden", poll=0.1, sharing=POLICE_SHARING, **extra)
    async with running_adapter(settings, adapter, settings.nats.url or "") as running:
        yield running


async def post(client: Client, fmt: str, body: bytes, *, key: str = "", secret: bytes = SECRET) -> Any:
    return await client.post(f"/records/{fmt}", data=body, headers=signed_headers(secret, body, key=key))
