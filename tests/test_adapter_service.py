"""Adapters as services, end to end through a real broker and nats-server: the health adapter
takes a FHIR referral in and hands an information request out as FHIR, whose FHIR answer closes
the local authority's deadline; the school's adapter serves its inbox, where the acknowledgement
closes the Operation Encompass deadline; an adapter picks up rotated keys on reload."""

from __future__ import annotations

import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient
from nats.js.errors import NotFoundError

from adapters.formats.fhir import CONSENT_EXTENSION
from adapters.runtime.service import AdapterSettings, make_app, reload_keys, running_adapter
from adapters.runtime.sinks import signed_headers
from broker.errors import KeyStoreError
from broker.files import write_private
from broker.identity.keys import identity_path
from broker.identity.rotation import rotate_keys
from broker.pipeline.deadlines import BUCKET
from broker.pipeline.service import Broker
from tests.conftest import ClientFactory
from tests.helpers import drain, eventually, example, sharing
from tests.support.fhir import answer, bundle, referral_bundle, referrer
from tests.support.police import PPN, police_adapter, post
from tests.support.web import dsl_token, sign_in_inbox

pytestmark = pytest.mark.timeout(90)
Client = TestClient  # type: ignore[type-arg]
SECRET = b"nhs-system-to-adapter-secret-0001"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "adapters"
# The shipped agency-wide defaults; each Bundle's consent facts are laid over them.
HEALTH_SHARING = tomllib.loads((DEPLOY / "health-camden.toml").read_text())["adapter"]["sharing"]


async def deadline_state(broker: Broker, message: str, replier: str) -> str | None:
    """The SG_DEADLINES entry for ``message`` awaiting ``replier``: open, overdue, or None once met."""
    try:
        entry = await broker.js.get_last_msg(f"KV_{BUCKET}", f"$KV.{BUCKET}.{message}.{replier}")
    except NotFoundError:  # never opened, or met and deleted
        return None
    return str(orjson.loads(entry.data)["state"]) if entry.data else None


