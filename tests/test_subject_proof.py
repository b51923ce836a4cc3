"""Subject access with proof (issue 16): everything recorded about one child as a proof bundle, from
the API and the IG subject-access page, against a real broker and nats-server; checked offline with
the key ``sgb audit vkey`` publishes, and holding no identity."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from broker.audit import notes, offline
from broker.audit.reading import read_audit
from broker.config import Settings
from broker.transport.connection import connected, jetstream
from tests.conftest import ClientFactory
from tests.support.cli import sgb
from tests.support.sending import NHS, send_referrals
from tests.support.web import auth, sign_in, until_indexed

pytestmark = pytest.mark.timeout(120)
Client = TestClient  # type: ignore[type-arg]

OTHER = {"nhsNumber": "9990005672", "name": {"given": "Ben", "family": "Xavier"}, "dateOfBirth": "2016-01-02"}
# the referral example's child and the other child: long enough not to occur by chance in base64, short
# names as whole JSON strings
IDENTITY = (NHS, "999 000 1235", "Okafor", "2017-03-14", '"Ada"', "9990005672", "Xavier", '"Ben"', "2016-01-02")


async def _trusted(settings: Settings) -> list[offline.VerifierKey]:
    rc, out, err = await sgb("audit", "vkey", settings.instance, home=settings.home)
    assert rc == 0, err
    return [notes.VerifierKey.parse(k) for k in out.split()]


async def _records(settings: Settings, event: str) -> list[dict[str, Any]]:
    async with connected(settings, settings.nats.url or "", name="t") as nc:
        return [x async for x in read_audit(jetstream(nc, settings)) if x["event"] == event]


def _no_identity(data: bytes) -> None:
    text = data.decode()
    for value in IDENTITY:
        assert value not in text, value


async def test_the_api_proves_everything_about_one_child_and_nothing_else(
        client: Client, settings: Settings, agency: ClientFactory) -> None:
    ada = await send_referrals(agency, count=2)
    other = await send_referrals(agency, child=OTHER)
    await until_indexed(client, settings, other[0])
    r = await client.post("/api/v1/subjects/proof", json={"nhsNumber": "999 000 1235"},
                          headers=auth(settings, "ig-officer"))
    assert r.status == 200, await r.text()
    assert r.content_type == "application/json"
    assert r.headers["Content-Disposition"].startswith('attachment; filename="subject-access-')
    assert r.headers["Content-Disposition"].endswith('.sgb-proof.json"')
    data = await r.read()
    bundle = orjson.loads(data)
    assert bundle["format"] == offline.BUNDLE_FORMAT and bundle["query"] == sorted(ada)
    assert "pending" not in bundle  # this instance's chain was checkpointed first
    # exactly the first child's messages' records: every one the chain holds, none of the other child's
    proved = {x["id"] for x in bundle["records"]}
    async with connected(settings, settings.nats.url or "", name="t") as nc:
        everything = [x async for x in read_audit(jetstream(nc, settings))]
    assert proved == {x["id"] for x in everything if x.get("message") in ada}
    assert {x["message"] for x in bundle["records"]} == set(ada) and not set(other) & set(data.decode().split('"'))
    held, failed = offline.check_bundle(bundle, await _trusted(settings))
    assert not failed and len(held) == len(proved) >= 4
    _no_identity(data)
    for entry in bundle["records"]:  # nor in the records themselves (base64 in the bundle)
        _no_identity(base64.b64decode(entry["record"]))
    # the download was audited: the officer and the counts, never the identity
    (audited,) = await _records(settings, "subject-proof")
    assert audited["actor"] == "ig-jo" and audited["messagesFound"] == 2 and audited["recordsProved"] == len(proved)
    assert audited["recordsPending"] == 0 and audited["searchedBy"] == "nhs-number"
    _no_identity(orjson.dumps(audited))
    # a tampered bundle fails offline
    bundle["query"] = [other[0]]
    assert offline.check_bundle(bundle, await _trusted(settings))[1]


async def test_only_an_ig_officer_may_download_by_post(client: Client, settings: Settings,
                                                       agency: ClientFactory) -> None:
    (message,) = await send_referrals(agency)
    await until_indexed(client, settings, message)
    for role in ("auditor", "operator"):
        r = await client.post("/api/v1/subjects/proof", json={"nhsNumber": NHS}, headers=auth(settings, role))
        assert r.status == 403 and (await r.json())["code"] == "forbidden"
    r = await client.get("/api/v1/subjects/proof", headers=auth(settings, "ig-officer"))
    assert r.status == 405
    r = await client.post("/api/v1/subjects/proof", json={"nhsNumber": NHS})
    assert r.status == 401
    r = await client.post("/api/v1/subjects/proof", json={"nhsNumber": OTHER["nhsNumber"]},
                          headers=auth(settings, "ig-officer"))
    assert r.status == 404 and (await r.json())["code"] == "not-found"
    r = await client.post("/api/v1/subjects/proof", json={"familyName": "X"}, headers=auth(settings, "ig-officer"))
    assert r.status == 400
    audited = await _records(settings, "subject-proof")
    assert [x["messagesFound"] for x in audited] == [0]  # only the officer's search reached the log


async def test_the_subject_page_offers_the_bundle_to_an_officer(client: Client, settings: Settings,
                                                                agency: ClientFactory) -> None:
    ada = await send_referrals(agency, count=2)
    other = await send_referrals(agency, child=OTHER)
    await until_indexed(client, settings, other[0])
    csrf = await sign_in(client, settings, "ig-officer")
    page = await (await client.post("/ig/subject", data={"csrf": csrf, "nhsNumber": NHS})).text()
    assert "Download proof bundle" in page and 'action="/ig/subject/proof"' in page
    form = page.split('action="/ig/subject/proof"')[1].split("</form>")[0]
    _no_identity(form.encode())
    messages = sorted(x.split('"')[0] for x in form.split('name="message" value="')[1:])
    assert messages == sorted(ada)
    r = await client.post("/ig/subject/proof", data=[("message", m) for m in messages])
    assert r.status == 403  # no CSRF token
    r = await client.post("/ig/subject/proof", data=[("csrf", csrf), *(("message", m) for m in messages)])
    assert r.status == 200 and r.content_type == "application/json"
    assert r.headers["Content-Disposition"].endswith('.sgb-proof.json"')
    data = await r.read()
    bundle = orjson.loads(data)
    assert {x["message"] for x in bundle["records"]} == set(ada)
    assert not offline.check_bundle(bundle, await _trusted(settings))[1]
    _no_identity(data)
    (audited,) = await _records(settings, "subject-proof")
    assert audited["messagesFound"] == 2 and audited["searchedBy"] == "subject-search-results"
    # no results, no button; an auditor may not download
    page = await (await client.post("/ig/subject", data={"csrf": csrf, "nhsNumber": "9990005680"})).text()
    assert "Download proof bundle" not in page
    client.session.cookie_jar.clear()
    csrf = await sign_in(client, settings, "auditor")
    r = await client.post("/ig/subject/proof", data=[("csrf", csrf), *(("message", m) for m in messages)])
    assert r.status == 403
