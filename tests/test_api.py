"""The audit API through pytest-aiohttp, against a real broker, nats-server and SQLite index."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
import time
from typing import Any

import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient

from broker.audit.export import verify_store
from broker.config import Settings
from broker.identity.keys import load_identity
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.web import api, records
from broker.web.context import AuditService
from broker.web.params import MAX_LIMIT
from broker.web.vocabulary import EVENTS
from broker.wire.registry import Registry
from tests.conftest import ClientFactory
from tests.helpers import referral, sharing
from tests.support.cli import sgb
from tests.support.sending import NHS, NOT_SHARED_WORDS, send_not_to_share, send_referrals
from tests.support.web import auth, token, until_indexed, until_recorded

pytestmark = pytest.mark.timeout(90)
Client = TestClient  # type: ignore[type-arg]


# -- the document -----------------------------------------------------------------------------


async def test_openapi_document_is_valid_and_covers_every_route(client: Client) -> None:
    from openapi_spec_validator import validate

    r = await client.get("/api/openapi.json")
    assert r.status == 200
    doc = await r.json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    for method, path, handler in api.ROUTES:
        operation = doc["paths"][path][method.lower()]
        for role in handler.roles:
            assert role in operation["description"], (path, role)


# -- authorisation ------------------------------------------------------------------------------

CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/v1/records", None),
    ("GET", "/api/v1/messages/{message}/trail", None),
    ("POST", "/api/v1/subject-search", {"nhsNumber": NHS}),
    ("POST", "/api/v1/subjects/proof", {"nhsNumber": NHS}),
    ("GET", "/api/v1/reviews", None),
    ("POST", "/api/v1/reviews", {"item": "flag:{message}", "outcome": "proportionate"}),
    ("POST", "/api/v1/reviews/bulk", {"items": ["flag:{message}"], "outcome": "proportionate"}),
    ("GET", "/api/v1/records.csv", None),
    ("GET", "/api/v1/integrity", None),
    ("POST", "/api/v1/integrity/verify", None),
    ("GET", "/api/v1/volumes", None),
    ("GET", "/api/v1/holds", None),
    ("PUT", "/api/v1/holds/{message}", {"reason": "litigation"}),
    ("DELETE", "/api/v1/holds/{message}", None),
    ("GET", "/api/v1/retention", None),
    ("PUT", "/api/v1/maintenance", {"on": False}),
    ("GET", "/api/v1/rulebook/coverage", None),
]


async def test_every_endpoint_and_role(client: Client, settings: Settings, agency: ClientFactory) -> None:
    assert {(m, p) for m, p, _ in CALLS} == {(m, p) for m, p, _ in api.ROUTES}
    handlers = {(m, p): h for m, p, h in api.ROUTES}
    for role in ("ig-officer", "auditor", "operator"):
        (message,) = await send_referrals(agency, consent="REFUSED_OVERRIDDEN")  # a fresh item per role to review
        await until_indexed(client, settings, message)
        for method, path, body in CALLS:
            url = path.replace("{message}", message)
            data = orjson.loads(orjson.dumps(body).replace(b"{message}", message.encode())) if body else None
            r = await client.request(method, url, json=data, headers=auth(settings, role))
            allowed = role in handlers[(method, path)].roles
            if allowed:
                assert r.status in (200, 201), (role, method, path, r.status, await r.text())
            else:
                assert r.status == 403, (role, method, path, r.status)
                assert (await r.json())["code"] == "forbidden"
            r = await client.request(method, url, json=data)
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    # every event recorded by the broker and by these officers' actions is one the API and the pages offer
    r = await client.get(f"/api/v1/records?limit={MAX_LIMIT}", headers=auth(settings, "auditor"))
    events = {x["event"] for x in (await r.json())["items"]}
    assert {"received", "shared", "reviewed", "subject-search", "exported", "hold-placed"} <= events <= set(EVENTS)


@pytest.mark.parametrize("case", ["expired", "wrong-audience", "wrong-issuer", "alg-none", "wrong-key", "hs256",
                                  "no-exp", "no-aud", "unknown-role", "garbage", "too-long-lived"])
async def test_bad_tokens_are_refused(case: str, client: Client, settings: Settings) -> None:
    now = int(time.time())
    if case == "expired":
        bad = token(settings, "ig-officer", exp=now - 120, iat=now - 700)
    elif case == "wrong-audience":
        bad = token(settings, "ig-officer", aud="someone-else")
    elif case == "wrong-issuer":
        bad = token(settings, "ig-officer", iss="police-met")
    elif case == "no-exp":
        bad = token(settings, "ig-officer", exp=None)
    elif case == "no-aud":
        bad = token(settings, "ig-officer", aud=None)
    elif case == "unknown-role":
        bad = token(settings, "superuser", jti="x")
    elif case == "too-long-lived":
        bad = token(settings, "ig-officer", exp=now + 30 * 86400)
    elif case == "alg-none":
        good = token(settings, "ig-officer")
        header = base64.urlsafe_b64encode(orjson.dumps({"alg": "none", "typ": "JWT", "kid": jwt.get_unverified_header(
            good)["kid"]})).rstrip(b"=").decode()
        bad = header + "." + good.split(".")[1] + "."
    elif case == "wrong-key":  # the issuer's kid, someone else's key
        other = load_identity(settings.home, "police-met")
        claims = jwt.decode(token(settings, "ig-officer"), options={"verify_signature": False})
        kid = jwt.get_unverified_header(token(settings, "ig-officer"))["kid"]
        bad = jwt.encode(claims, other.signing_key, algorithm="EdDSA", headers={"kid": kid})
    elif case == "hs256":  # algorithm confusion: HMAC keyed with the public key
        identity = load_identity(settings.home, "dev-token-issuer")
        claims = jwt.decode(token(settings, "ig-officer"), options={"verify_signature": False})
        bad = jwt.encode(claims, b"public-key-as-hmac-secret-0123456789", algorithm="HS256",
                         headers={"kid": identity.sig_kid})
    else:
        bad = "not.a.token"
    r = await client.get("/api/v1/records", headers={"Authorization": f"Bearer {bad}"})
    assert r.status == (403 if case == "unknown-role" else 401), await r.text()
    body = await r.json()
    assert body["code"] in ("unauthenticated", "forbidden") and "Traceback" not in body["detail"]


# -- the log --------------------------------------------------------------------------------------


async def test_records_filter_and_paginate(client: Client, settings: Settings, agency: ClientFactory) -> None:
    ids = await send_referrals(agency, count=3)
    elapsed = await until_indexed(client, settings, ids[-1])
    assert elapsed < 1.0
    h = auth(settings, "ig-officer")
    r = await client.get("/api/v1/records?agency=police-met&event=shared&recipient=la-camden", headers=h)
    shared = (await r.json())["items"]
    assert {x["message"] for x in shared} == set(ids)
    assert all(x["fields"] and x["decision"] == "share" for x in shared)
    for query, expect in [("lawfulBasis=UKGDPR_6_1_E", 6), ("consentStatus=NOT_SOUGHT", 6), ("flagged=true", 6),
                          ("consentStatus=GIVEN", 0), ("agency=health-camden", 0), ("until=2000-01-01", 0),
                          ("since=2000-01-01&type=referral", 6)]:
        items = (await (await client.get(f"/api/v1/records?{query}&limit=100", headers=h)).json())["items"]
        assert len(items) == expect, query
    seen, cursor = [], ""
    while True:
        page = await (await client.get(f"/api/v1/records?limit=2{cursor}", headers=h)).json()
        seen.extend(x["id"] for x in page["items"])
        if not page["next"]:
            break
        cursor = f"&cursor={page['next']}"
    assert len(seen) == len(set(seen)) == 6
    for bad in ("limit=0", "limit=x", "flagged=maybe", "since=yesterday", "cursor=zzz"):
        r = await client.get(f"/api/v1/records?{bad}", headers=h)
        assert r.status == 400 and (await r.json())["code"] == "bad-request", bad


async def test_trail_shows_each_recipients_decision(client: Client, settings: Settings,
                                                    agency: ClientFactory) -> None:
    (message,) = await send_referrals(agency)
    await until_indexed(client, settings, message)
    r = await client.get(f"/api/v1/messages/{message}/trail", headers=auth(settings, "auditor"))
    body = await r.json()
    assert [x["event"] for x in body["records"]] == ["received", "shared"]
    (la,) = body["summary"]["recipients"]
    assert la["recipient"] == "la-camden" and la["decision"] == "share" and "child" in la["fields"]
    assert la["due"] and la["rules"]
    r = await client.get("/api/v1/messages/nope/trail", headers=auth(settings, "auditor"))
    assert r.status == 404 and (await r.json())["code"] == "not-found"


async def test_a_decision_not_to_share_keeps_its_reason_and_rule(client: Client, settings: Settings,
                                                                 agency: ClientFactory) -> None:
    """Issue 11 item 8: the record, the API, the filter, the trail and the CSV all carry the reason
    code (with its label) and the rule; the practitioner's own words are nowhere."""
    message = await send_not_to_share(agency)
    known = await send_not_to_share(agency, "ALREADY_KNOWN_TO_RECIPIENT")
    record = await until_recorded(client, settings, message, "not-shared")
    await until_recorded(client, settings, known, "not-shared")
    assert record["notSharedReason"] == "NOT_PROPORTIONATE" and record["decision"] == "not-share"
    assert record["rules"] == ["decision-not-to-share.record"] and record["recipient"] == "la-camden"
    h = auth(settings, "auditor")
    page = await (await client.get("/api/v1/records?event=not-shared", headers=h)).json()
    assert page["notSharedReasons"]["NOT_PROPORTIONATE"] == "Not proportionate"
    assert {x["message"]: x["notSharedReason"] for x in page["items"]} == {
        message: "NOT_PROPORTIONATE", known: "ALREADY_KNOWN_TO_RECIPIENT"}
    for query, expect in [("notSharedReason=NOT_PROPORTIONATE", [message]),
                          ("notSharedReason=ALREADY_KNOWN_TO_RECIPIENT", [known]),
                          ("notSharedReason=NOT_NECESSARY", []),
                          ("notSharedReason=NOT_PROPORTIONATE&event=shared", [])]:
        items = (await (await client.get(f"/api/v1/records?{query}", headers=h)).json())["items"]
        assert [x["message"] for x in items] == expect, query
    trail = await (await client.get(f"/api/v1/messages/{message}/trail", headers=h)).json()
    (la,) = trail["summary"]["recipients"]
    assert la["decision"] == "not-share" and la["standing"] is None
    assert la["notSharedReason"] == "NOT_PROPORTIONATE" and la["notSharedReasonLabel"] == "Not proportionate"
    assert la["rules"] == ["decision-not-to-share.record"]
    r = await client.get(f"/api/v1/records.csv?message={message}&event=not-shared", headers=h)
    import csv
    import io

    (row,) = list(csv.DictReader(io.StringIO(await r.text())))
    assert row["notSharedReason"] == "NOT_PROPORTIONATE" and row["rules"] == "decision-not-to-share.record"
    for body in (page, trail):
        assert NOT_SHARED_WORDS not in orjson.dumps(body).decode() and "Okafor" not in orjson.dumps(body).decode()


