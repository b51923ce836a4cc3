"""What an operator on call relies on: readiness that names each check, maintenance mode,
Prometheus metrics, and no personal data anywhere but in the recipient's hands."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from broker import logs
from broker.config import Settings
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.wire.catalogue import Catalogue
from broker.wire.subjects import DELIVERY
from tests.conftest import ClientFactory
from tests.helpers import drain, eventually, referral, sharing
from tests.support.sending import send_referrals
from tests.support.web import auth, until_recorded

pytestmark = pytest.mark.timeout(90)
Client = TestClient  # type: ignore[type-arg]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CHECKS = {"nats", "streams", "keys", "rulebook", "pipeline", "audit-writer", "audit-index", "audit-integrity",
          "backlog", "maintenance", "workers"}


async def test_health_and_readiness_name_every_check(client: Client) -> None:
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 200 and body["status"] == "ready", body
    assert set(body["checks"]) == CHECKS
    assert all(c["state"] == "ok" and c["detail"] for c in body["checks"].values())


async def test_readiness_fails_on_a_missing_stream_and_a_backlog(client: Client, broker: Broker,
                                                                 settings: Settings) -> None:
    broker.metrics.backlog.set(settings.pipeline.ready_backlog + 1)
    body = await (await client.get("/readyz")).json()
    assert body["checks"]["backlog"]["state"] == "fail" and body["status"] == "not-ready"
    async with connected(settings, settings.nats.url or "", name="ops") as nc:
        await jetstream(nc, settings).delete_stream(DELIVERY)
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 503 and body["checks"]["streams"] == {"state": "fail", "detail": "missing: SG_DELIVERY"}


async def test_a_bug_in_the_index_follower_is_said_on_readiness_and_retried(
        client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block the index cannot take in (here: deriving the queue meets a bug) must not stop the IG
    pages silently: readiness warns while it lasts, and the follower indexes the block once it can."""
    from broker.audit import tables

    broken = asyncio.Event()
    broken.set()
    derive = tables._derive_all

    def buggy(*args: Any) -> Any:
        if broken.is_set():
            raise RuntimeError("a bug")
        return derive(*args)

    monkeypatch.setattr(tables, "_derive_all", buggy)
    r = await client.post("/api/v1/subject-search", json={"nhsNumber": "9434765919"},
                          headers=auth(settings, "ig-officer"))  # an officer's action: an audit record
    assert r.status == 200

    async def warned() -> dict[str, Any] | None:
        check: dict[str, Any] = (await (await client.get("/readyz")).json())["checks"]["audit-index"]
        return check if check["state"] == "warn" else None

    check = await eventually(warned, what="readiness warning of the index follower")
    assert "RuntimeError" in check["detail"] and (await client.get("/readyz")).status == 200  # still takes work

    async def indexed() -> bool:
        r = await client.get("/api/v1/records?event=subject-search", headers=auth(settings, "auditor"))
        return bool((await r.json())["items"])

    assert not await indexed()
    broken.clear()
    await eventually(indexed, what="the officer's action indexed once the follower could", timeout=15)
    assert (await (await client.get("/readyz")).json())["checks"]["audit-index"]["state"] == "ok"


async def test_maintenance_mode_holds_new_work_and_reports_503(client: Client, settings: Settings,
                                                               agency: ClientFactory) -> None:
    r = await client.put("/api/v1/maintenance", json={"on": True}, headers=auth(settings, "operator"))
    assert r.status == 200 and (await r.json()) == {"maintenance": True}
    r = await client.get("/readyz")
    assert r.status == 503 and (await r.json())["checks"]["maintenance"]["state"] == "fail"
    police = await agency("police-met")
    message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    with pytest.raises(Exception, match="no outcome"):
        await police.wait_outcome(message, timeout=1.5)  # waiting in the stream, not lost
    r = await client.put("/api/v1/maintenance", json={"on": False}, headers=auth(settings, "ig-officer"))
    assert r.status == 403  # operators only
    await client.put("/api/v1/maintenance", json={"on": False}, headers=auth(settings, "operator"))
    assert (await police.wait_outcome(message, timeout=10)).payload["status"] == "routed"
    assert (await client.get("/readyz")).status == 200


