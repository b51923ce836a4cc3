"""The adapter's inbound side end to end: a police records system posts PPNs to its adapter's
signed endpoint and drops CSV exports in its folder; through a real broker and nats-server the
local authority and the school receive them. Bad documents are refused whole, with the field
named and no value echoed; retries and restarts send nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from adapters.service import Adapter, AdapterSettings, make_app, running_adapter
from adapters.sinks import signed_headers
from broker.config import Settings
from broker.registry import Registry
from broker.service import Broker, addressable, connected, jetstream
from broker.streams import INGRESS, ensure_topology
from tests.conftest import ClientFactory
from tests.helpers import drain, sharing
from tests.test_police import CSV, PPN

pytestmark = pytest.mark.timeout(90)
SECRET = b"police-rms-to-adapter-secret-0001"
Client = TestClient  # type: ignore[type-arg]


@contextlib.asynccontextmanager
async def police_adapter(settings: Settings, tmp_path: Path, **extra: Any) -> AsyncIterator[Adapter]:
    (tmp_path / "inbound.secret").write_bytes(SECRET)
    adapter = AdapterSettings(
        agency="police-met", drop_folder=tmp_path / "police-out", inbound_secret_file=tmp_path / "inbound.secret",
        local_authority="la-camden", poll=0.1,
        sharing={"referral": sharing("referral"), "encompass-notification": sharing("encompass-notification")},
        **extra)
    async with running_adapter(settings, adapter, settings.nats.url or "") as running:
        yield running


@pytest.fixture
async def police(broker: Broker, tmp_path: Path,
                 aiohttp_client: Callable[..., Awaitable[Client]]) -> AsyncIterator[tuple[Adapter, Client]]:
    async with police_adapter(broker.settings, tmp_path, inbound_folder=tmp_path / "police-in") as running:
        yield running, await aiohttp_client(make_app(running))


async def post(client: Client, fmt: str, body: bytes, *, key: str = "", secret: bytes = SECRET) -> Any:
    return await client.post(f"/records/{fmt}", data=body, headers=signed_headers(secret, body, key=key))


async def test_a_ppn_posted_to_the_adapter_reaches_the_la_and_the_school(
        police: tuple[Adapter, Client], agency: ClientFactory) -> None:
    _, client = police
    la, school = await agency("la-camden"), await agency("school-hillside")
    r = await post(client, "ppn-json", orjson.dumps(PPN), key="rms-incident-7781-v1")
    assert r.status == 202, await r.text()
    answer = await r.json()
    assert [m["type"] for m in answer["messages"]] == ["referral", "encompass-notification", "referral"]
    referrals = await drain(la, want=2)
    assert sorted(d.payload["child"]["name"]["given"] for d in referrals) == ["Ada", "Ben"]
    sent = {m["id"] for m in answer["messages"]}
    assert {d.claims["origin"]["jti"] for d in referrals} <= sent
    # the record's own decision details are laid over the configured sharing block
    assert referrals[0].claims["sharing"]["decidedBy"] == {"role": "Police officer", "staffRef": "PC1234"}
    assert referrals[0].claims["sharing"]["subjectInformed"] == "NOT_INFORMED_UNSAFE"
    (notice,) = await drain(school, want=1)
    assert notice.type == "encompass-notification" and notice.claims["origin"]["jti"] in sent

    again = await post(client, "ppn-json", orjson.dumps(PPN), key="rms-incident-7781-v1")  # the RMS retries
    assert again.status == 200 and (await again.json())["messages"] == answer["messages"]
    other = await post(client, "ppn-json", orjson.dumps(PPN | {"summary": "changed"}), key="rms-incident-7781-v1")
    assert other.status == 409 and (await other.json())["code"] == "key-reused"
    with pytest.raises(AssertionError):
        await drain(la, want=1, timeout=1.5)  # nothing twice


@pytest.mark.parametrize(("change", "field"), [
    (lambda r: r["children"][1].update(nhsNumber="12345"), "/1/children/1/nhsNumber"),
    (lambda r: r["children"][0].update(schoolAgencyId="police-met"), "/1/children/0/schoolAgencyId"),
])
async def test_a_document_with_one_bad_record_is_refused_whole(
        police: tuple[Adapter, Client], agency: ClientFactory, change: Any, field: str) -> None:
    running, client = police
    bad = copy.deepcopy(PPN)
    change(bad)
    r = await post(client, "ppn-json", orjson.dumps([PPN, bad]))
    assert r.status == 422 and r.content_type == "application/problem+json"
    problem = await r.json()
    assert problem["code"] == "unmappable" and problem["field"] == field
    text = await r.text()
    assert "Okafor" not in text and "9990001235" not in text and "12345" not in text
    assert running.submitter.counts.refused == {"unmappable": 1}
    la = await agency("la-camden")
    with pytest.raises(AssertionError):
        await drain(la, want=1, timeout=1.5)  # the good record was not sent either


async def test_requests_are_authenticated_and_bounded(police: tuple[Adapter, Client]) -> None:
    _, client = police
    body = orjson.dumps(PPN)
    r = await client.post("/records/ppn-json", data=body)
    assert r.status == 401 and (await r.json())["code"] == "unauthenticated"
    r = await post(client, "ppn-json", body, secret=b"someone-else")
    assert r.status == 401
    headers = signed_headers(SECRET, body, now=0)  # a replay from long ago
    assert (await client.post("/records/ppn-json", data=body, headers=headers)).status == 401
    r = await post(client, "fhir", body)
    assert r.status == 404 and (await r.json())["formats"] == ["canonical", "ppn-csv", "ppn-json"]
    big = b"[" + b" " * (4 * 1024 * 1024) + b"]"
    r = await client.post("/records/ppn-json", data=io.BytesIO(big), headers=signed_headers(SECRET, big))
    assert r.status == 413 and (await r.json())["code"] == "too-large"
    r = await post(client, "ppn-json", b"{not json")
    assert r.status == 422 and (await r.json())["field"] == "/"


async def test_csv_exports_in_the_drop_folder(police: tuple[Adapter, Client], agency: ClientFactory,
                                              tmp_path: Path) -> None:
    running, _ = police
    folder = tmp_path / "police-in"
    (folder / "ppn-csv" / "export-0001.csv").write_text(CSV)
    (folder / "ppn-csv" / "export-0002.csv.part").write_text(CSV)  # still being written: left alone
    bad = CSV.replace(",no,,,Kay", ",perhaps,,,Kay")
    (folder / "ppn-csv" / "export-0003.csv").write_text(bad)
    la = await agency("la-camden")
    referrals = await drain(la, want=2)
    assert sorted(d.payload["child"]["name"]["given"] for d in referrals) == ["Ada", "Ben"]
    for _ in range(100):
        if all(p.exists() for p in (folder / "failed" / "export-0003.csv.error.json",
                                    folder / "sent" / "export-0001.csv.json")):
            break
        await asyncio.sleep(0.1)
    sent = orjson.loads((folder / "sent" / "export-0001.csv.json").read_bytes())
    assert {d.claims["origin"]["jti"] for d in referrals} <= {m["id"] for m in sent["messages"]}
    assert not (folder / "ppn-csv" / "export-0001.csv").exists()  # the clear export is not kept
    assert b"Okafor" not in (folder / "sent" / "export-0001.csv.json").read_bytes()
    error = orjson.loads((folder / "failed" / "export-0003.csv.error.json").read_bytes())
    assert error["code"] == "unmappable" and error["field"] == "row 3/childPresent"
    assert (folder / "failed" / "export-0003.csv").exists() and (folder / "ppn-csv" / "export-0002.csv.part").exists()
    assert running.submitter.counts.documents == 1 and running.submitter.counts.refused == {"unmappable": 1}


async def test_an_outage_then_a_retry_sends_each_message_once(broker: Broker, agency: ClientFactory,
                                                              settings: Settings, registry: Registry, tmp_path: Path,
                                                              aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    """With the ingress stream gone the adapter answers 503; sent again (same key) once it is
    back, every message arrives once, and a restarted adapter does not send them again."""
    body = orjson.dumps(PPN)
    la = await agency("la-camden")
    async with connected(settings, settings.nats.url or "", name="setup") as nc:
        js = jetstream(nc, settings)
        await js.delete_stream(INGRESS)
        async with police_adapter(settings, tmp_path) as running:
            client = await aiohttp_client(make_app(running))
            r = await post(client, "ppn-json", body, key="incident-7781")
            assert r.status == 503 and (await r.json())["code"] == "unavailable"
            await ensure_topology(js, settings.streams, settings.pipeline, addressable(registry))
            r = await post(client, "ppn-json", body, key="incident-7781")
            assert r.status == 202, await r.text()
            ids = [m["id"] for m in (await r.json())["messages"]]
        async with police_adapter(settings, tmp_path) as running:  # restarted: its store remembers
            done = await running.submitter.submit(body, running.profile.formats["ppn-json"], key="incident-7781")
            assert list(done.messages) == ids and done.repeated
    referrals = await drain(la, want=2)
    assert sorted(d.claims["origin"]["jti"] for d in referrals) == sorted(ids[0::2])
    with pytest.raises(AssertionError):
        await drain(la, want=1, timeout=1.5)