def test_every_reason_not_to_share_has_a_label() -> None:
    from broker.web import notshared
    from broker.web.vocabulary import schema_enum

    codes = schema_enum("decision-not-to-share.v1.json", "reason")
    assert set(notshared._WORDS) == set(codes)  # a new code in the schema needs its words
    assert list(notshared.LABELS) == list(codes)
    assert notshared.label("NOT_PROPORTIONATE") == "Not proportionate"
    assert notshared.label("SOME_LATER_CODE") == "Some later code" and notshared.label(None) == ""


async def test_subject_search_finds_one_child_and_is_audited(client: Client, settings: Settings,
                                                             agency: ClientFactory, broker: Broker) -> None:
    ada = await send_referrals(agency)
    other = await send_referrals(agency, child={"nhsNumber": "9990005672", "name": {"given": "Ben", "family": "X"},
                                                "dateOfBirth": "2016-01-02"})
    await until_indexed(client, settings, other[0])
    h = auth(settings, "ig-officer")
    r = await client.post("/api/v1/subject-search", json={"nhsNumber": "999 000 1235"}, headers=h)
    body = await r.json()
    assert body["messages"] == ada and {x["message"] for x in body["items"]} == set(ada)
    r = await client.post("/api/v1/subject-search", headers=h, json={
        "givenName": "ADA", "familyName": "okafor demo", "dateOfBirth": "2017-03-14"})
    assert (await r.json())["messages"] == ada  # case, spaces and punctuation folded
    r = await client.post("/api/v1/subject-search", json={"familyName": "X"}, headers=h)
    assert r.status == 400 and "date of birth" in (await r.json())["detail"]
    # the search was audited, naming the officer and not the child
    async with connected(settings, settings.nats.url or "", name="t") as nc:
        from broker.audit.reading import read_audit

        records = [x async for x in read_audit(jetstream(nc, settings)) if x["event"] == "subject-search"]
    assert len(records) == 2 and records[0]["actor"] == "ig-jo" and records[0]["messagesFound"] == 1
    assert NHS not in orjson.dumps(records).decode() and "Okafor" not in orjson.dumps(records).decode()
    # the log itself never held the identifiers
    assert all(NHS not in orjson.dumps(x).decode() for x in body["items"])


