"""The adapter's inbound side end to end: a police records system posts PPNs to its adapter's
signed endpoint and drops CSV exports in its folder; through a real broker and nats-server the
local authority and the school receive them. Bad documents are refused whole, with the field
named and no value echoed; retries and restarts send nothing twice."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from adapters.formats.consent import agency_wide
from adapters.formats.mapping import MapContext, Outbound
from adapters.runtime.inbound import SubmissionStore
from adapters.runtime.inbound_folder import FolderIntake
from adapters.runtime.service import Adapter, AdapterSettings, make_app, running_adapter
from adapters.runtime.sinks import signed_headers
from broker.audit.reading import read_audit
from broker.config import Settings
from broker.errors import ConfigError
from broker.files import write_private
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.transport.topology import ensure_topology
from broker.wire.registry import Registry, addressable
from broker.wire.subjects import INGRESS
from tests.conftest import ClientFactory
from tests.helpers import drain, eventually, example, sharing
from tests.support.police import CSV, POLICE_SHARING, PPN, SECRET, police_adapter, post

pytestmark = pytest.mark.timeout(90)

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture
async def police(broker: Broker, tmp_path: Path,
                 aiohttp_client: Callable[..., Awaitable[Client]]) -> AsyncIterator[tuple[Adapter, Client]]:
    async with police_adapter(broker.settings, tmp_path, inbound_folder=tmp_path / "police-in") as running:
        yield running, await aiohttp_client(make_app(running))


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
    assert {k: referrals[0].claims["sharing"][k] for k in ("consentStatus", "nonConsentReason", "subjectInformed")} \
        == {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_INCREASE_RISK_OF_HARM",
            "subjectInformed": "NOT_INFORMED_UNSAFE"}  # the PPN's own, over the force's defaults
    assert referrals[0].claims["sharing"]["purpose"] == "CHILD_PROTECTION"
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
    (lambda r: r.pop("familyInformed"), "/1/familyInformed"),
    (lambda r: r.pop("withoutConsentReason"), "/1/withoutConsentReason"),
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


@pytest.mark.parametrize(("change", "field", "rule"), [
    (lambda b: b.pop("subjectInformed"), "/1/sharing/subjectInformed", "transparency.informed"),
    (lambda b: b.pop("nonConsentReason"), "/1/sharing/nonConsentReason", "consent.reason"),
    (lambda b: b.update(consentStatus="NOT_APPLICABLE"), "/1/sharing/consentStatus", "consent.not-applicable"),
    (lambda b: b.clear(), "/1/sharing/consentStatus", "consent.recorded"),
    (lambda b: b.update(lawfulBasis="UKGDPR_6_1_A"), "/1/sharing/consentStatus", "consent.basis-needs-consent"),
])
async def test_a_canonical_message_carries_the_cases_consent_facts(
        police: tuple[Adapter, Client], agency: ClientFactory, change: Any, field: str, rule: str) -> None:
    """The canonical form, as a school's system or an SDK integration sends it: the item's own
    ``sharing`` says whether consent was given and the family told; the configuration never does."""
    _, client = police
    facts = {k: sharing()[k] for k in ("consentStatus", "nonConsentReason", "subjectInformed")}
    good = {"type": "referral", "to": ["la-camden"], "payload": example("referral.example.json"), "sharing": facts}
    bad = copy.deepcopy(good)
    change(bad["sharing"])
    r = await post(client, "canonical", orjson.dumps([good, bad]))
    assert r.status == 422, await r.text()
    problem = await r.json()
    assert (problem["code"], problem["field"], problem["rule"]) == ("unmappable", field, rule)
    r = await post(client, "canonical", orjson.dumps(good), key="canonical-1")
    assert r.status == 202, await r.text()
    (referral,) = await drain(await agency("la-camden"), want=1)
    assert {k: referral.claims["sharing"][k] for k in facts} == facts
    assert referral.claims["sharing"]["decidedBy"] == POLICE_SHARING["referral"]["decidedBy"]  # the default


async def test_an_emergency_ppn_without_consent_facts_is_shared_and_flagged(
        police: tuple[Adapter, Client], agency: ClientFactory, settings: Settings) -> None:
    """Urgent child-protection shares are never held back for want of consent: a PPN needing
    immediate protection that does not say whether consent was sought or the family told goes to the
    local authority and the school, and the broker flags each share for IG review. The same PPN that
    is not an emergency is refused, naming the field."""
    _, client = police
    unsaid = {k: v for k, v in PPN.items() if k not in ("consent", "withoutConsentReason", "familyInformed",
                                                          "parentsInformed", "reasonNotInformed")}
    r = await post(client, "ppn-json", orjson.dumps(unsaid))
    assert r.status == 422 and (await r.json())["field"] == "/consent"
    r = await post(client, "ppn-json", orjson.dumps(unsaid | {"immediateProtectionNeeded": True}))
    assert r.status == 202, await r.text()
    sent = {m["id"]: m["type"] for m in (await r.json())["messages"]}
    referrals = await drain(await agency("la-camden"), want=2)
    assert {d.claims["sharing"]["consentStatus"] for d in referrals} == {"NOT_APPLICABLE"}
    assert all("subjectInformed" not in d.claims["sharing"] for d in referrals)
    (notice,) = await drain(await agency("school-hillside"), want=1)
    assert notice.claims["sharing"]["urgency"] == "EMERGENCY"

    async def flags() -> dict[str, list[str]] | None:
        async with connected(settings, settings.nats.url or "", name="t") as nc:
            records = [r async for r in read_audit(jetstream(nc, settings))]
        found = {r["deliveryId"]: r["flags"] for r in records if r["event"] == "shared" and r.get("message") in sent}
        return found if len(found) == 3 else None

    shared = await eventually(flags, what="the three shares in the audit log")
    assert all(set(f) >= {"emergency-consent-unrecorded", "emergency-family-informed-unrecorded"}
               for f in shared.values()), shared


async def test_an_emergency_canonical_message_may_leave_the_consent_facts_out(
        police: tuple[Adapter, Client], agency: ClientFactory) -> None:
    _, client = police
    item = {"type": "referral", "to": ["la-camden"], "payload": example("referral.example.json"), "sharing": {}}
    r = await post(client, "canonical", orjson.dumps(item))
    assert r.status == 422 and (await r.json())["rule"] == "consent.recorded"
    r = await post(client, "canonical", orjson.dumps(item | {"sharing": {"urgency": "EMERGENCY"}}))
    assert r.status == 202, await r.text()
    (referral,) = await drain(await agency("la-camden"), want=1)
    assert (referral.claims["sharing"]["consentStatus"], referral.claims["sharing"]["urgency"]) == (
        "NOT_APPLICABLE", "EMERGENCY")


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
    bad = CSV.replace(",no,,,,Kay", ",perhaps,,,,Kay")
    (folder / "ppn-csv" / "export-0003.csv").write_text(bad)
    la = await agency("la-camden")
    referrals = await drain(la, want=2)
    assert sorted(d.payload["child"]["name"]["given"] for d in referrals) == ["Ada", "Ben"]
    await eventually(lambda: (folder / "failed" / "export-0003.csv.error.json").exists()
                     and bool(list((folder / "sent").glob("*.json"))), what="the exports sent and refused")
    (record,) = (folder / "sent").glob("*.json")  # named by time and a hash of the file's name, not the name
    assert "export" not in record.name
    sent = orjson.loads(record.read_bytes())
    assert sent["file_ref"] == hashlib.sha256(b"export-0001.csv").hexdigest()[:12]
    assert {d.claims["origin"]["jti"] for d in referrals} <= {m["id"] for m in sent["messages"]}
    assert not (folder / "ppn-csv" / "export-0001.csv").exists()  # the clear export is not kept
    assert b"Okafor" not in record.read_bytes()
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


async def test_a_message_too_large_for_the_broker_refuses_the_whole_document(
        broker: Broker, agency: ClientFactory, settings: Settings, tmp_path: Path,
        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    """Checked before anything is sent: otherwise the notice would go and the referral be
    rejected by the broker after the agency system was told 202."""
    small = dataclasses.replace(settings, pipeline=dataclasses.replace(settings.pipeline, max_message_bytes=8000))
    long_story = PPN | {"details": "Officers attended. " * 400}  # 7,600 characters: only the referral carries it
    async with police_adapter(small, tmp_path) as running:
        client = await aiohttp_client(make_app(running))
        r = await post(client, "ppn-json", orjson.dumps(long_story))
        assert r.status == 413, await r.text()
        problem = await r.json()
        assert problem["code"] == "too-large" and problem["field"] == "message 0"
        assert "Officers" not in await r.text()
    with pytest.raises(AssertionError):
        await drain(await agency("school-hillside"), want=1, timeout=1.5)  # the small notice was not sent either


async def test_keys_with_dots_and_weak_or_open_secrets_are_refused(police: tuple[Adapter, Client],
                                                                  settings: Settings, tmp_path: Path) -> None:
    _, client = police
    body = orjson.dumps(PPN)
    r = await post(client, "ppn-json", body, key="incident.7781")  # '.' would make the signed text ambiguous
    assert r.status == 400 and (await r.json())["code"] == "malformed"
    weak = tmp_path / "weak.secret"
    write_private(weak, b"short")
    with pytest.raises(ConfigError, match="shorter than"):
        async with running_adapter(settings, AdapterSettings(agency="police-met", drop_folder=tmp_path / "o",
                                                             inbound_secret_file=weak), settings.nats.url or ""):
            pass
    shared = tmp_path / "shared.secret"
    shared.write_bytes(SECRET)
    shared.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        async with running_adapter(settings, AdapterSettings(agency="police-met", drop_folder=tmp_path / "o",
                                                             inbound_secret_file=shared), settings.nats.url or ""):
            pass
    bad = {"referral": agency_wide(sharing("referral")) | {"lawfulBasis": "BECAUSE"}}
    with pytest.raises(ConfigError, match=r"\[adapter.sharing.referral\]"):
        async with running_adapter(settings, AdapterSettings(agency="police-met", drop_folder=tmp_path / "o",
                                                             sharing=bad), settings.nats.url or ""):
            pass
    for fact in ("consentStatus", "nonConsentReason", "subjectInformed"):  # facts of each case, not settings
        bad = {"referral": agency_wide(sharing("referral")) | {fact: sharing("referral")[fact]}}
        with pytest.raises(ConfigError, match=rf"\[adapter.sharing.referral\] sets {fact}: .* facts of each case"):
            async with running_adapter(settings, AdapterSettings(agency="police-met", drop_folder=tmp_path / "o",
                                                                 sharing=bad), settings.nats.url or ""):
                pass


async def test_a_file_the_adapter_cannot_take_waits_then_is_set_aside(police: tuple[Adapter, Client],
                                                                     tmp_path: Path) -> None:
    """A fault of ours (here a mapper that breaks) neither stops the folder nor the adapter: the
    file is tried on a few passes, then moved to failed/ with code 'internal'."""
    running, _ = police

    def broken(body: bytes, context: MapContext) -> list[Outbound]:
        raise RuntimeError("a bug")

    folder = FolderIntake(tmp_path / "other-in", running.submitter, {"ppn-json": broken}, max_bytes=1 << 20,
                          poll=0.05, settle=0.0)
    (tmp_path / "other-in" / "ppn-json" / "incident.json").write_bytes(orjson.dumps(PPN))
    (tmp_path / "other-in" / "ppn-json" / "huge.json").write_bytes(b" " * (2 << 20))
    for _ in range(6):
        await folder.scan_once()
    error = orjson.loads((tmp_path / "other-in" / "failed" / "incident.json.error.json").read_bytes())
    assert error["code"] == "internal" and "a bug" not in error["reason"]
    assert orjson.loads((tmp_path / "other-in" / "failed" / "huge.json.error.json").read_bytes())["code"] == \
        "too-large"  # refused by its size, before it is read
    assert not running.tasks[0].done()


async def test_the_submission_store_forgets_after_its_horizon(tmp_path: Path) -> None:
    store = SubmissionStore(tmp_path / "submissions.sqlite")
    try:
        await store.begin("k1", "d1", ["m1", "m2"])
        await store.mark_sent(["m1", "m2"])
        assert await store.known("k1") == ("d1", ["m1", "m2"])
        assert await store.sent_among(["m1", "m2", "m3"]) == {"m1", "m2"}
        assert await store.prune(time.time() - 3600) == 0  # nothing is that old yet
        assert await store.prune(time.time() + 1) == 1
        assert await store.known("k1") is None and await store.sent_among(["m1", "m2"]) == set()
    finally:
        store.close()