async def test_metrics_follow_conventions_and_carry_no_identifiers(client: Client, settings: Settings,
                                                                   agency: ClientFactory) -> None:
    await send_referrals(agency, count=2)
    police = await agency("police-met")
    bad = sharing()
    del bad["lawfulBasis"], bad["lawEnforcementBasis"]
    rejected = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=bad)
    assert (await police.wait_outcome(rejected, timeout=10)).type == "rejection"
    async def counted() -> tuple[int, str, str] | None:  # the outcome reaches the sender just before the broker counts
        r = await client.get("/metrics")
        text = await r.text()
        return (r.status, r.headers["Content-Type"], text) if "sgb_messages_received_total 3.0" in text else None

    status, content_type, text = await eventually(counted, what="the metrics to count three messages", timeout=3)
    assert status == 200 and content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("sgb_messages_received_total", ())] == 3
    assert value[("sgb_messages_rejected_total", (("code", "no-lawful-basis"),))] == 1
    assert value[("sgb_deliveries_total", (("type", "referral"),))] == 2
    assert value[("sgb_review_flags_total", (("flag", "shared-without-consent"),))] == 2
    assert value[("sgb_pipeline_stage_seconds_count", (("stage", "total"),))] == 3
    assert value[("sgb_audit_blocks_written_total", ())] >= 1
    for name in ("sgb_messages_in_flight", "sgb_consumer_backlog_messages", "sgb_maintenance_mode",
                 "sgb_nats_reconnects_total"):
        assert any(n == name for n, _ in value), name
    for (name, labels), _ in value.items():
        assert name.startswith("sgb_")  # only our own registry: no global collectors
        for _, label in labels:
            assert not UUID.search(label), (name, label)  # no message ids as label values
    promtool = shutil.which("promtool")
    if promtool:
        proc = await asyncio.create_subprocess_exec(promtool, "check", "metrics", stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        report, _ = await asyncio.wait_for(proc.communicate(text.encode()), 30)
        assert proc.returncode == 0, report.decode()


# -- no personal data anywhere but with the recipient -------------------------------------------


def _markers(payload: Any, catalogue: Catalogue, typ: str) -> tuple[Any, list[str]]:
    """Put a unique marker into every string of the payload the schema lets hold one; the
    identifiers that cannot hold one (NHS number, dates of birth) are markers themselves."""
    mtype = catalogue.message_type(typ, 1)
    assert mtype is not None
    validator = mtype.validator
    markers: list[str] = []

    def walk(node: Any, path: list[Any]) -> None:
        if isinstance(node, dict):
            for k in list(node):
                walk(node[k], [*path, k])
        elif isinstance(node, list):
            for i in range(len(node)):
                walk(node[i], [*path, i])
        elif isinstance(node, str):
            candidate = f"Qz{len(markers):03d}Xq"
            parent = payload
            for step in path[:-1]:
                parent = parent[step]
            original = parent[path[-1]]
            parent[path[-1]] = candidate
            if validator.is_valid(payload) and len(candidate) >= 6:
                markers.append(candidate)
            else:
                parent[path[-1]] = original
                if path[-1] in ("nhsNumber", "dateOfBirth", "postcode"):
                    markers.append(original)

    walk(payload, [])
    return payload, markers


async def test_no_personal_data_outside_the_recipients_hands(own_nats_url: str, broker: Broker, settings: Settings,
                                                             agency: ClientFactory, client: Client,
                                                             capsys: pytest.CaptureFixture[str],
                                                             catalogue: Catalogue) -> None:
    """Reads the nats-server's store, so on a server of its own."""
    out = io.StringIO()
    logs.configure(level="DEBUG", json=True, stream=out)
    structlog.get_logger("t").info("logging to the capture")
    payload, markers = _markers(referral(), catalogue, "referral")
    assert len(markers) >= 15, markers
    police, la = await agency("police-met"), await agency("la-camden")
    message = await police.send(typ="referral", to=["la-camden", "school-hillside"], payload=payload,
                                sharing=sharing())
    await police.wait_outcome(message, timeout=10)
    (delivery,) = await drain(la, want=1)
    received = orjson.dumps(delivery.payload).decode()
    assert all(m in received for m in markers)  # the recipient does get them
    assert (await until_recorded(client, settings, message, "shared", timeout=5))["recipient"] == "la-camden"
    metrics = await (await client.get("/metrics")).text()
    await client.post("/api/v1/integrity/verify", headers=auth(settings, "auditor"))
    places = {
        "logs": out.getvalue() + capsys.readouterr().out,
        "metrics": metrics,
        "audit index": b"".join(p.read_bytes() for p in settings.index_path.parent.glob("*")).decode("latin-1"),
        "nats store": b"".join(p.read_bytes() for p in Path(str(settings.home)).parent.rglob("nats/**/*")
                               if p.is_file()).decode("latin-1"),
    }
    assert "logging to the capture" in places["logs"] and len(places["nats store"]) > 10_000
    assert message in places["audit index"]  # the index holds this message's records: the scan reads them
    assert "sgb_messages_received_total" in places["metrics"]
    lines = [orjson.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    about_messages = [line for line in lines if "msg_id" in line]
    assert about_messages and all("stage" in line for line in about_messages)  # every line: id and stage
    (summary,) = [line for line in lines if line["event"] == "message processed"]  # one summary per message
    assert summary["message"] == message and summary["outcome"] == "shared" and summary["stage"] == "done"
    for where, text in places.items():
        leaked = [m for m in markers if m in text]
        assert not leaked, f"personal data in the {where}: {leaked}"


async def test_shutdown_finishes_or_hands_back_in_flight_work(settings: Settings, topology: None,
                                                              agency: ClientFactory) -> None:
    """A broker stopped under load with a tiny drain deadline hands back what it cannot finish
    (nak, not a wait for ack_wait); a second broker finishes it; every message arrives once."""
    from dataclasses import replace

    from broker.pipeline.service import running_broker

    police, la = await agency("police-met"), await agency("la-camden")
    sent = [await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            for _ in range(600)]
    # ack_wait far beyond the drain below: the second broker can only finish in time if the first
    # handed its unfinished work back (nak) rather than leaving it to time out
    patient = replace(settings, pipeline=replace(settings.pipeline, ack_wait=300.0))
    hasty = replace(patient, pipeline=replace(patient.pipeline, drain_timeout=0.01))
    async with running_broker(hasty, settings.nats.url or "") as first:
        async def busy() -> bool:
            return first.pipeline.counters.received >= 30

        await eventually(busy, what="the first broker to take 30 messages", every=0.01)
    handed_back = 600 - first.pipeline.counters.received
    assert handed_back > 0
    second = replace(patient, instance="test-2")
    async with running_broker(second, settings.nats.url or "") as b2:
        deliveries = await drain(la, want=600, timeout=40)
        assert b2.pipeline.counters.received == handed_back
    origins = [d.claims["origin"]["jti"] for d in deliveries]
    assert sorted(origins) == sorted(sent)  # each once: nothing lost, nothing twice