async def test_subject_index_key_rotation_keeps_old_records_findable(client: Client, settings: Settings,
                                                                    agency: ClientFactory, broker: Broker,
                                                                    service: AuditService) -> None:
    from broker.identity.blindindex import load_subject_index, rotate_subject_key

    before = await send_referrals(agency)
    rotate_subject_key(settings.home)
    rotated = load_subject_index(settings.home)
    broker.pipeline._outcomes.subjects = rotated
    service.subjects = rotated
    after = await send_referrals(agency)
    await until_indexed(client, settings, after[0])
    r = await client.post("/api/v1/subject-search", json={"nhsNumber": NHS}, headers=auth(settings, "ig-officer"))
    assert sorted((await r.json())["messages"]) == sorted(before + after)
    kids = {x["subjects"][0].split(".")[0] for x in (await r.json())["items"]}
    assert len(kids) == 2  # records under the old key and the new


async def test_review_queue_and_recording_an_outcome(client: Client, settings: Settings, agency: ClientFactory,
                                                     registry: Registry) -> None:
    (flagged,) = await send_referrals(agency, consent="REFUSED_OVERRIDDEN")
    await until_indexed(client, settings, flagged)
    h = auth(settings, "ig-officer")
    queue = await (await client.get("/api/v1/reviews", headers=h)).json()
    (item,) = [i for i in queue["items"] if i["message"] == flagged]
    assert item["reasons"] == ["consent-overridden"] and item["outcome"] is None
    r = await client.post("/api/v1/reviews", json={"item": item["item"], "outcome": "follow-up",
                                                   "reference": "IG-2026/117"}, headers=h)
    assert r.status == 201, await r.text()
    record = await r.json()
    assert record["event"] == "reviewed" and record["reviewer"] == "ig-jo" and record["outcome"] == "follow-up"
    queue = await (await client.get("/api/v1/reviews", headers=h)).json()
    assert flagged not in [i["message"] for i in queue["items"]]
    done = await (await client.get("/api/v1/reviews?state=done", headers=h)).json()
    assert [i["outcome"] for i in done["items"] if i["message"] == flagged] == ["follow-up"]
    r = await client.post("/api/v1/reviews", json={"item": item["item"], "outcome": "breach"}, headers=h)
    assert r.status == 409 and (await r.json())["code"] == "already-reviewed"
    for bad in ({"item": item["item"], "outcome": "fine"}, {"outcome": "breach"},
                *({"item": item["item"], "outcome": "breach", "reference": name}  # a name, never
                  for name in ("Ada Okafor", "AdaOkafor"))):
        r = await client.post("/api/v1/reviews", json=bad, headers=h)
        assert r.status == 400, bad
    r = await client.post("/api/v1/reviews", data=b"{", headers=h | {"Content-Type": "application/json"})
    assert r.status == 400
    trail = await (await client.get(f"/api/v1/messages/{flagged}/trail", headers=h)).json()
    assert "reviewed" in [x["event"] for x in trail["records"]]
    async with connected(settings, settings.nats.url or "", name="v") as nc:
        assert (await verify_store(jetstream(nc, settings), registry)).ok


