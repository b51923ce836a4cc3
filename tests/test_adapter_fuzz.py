"""The adapters' inbound side fuzzed from their own schemas (issue 12). Native documents are
generated from ``adapters/native/*.json`` with hypothesis-jsonschema, then mutated one fault at a
time (a member dropped, a value of the wrong type or outside its codes, an unknown member, an
overlong text, the whole document replaced); FHIR Bundles are the published examples varied and
mutated likewise. They go to running adapters on a real nats-server, through the signed endpoint
(``POST /records/{format}``) and the drop folder. The native schema itself says which documents
are valid, and then:

- a valid document is taken (202, or 200 when sent before), or refused for a stated reason: never
  ``internal``, never a 500;
- an invalid one is refused ``unmappable``, naming the field (a JSON pointer into the document,
  the place of the fault or next to it; a CSV's exact row and column);
- no value of the document (the injected ones, and every generated text of 8 characters or more)
  is in the answer or in the drop folder's error file.

Derandomized, a bounded number of examples per format: CI sees the same documents every run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import jsonschema_rs
import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import strategies as st

from adapters.formats import consent
from adapters.runtime.inbound_folder import FAILED, SENT, FolderIntake
from adapters.runtime.service import Adapter, AdapterSettings, make_app, running_adapter
from adapters.runtime.sinks import signed_headers
from adapters.sdk import Delivery
from broker.config import Settings
from broker.files import write_private
from tests.fuzzing import (
    CONSENT_KEYS,
    FACTS,
    JUNK,
    RUNS,
    Tally,
    bridge_hypothesis_jsonschema,
    cases,
    examples,
    faults,
    generating,
    judge,
    judged,
    related,
    without_local_constants,
)
from tests.support.fhir import consent_extension, referral_bundle

pytestmark = pytest.mark.timeout(240)
Client = TestClient  # type: ignore[type-arg]
NATIVE: Final = Path(__file__).resolve().parent.parent / "adapters" / "formats" / "native"
DEPLOY: Final = Path(__file__).resolve().parent.parent / "deploy" / "adapters"
SECRET: Final = b"fuzzing-the-adapter-inbound-0001"


@pytest.fixture(autouse=True)
def _generating(monkeypatch: pytest.MonkeyPatch) -> None:
    bridge_hypothesis_jsonschema(monkeypatch)
    without_local_constants(monkeypatch)


def schema(name: str) -> dict[str, Any]:
    return orjson.loads((NATIVE / name).read_bytes())  # type: ignore[no-any-return]


# -- running adapters ---------------------------------------------------------------------------------------

def shipped_sharing(agency: str) -> dict[str, Any]:
    return tomllib.loads((DEPLOY / f"{agency}.toml").read_text())["adapter"]["sharing"]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def adapter(settings: Settings, tmp_path: Path, agency: str,
                  aiohttp_client: Callable[..., Awaitable[Client]]) -> AsyncIterator[tuple[Adapter, Client]]:
    write_private(tmp_path / f"{agency}.secret", SECRET)
    adapter_settings = AdapterSettings(agency=agency, drop_folder=tmp_path / f"{agency}-out",
                                       local_authority="la-camden", inbound_secret_file=tmp_path / f"{agency}.secret",
                                       sharing=shipped_sharing(agency))
    async with running_adapter(settings, adapter_settings, settings.nats.url or "") as running:
        yield running, await aiohttp_client(make_app(running))


async def post(client: Client, fmt: str, body: bytes) -> tuple[int, dict[str, Any], str]:
    r = await client.post(f"/records/{fmt}", data=body, headers=signed_headers(SECRET, body))
    text = await r.text()
    return r.status, orjson.loads(text), text


def body_of(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)


# -- police: PPN JSON through the endpoint, PPN CSV through the drop folder ---------------------------------

PPN_SCHEMA: Final = schema("police-ppn.v1.json")
PPN_TEXT: Final = (NATIVE / "police-ppn.v1.json").read_text()
PPN_VALID: Final = jsonschema_rs.validator_for(PPN_SCHEMA, validate_formats=True)


def ppns() -> st.SearchStrategy[dict[str, Any]]:
    from hypothesis_jsonschema import from_schema

    shape = generating(PPN_SCHEMA)
    shape["properties"]["children"]["maxItems"] = 3
    shape["properties"]["adults"]["maxItems"] = 2

    def ppn(args: tuple[dict[str, Any], tuple[dict[str, Any], bool]]) -> dict[str, Any]:
        document, (facts, emergency) = args
        document = {k: v for k, v in document.items() if k not in CONSENT_KEYS} | facts
        if emergency:
            document["immediateProtectionNeeded"] = True
        for child in document["children"]:
            if "schoolAgencyId" in child:
                child["schoolAgencyId"] = "school-hillside"
        return document

    return st.tuples(from_schema(shape), FACTS).map(ppn)


async def test_ppn_json_through_the_signed_endpoint(settings: Settings, topology: None, tmp_path: Path,
                                                    aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    all_cases = cases(examples(ppns()), examples(faults(ppns(), PPN_VALID)), PPN_TEXT, PPN_VALID)
    tally = Tally()
    async with adapter(settings, tmp_path, "police-met", aiohttp_client) as (_, client):
        answers = [await post(client, "ppn-json", body_of(d)) for d, *_ in all_cases]
    judged(tally, "ppn-json", answers, all_cases)
    print(f"\nppn-json: {len(all_cases)} documents: {tally}")
    assert tally.counts.get("ppn-json taken", 0) >= RUNS // 2 and tally.counts.get("ppn-json refused", 0) >= RUNS // 2


def clean(text: str) -> str:
    """A CSV cell's text: without the export's separators, trimmed as the adapter reads it."""
    return "".join(c for c in text if c not in ";|\r\n\x00").strip() or "x"


INCIDENT_COLUMNS: Final = ("incidentReference", "occurredAt", "location", "summary", "details", "categories",
                           "riskLevel", "immediateProtectionNeeded", *consent.NATIVE_FIELDS, "parentsInformed",
                           "doNotContactParents", "circumstances", "advice")
CHILD: Final = {"given": "childGiven", "family": "childFamily", "dateOfBirth": "childDateOfBirth",
                "nhsNumber": "childNhsNumber", "present": "childPresent", "whereChildWas": "childWhereChildWas",
                "voice": "childVoice", "schoolAgencyId": "childSchoolAgencyId"}
OFFICER: Final = {"given": "officerGiven", "family": "officerFamily", "collarNumber": "officerCollarNumber",
                  "phone": "officerPhone"}
COLUMNS: Final = (*INCIDENT_COLUMNS, *OFFICER.values(), *CHILD.values(), "adults")
# Cells whose fault is certain: (column, the injected value; None: the junk, "": emptied).
INCIDENT_FAULTS: Final = (("incidentReference", None), ("occurredAt", None), ("summary", ""), ("categories", None),
                          ("riskLevel", None), ("immediateProtectionNeeded", None), ("consent", None),
                          ("withoutConsentReason", None), ("familyInformed", None), ("parentsInformed", None),
                          ("doNotContactParents", None), ("officerFamily", ""), ("officerCollarNumber", ""),
                          ("officerPhone", None))
CHILD_FAULTS: Final = (("childDateOfBirth", None), ("childNhsNumber", None), ("childSchoolAgencyId", None),
                       ("childFamily", ""), ("childPresent", None), ("childPresent", ""))


def csv_rows(record: dict[str, Any]) -> list[dict[str, str]]:
    def cell(value: Any) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list):
            return ";".join(value)
        return clean(value) if isinstance(value, str) else ""

    incident = {c: cell(record.get(c)) for c in INCIDENT_COLUMNS} | {
        column: cell(record["officer"].get(key)) for key, column in OFFICER.items()}
    incident["adults"] = ";".join("|".join(clean(a[k]) if a.get(k) else "" for k in ("given", "family", "role",
                                                                                     "relationship"))
                                  for a in record.get("adults", []))
    return [incident | {column: cell(child.get(key)) for key, column in CHILD.items()} for child in record["children"]]


def csv_text(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def csv_cases() -> st.SearchStrategy[tuple[str, str | None, str, list[dict[str, str]]]]:
    """``(CSV text, the expected field of its one fault or None, the injected value, the rows)``."""
    def make(args: tuple[dict[str, Any], bool, int, str]) -> tuple[str, str | None, str, list[dict[str, str]]]:
        record, faulty, pick, junk = args
        rows = csv_rows(record)
        if not faulty:
            return csv_text(rows), None, junk, rows
        if pick % 3 == 0:  # a child's cell
            column, value = CHILD_FAULTS[pick % len(CHILD_FAULTS)]
            row = (pick // 7) % len(rows)
            rows[row][column] = junk if value is None else value
            return csv_text(rows), f"row {row + 2}/{column}", junk, rows
        column, value = INCIDENT_FAULTS[pick % len(INCIDENT_FAULTS)]
        for r in rows:
            r[column] = junk if value is None else value
        return csv_text(rows), f"row 2/{column}", junk, rows

    return st.tuples(ppns(), st.booleans(), st.integers(0, 10**6), JUNK).map(make)


async def test_ppn_csv_through_the_drop_folder(settings: Settings, topology: None, tmp_path: Path,
                                               aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    generated = examples(csv_cases())
    tally = Tally()
    async with adapter(settings, tmp_path, "police-met", aiohttp_client) as (running, _):
        folder = tmp_path / "police-in"
        intake = FolderIntake(folder, running.submitter, running.profile.formats, max_bytes=4 << 20, poll=0,
                              settle=0, per_pass=len(generated) + 1)
        for i, (text, *_) in enumerate(generated):
            (folder / "ppn-csv" / f"export-{i:03}.csv").write_text(text)
        await intake.scan_once()  # the first pass sees each file; the second, unchanged, takes it
        assert await intake.scan_once() == len(generated)
    sent = {orjson.loads(p.read_bytes())["file_ref"] for p in (folder / SENT).iterdir()}
    for i, (_, expected, junk, rows) in enumerate(generated):
        name = f"export-{i:03}.csv"
        error = folder / FAILED / f"{name}.error.json"
        if not error.exists():
            assert expected is None, (name, expected)
            import hashlib

            assert hashlib.sha256(name.encode()).hexdigest()[:12] in sent
            tally.add("ppn-csv taken")
            continue
        why, text = orjson.loads(error.read_bytes()), error.read_text()
        assert why["code"] != "internal", (name, why)
        assert why["code"] == "unmappable" and why["field"], (name, why)
        cells = {v for r in rows for v in r.values() if len(v) >= 8 and v not in PPN_TEXT} | {junk}
        assert not [v for v in cells if v in text], (name, why)
        if expected is None:
            tally.add(f"ppn-csv valid, refused {why['rule']}")
            continue
        assert why["field"] == expected, (name, why, expected)
        tally.add("ppn-csv refused")
    print(f"\nppn-csv: {len(generated)} files: {tally}")
    assert tally.counts.get("ppn-csv taken", 0) >= RUNS // 4 and tally.counts.get("ppn-csv refused", 0) >= RUNS // 4


# -- the local authority: case events through the endpoint and the drop folder --------------------------------

LA_SCHEMA: Final = schema("la-case-event.v1.json")
LA_TEXT: Final = (NATIVE / "la-case-event.v1.json").read_text()
LA_VALID: Final = jsonschema_rs.validator_for(LA_SCHEMA, validate_formats=True)
REFERRAL_DELIVERY: Final = "5d0c6a2e-1f3b-4c8d-9e7a-0b1c2d3e4f50"  # handed to the case system before
REQUEST_DELIVERY: Final = "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b"
KINDS: Final = ("receipt", "outcome", "answer", "information-request", "strategy-discussion",
                "child-protection-status")


def case_events() -> st.SearchStrategy[dict[str, Any]]:
    """One event of each kind, answering what was handed over and naming agencies the registry knows."""
    from hypothesis_jsonschema import from_schema

    shape = generating(LA_SCHEMA)

    def fix(args: tuple[dict[str, Any], tuple[dict[str, Any], bool]]) -> dict[str, Any]:
        document, (facts, emergency) = args
        document = {k: v for k, v in document.items() if k not in CONSENT_KEYS}
        kind = document["event"]
        if kind not in ("acknowledged", "actioned"):
            document |= facts | ({"urgency": "emergency"} if emergency else {})
        if "inReplyTo" in document:
            document["inReplyTo"] = REQUEST_DELIVERY if kind == "answer" else REFERRAL_DELIVERY
        if kind == "information-request":
            document["to"] = ["police-met"]
        if kind == "strategy-discussion":
            document["invited"] = ["police-met", "health-camden"]
            for action in document.get("actions", []):
                action["agency"] = "police-met"
        if kind == "child-protection-status":
            document["to"] = ["health-camden"]
            document.pop("endDate", None)
        return document

    kinds = st.one_of([from_schema({"$defs": shape["$defs"], "$ref": f"#/$defs/{kind}"}) for kind in KINDS])
    return st.tuples(kinds, FACTS).map(fix)


async def handed(seen: Any) -> None:
    """What the case system was handed before, so that its replies have something to answer."""
    for delivery, typ, sender, message in (
            (REFERRAL_DELIVERY, "referral", "police-met", "0b6f3c2e-8d1a-4c5e-9f7b-2a3d4e5f6a7b"),
            (REQUEST_DELIVERY, "information-request", "health-camden", "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f")):
        await seen.add(delivery, Delivery({"jti": delivery, "iss": "sg-broker", "typ": typ, "ver": 1,
                                           "to": ["la-camden"],
                                           "origin": {"iss": sender, "jti": message, "digest": "x" * 43}}, {}))


async def test_case_events_through_the_endpoint_and_the_drop_folder(
        settings: Settings, topology: None, tmp_path: Path,
        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    faulty = examples(faults(case_events(), LA_VALID))
    all_cases = cases(examples(case_events()), faulty, LA_TEXT, LA_VALID)
    tally = Tally()
    async with adapter(settings, tmp_path, "la-camden", aiohttp_client) as (running, client):
        assert running.client.seen is not None
        await handed(running.client.seen)
        answers = [await post(client, "case-events", body_of(d)) for d, *_ in all_cases]
        folder = tmp_path / "la-in"
        intake = FolderIntake(folder, running.submitter, running.profile.formats, max_bytes=4 << 20, poll=0,
                              settle=0, per_pass=RUNS + 1)
        dropped = all_cases[RUNS:][:RUNS // 3]  # a share of the faulty ones, dropped as files
        for i, (document, *_) in enumerate(dropped):
            (folder / "case-events" / f"events-{i:03}.json").write_bytes(body_of(document))
        await intake.scan_once()
        assert await intake.scan_once() == len(dropped)
    judged(tally, "case-events", answers, all_cases)
    for i, (document, fault, seen, valid) in enumerate(dropped):
        error = folder / FAILED / f"events-{i:03}.json.error.json"
        why = orjson.loads(error.read_bytes()) if error.exists() else {}
        judge(tally, "case-events file", 202 if not why else 422, why, valid, document, fault, seen,
              error.read_text() if why else "")
    print(f"\ncase-events: {len(all_cases)} posted, {len(dropped)} dropped: {tally}")
    assert tally.counts.get("case-events taken", 0) >= RUNS // 2
    assert tally.counts.get("case-events refused", 0) >= RUNS // 2


# -- health: FHIR Bundles (no JSON Schema: the published examples, varied and mutated) ------------------------

def bundles() -> st.SearchStrategy[dict[str, Any]]:
    facts = (("NOT_SOUGHT", "WOULD_PREJUDICE_PROTECTION", "TO_BE_INFORMED_LATER"), ("GIVEN", None, "INFORMED"),
             ("REFUSED_OVERRIDDEN", "CANNOT_BE_GIVEN", "NOT_INFORMED_UNSAFE"), (None, None, None))

    def vary(args: tuple[str, str, tuple[str | None, str | None, str | None], bool]) -> dict[str, Any]:
        text, priority, (status, reason, informed), note = args
        document = referral_bundle()
        request = document["entry"][-1]["resource"]
        request |= {"priority": priority, "reasonCode": [{"text": text}]}
        if note:
            request["note"] = [{"text": text[::-1]}]
        if status is None:
            request.pop("extension")  # an emergency may come without it; anything else is refused
        else:
            request["extension"] = [consent_extension(status, reason, informed)]
        return document

    return st.tuples(st.text(min_size=1, max_size=60), st.sampled_from(["routine", "urgent", "asap", "stat"]),
                     st.sampled_from(facts), st.booleans()).map(vary)


async def test_fhir_bundles_through_the_endpoint(settings: Settings, topology: None, tmp_path: Path,
                                                 aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    def said(document: Any) -> set[str]:  # what was generated: the texts and the injected value
        request = document["entry"][-1]["resource"] if isinstance(document, dict) and document.get("entry") else {}
        texts = [c.get("text") for c in request.get("reasonCode", []) if isinstance(c, dict)] if isinstance(
            request, dict) else []
        return {t for t in texts if isinstance(t, str) and len(t.strip()) >= 8}

    valid, faulty = examples(bundles()), examples(faults(bundles()))
    all_cases: list[tuple[Any, str | None, set[str], bool | None]] = [(d, None, said(d), None) for d in valid]
    all_cases += [(d, None, said(d) | {junk[:64]}, None) for d, _, junk in faulty]
    tally = Tally()
    async with adapter(settings, tmp_path, "health-camden", aiohttp_client) as (_, client):
        answers = [await post(client, "fhir", body_of(d)) for d, *_ in all_cases]
    judged(tally, "fhir", answers, all_cases)
    named = [related(a["field"], fault) for (_, a, _), (_, fault, _) in zip(answers[RUNS:], faulty, strict=True)
             if a.get("field")]
    print(f"\nfhir: {len(all_cases)} bundles: {tally}; of {len(named)} faulty bundles refused, {sum(named)} "
          "named the fault's place or next to it")
    assert tally.counts.get("fhir taken", 0) >= RUNS // 2 and tally.counts.get("fhir refused", 0) >= RUNS // 3