async def test_health_speaks_fhir_both_ways_through_its_adapter(
        broker: Broker, agency: ClientFactory, tmp_path: Path,
        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    write_private(tmp_path / "secret", SECRET)
    out = tmp_path / "nhs-inbox"
    settings = AdapterSettings(agency="health-camden", drop_folder=out, inbound_secret_file=tmp_path / "secret",
                               local_authority="la-camden", sharing=HEALTH_SHARING)
    la = await agency("la-camden")
    async with running_adapter(broker.settings, settings, broker.settings.nats.url or "") as health:
        client = await aiohttp_client(make_app(health))
        body = orjson.dumps(referral_bundle())
        r = await client.post("/records/fhir", data=body, headers=signed_headers(SECRET, body, key="nhs-sr-1"))
        assert r.status == 202, await r.text()
        (referral,) = await drain(la, want=1)
        assert referral.type == "referral" and referral.payload["child"]["nhsNumber"] == "9990001235"
        assert referral.claims["sharing"]["subjectInformed"] == "TO_BE_INFORMED_LATER"  # the Bundle's own

        request = await la.send(typ="information-request", to=["health-camden"],
                                payload=example("information-request.example.json"),
                                sharing=sharing("information-request"))

        async def opened() -> bool:
            return await deadline_state(broker, request, "health-camden") in ("open", "overdue")

        await eventually(opened, what="the request's deadline", timeout=15)

        async def written() -> bool:
            return any(request.encode() in p.read_bytes() for p in out.glob("*.json"))

        await eventually(written, what="the request in the NHS system's folder", timeout=15)
        (path,) = [p for p in out.glob("*.json") if request.encode() in p.read_bytes()]  # its origin names it
        doc = orjson.loads(path.read_bytes())
        assert doc["resourceType"] == "Bundle" and doc["identifier"]["value"] == path.stem  # the delivery id
        (comm,) = [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Communication"]
        assert comm["extension"][0]["url"] == CONSENT_EXTENSION  # what the LA recorded of consent, for health
        reply = answer("unused") | {"inResponseTo": [{"identifier": comm["identifier"][0]}]}
        body = orjson.dumps(bundle(*referrer(), reply))
        r = await client.post("/records/fhir", data=body, headers=signed_headers(SECRET, body))
        assert r.status == 202, await r.text()
        answers = [d for d in await drain(la, want=1) if d.type == "information-response"]
        assert [d.claims["re"] for d in answers] == [request]

        async def met() -> bool:
            return await deadline_state(broker, request, "health-camden") is None

        await eventually(met, what="the request's deadline to close", timeout=15)


async def test_the_school_adapter_serves_its_inbox_and_the_acknowledgement_meets_the_deadline(
        broker: Broker, agency: ClientFactory, aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    police = await agency("police-met")
    settings = AdapterSettings(agency="school-hillside")  # no webhook, no folder: the inbox
    async with running_adapter(broker.settings, settings, broker.settings.nats.url or "") as school:
        assert school.inbox_pages is not None
        client = await aiohttp_client(make_app(school))
        notice = await police.send(typ="encompass-notification", to=["school-hillside"],
                                   payload=example("encompass-notification.example.json"),
                                   sharing=sharing("encompass-notification"))
        async def handed() -> bool:
            return school.deliverer.counts.delivered > 0

        await eventually(handed, what="the notice in the inbox", timeout=15)
        assert await deadline_state(broker, notice, "school-hillside") in ("open", "overdue")  # 'delivered' is not
        # enough: the deliverer's receipt went through the broker before the hand-over count rose
        await sign_in_inbox(client, dsl_token(broker.settings))
        page = await (await client.get("/inbox/")).text()
        delivery = page.split('href="/inbox/notices/')[1].split('"')[0]
        one = await (await client.get(f"/inbox/notices/{delivery}")).text()
        csrf = one.split('name="csrf" value="')[1].split('"')[0]
        r = await client.post(f"/inbox/notices/{delivery}/acknowledge", data={"csrf": csrf}, allow_redirects=False)
        assert r.status in (200, 303), await r.text()

        async def met() -> bool:
            return await deadline_state(broker, notice, "school-hillside") is None

        await eventually(met, what="the Encompass deadline to close", timeout=15)


async def test_an_adapter_signs_with_rotated_keys_after_reload(
        broker: Broker, agency: ClientFactory, tmp_path: Path,
        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    settings = broker.settings
    la = await agency("la-camden")
    async with police_adapter(settings, tmp_path) as police:
        old = police.client.identity.sig_kid
        rotation = rotate_keys(settings.home, settings.registry_path, "police-met", overlap=3600.0)
        broker.reload()  # the broker first, so it knows the new key (SIGHUP)
        reload_keys(police, settings)  # then the adapter (SIGHUP)
        assert police.client.identity.sig_kid == rotation.sig_kid != old
        client = await aiohttp_client(make_app(police))
        r = await post(client, "ppn-json", orjson.dumps(PPN))
        assert r.status == 202, await r.text()
        referrals = await drain(la, want=2)
        assert len(referrals) == 2
        sent = {m["id"] for m in (await r.json())["messages"]}
        assert {d.claims["origin"]["jti"] for d in referrals} <= sent


async def test_a_delivery_sealed_to_a_key_not_yet_here_waits_for_it(broker: Broker, agency: ClientFactory,
                                                                    tmp_path: Path) -> None:
    """The rotation gap: the broker already seals to the LA's new key, the LA's adapter has not
    loaded it. The delivery is offered back, not dead-lettered; after the reload it is handed over.
    A key file that lacks a key the new registry lists is refused on reload."""
    settings = broker.settings
    key_file = identity_path(settings.home, "la-camden")
    police = await agency("police-met")
    async with running_adapter(settings, AdapterSettings(agency="la-camden", drop_folder=tmp_path / "case"),
                               settings.nats.url or "") as la:
        la.deliverer.key_wait = 0.3
        old_keys = key_file.read_bytes()
        rotate_keys(settings.home, settings.registry_path, "la-camden", overlap=3600.0)
        assert broker.reload()
        new_keys = key_file.read_bytes()
        write_private(key_file, old_keys)  # the new key file has not reached the adapter's host yet
        with pytest.raises(KeyStoreError, match="does not hold"):
            reload_keys(la, settings)
        message = await police.send(typ="referral", to=["la-camden"], payload=example("referral.example.json"),
                                    sharing=sharing())

        async def waiting() -> bool:
            return la.deliverer.counts.waiting_for_key > 0

        await eventually(waiting, what="the delivery to be offered back", timeout=15)
        assert la.deliverer.counts.dead_lettered == 0 and la.deliverer.counts.delivered == 0
        write_private(key_file, new_keys)  # it arrives; SIGHUP
        reload_keys(la, settings)

        async def handed() -> bool:
            return any(message.encode() in p.read_bytes() for p in (tmp_path / "case").glob("*.json"))

        await eventually(handed, what="the referral in the case system's folder", timeout=15)
        assert la.deliverer.counts.dead_lettered == 0