async def test_csv_export_streams_the_filtered_records(client: Client, settings: Settings,
                                                       agency: ClientFactory) -> None:
    ids = await send_referrals(agency, count=2)
    await until_indexed(client, settings, ids[-1])
    r = await client.get("/api/v1/records.csv?event=shared", headers=auth(settings, "auditor"))
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert {row["message"] for row in rows} == set(ids) and all(row["decision"] == "share" for row in rows)
    assert rows[0]["lawfulBasis"] == "UKGDPR_6_1_E"
    assert records._csv_row({"sender": "=HYPERLINK(1)"})[records.CSV_COLUMNS.index("sender")].startswith("'=")


async def test_integrity_status_and_verification(client: Client, settings: Settings, agency: ClientFactory) -> None:
    await send_referrals(agency)
    h = auth(settings, "operator")
    r = await client.post("/api/v1/integrity/verify", headers=h)
    body = await r.json()
    assert body["state"] == "verified" and body["records"] >= 2 and body["problems"] == []
    status = await (await client.get("/api/v1/integrity", headers=h)).json()
    assert status["state"] == "verified" and status["index"]["records"] >= 2
    volumes = await (await client.get("/api/v1/volumes?by=agency", headers=h)).json()
    assert any(row["key"] == "police-met" and row["count"] >= 1 for row in volumes["rows"])


async def test_internal_errors_never_leak(client: Client, settings: Settings, service: AuditService,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals /var/lib/sgb")

    monkeypatch.setattr(service.index, "records", broken)
    r = await client.get("/api/v1/records", headers=auth(settings, "auditor"))
    assert r.status == 500
    body = await r.text()
    assert "secret" not in body and "Traceback" not in body and orjson.loads(body)["code"] == "internal"
    r = await client.get("/api/v1/nowhere", headers=auth(settings, "auditor"))
    assert r.status == 404 and (await r.json())["code"] == "not-found"


async def test_reindex_rebuilds_the_same_index(client: Client, settings: Settings, agency: ClientFactory,
                                               service: AuditService) -> None:

    ids = await send_referrals(agency, count=2) + await send_referrals(agency, consent="REFUSED_OVERRIDDEN")
    police = await agency("police-met")  # advice sought: medium in the shipped triage (high without one)
    advice = await police.send(typ="referral", to=["la-camden"], payload=referral(),
                               sharing=sharing() | {"adviceSought": {"from": "IG_OFFICER"}})
    await police.wait_outcome(advice, timeout=10)
    await until_indexed(client, settings, advice)
    before = await service.index.counts()
    copy = settings.home / "reindexed.sqlite"
    env_home = settings.home
    rc, out, err = await sgb("audit", "reindex", home=env_home, url=settings.nats.url, env={
        "SGB_AUDIT_INDEX": str(copy)})
    assert rc == 0, err
    assert f"{before['records']} records" in out

    def queue(path: object) -> list[tuple[Any, ...]]:  # the triaged queue, as the rulebook's triage derives it
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT item, priority, rank, point, reasons FROM reviews ORDER BY item").fetchall()

    assert queue(copy) == queue(settings.index_path)
    assert {(row[0], row[1]) for row in queue(copy)} >= {(f"flag:{ids[-1]}", "high"), (f"flag:{advice}", "medium")}
