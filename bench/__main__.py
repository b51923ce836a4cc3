"""Benchmark of the broker on this machine, in one process tree.

(a) raw relay: durable pull consumer → ``publish_async`` to another stream → ack; no crypto.
(b) crypto floor: the crypto one message costs the broker (read the header and verify the
    sender's JWS as intake does, HPKE-open, HPKE-seal and sign the delivery and the sender's
    receipt), in a loop on one core.
(c) full pipeline: a backlog of referrals drained by ``sgb serve`` processes (1 and 2), and a
    paced run for end-to-end latency (publish → delivery stored for the recipient).
(d) the audit side on 100,000 records: signing and verifying chained blocks, and the index
    queries behind the IG pages.
(e) adapters in: native documents mapped, checked, signed, sealed and published by the police
    adapter (one PPN at a time, and a CSV export of 500 children) and the health adapter (FHIR
    Bundles, validated with fhir.resources).

Writes ``bench/results.json``. A benchmark, not a test: numbers vary ±30 % between runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from adapters.sdk import AgencyClient
from broker import logs
from broker.config import NatsSettings, Settings
from broker.identity.devkeys import init_dev_keys
from broker.identity.keys import load_identity
from broker.transport.connection import connected, jetstream
from broker.transport.natsserver import embedded_nats
from broker.transport.topology import ensure_topology
from broker.wire import hpke, jws
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry, addressable
from broker.wire.subjects import DELIVERY

PAYLOAD_BYTES = 2048
RELAY_N = 5000
PIPELINE_N = 3000
PACED_RATE, PACED_SECONDS = 200, 5
EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"
RESULTS = Path(__file__).resolve().parent / "results.json"


def _referral() -> dict[str, Any]:
    """The example referral padded to about 2 KiB of JSON."""
    payload: dict[str, Any] = orjson.loads((EXAMPLES / "referral.example.json").read_bytes())
    base = len(orjson.dumps(payload))
    payload["concern"]["details"] += " " + "x" * max(0, PAYLOAD_BYTES - base - 1)
    return payload


def _sharing() -> dict[str, Any]:
    return orjson.loads((EXAMPLES / "referral.sharing.example.json").read_bytes())  # type: ignore[no-any-return]


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2), "p99_ms": round(q[98], 2)}


async def raw_relay(url: str, settings: Settings) -> dict[str, Any]:
    """Consume, republish (pipelined, with Nats-Msg-Id), ack after the republish is stored."""
    data = os.urandom(PAYLOAD_BYTES)
    async with connected(settings, url, name="bench-relay") as nc:
        js = nc.jetstream(timeout=10, publish_async_max_pending=4000)
        for name in ("BENCH_IN", "BENCH_OUT"):
            await js.add_stream(StreamConfig(name=name, subjects=[name.lower()], storage=StorageType.FILE,
                                             duplicate_window=120))
        futures = [await js.publish_async("bench_in", data, headers={"Nats-Msg-Id": f"in-{i}"})
                   for i in range(RELAY_N)]
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        await js.add_consumer("BENCH_IN", ConsumerConfig(durable_name="relay", ack_policy=AckPolicy.EXPLICIT,
                                                         ack_wait=60, max_ack_pending=10000))
        sub = await js.pull_subscribe_bind("relay", "BENCH_IN")
        latencies: list[float] = []
        done = 0
        start = time.perf_counter()
        while done < RELAY_N:
            msgs = await sub.fetch(256, timeout=5)
            t0 = time.perf_counter()
            acks = [await js.publish_async("bench_out", m.data,
                                           headers={"Nats-Msg-Id": f"out-{m.metadata.sequence.stream}"})
                    for m in msgs]
            await asyncio.wait_for(asyncio.gather(*acks), 10)
            for m in msgs:
                await m.ack()
            latencies.extend([(time.perf_counter() - t0) * 1000] * len(msgs))
            done += len(msgs)
        elapsed = time.perf_counter() - start
    return {"msgs_per_s": round(RELAY_N / elapsed), **_percentiles(latencies), "n": RELAY_N,
            "note": "latency = one fetched batch's republish+ack time"}


def crypto_floor(home: Path, registry: Registry, catalogue: Catalogue, seconds: float = 3.0) -> dict[str, Any]:
    """The broker's crypto for one message: verify, open, then seal+sign twice (delivery, receipt)."""
    police = AgencyClient(None, None, registry, load_identity(home, "police-met"), catalogue)  # type: ignore[arg-type]
    broker = load_identity(home, registry.broker_id)
    _, token = police.build(typ="referral", to=["la-camden"], payload=_referral(), sharing=_sharing())
    _, verify_key = registry.signer(jws.read_header(token)["kid"], time.time())
    kid, suite, public = registry.recipient_key("la-camden", time.time())
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        jws.read_header(token)
        claims = jws.verify_fast(token, verify_key)
        plaintext = hpke.open_payload(claims, registry.broker_id, broker.kem[claims["enc"]["kid"]])
        for recipient, body in (("la-camden", plaintext), ("police-met", b'{"status":"routed"}')):
            rkid, rsuite, rpub = (kid, suite, public) if recipient == "la-camden" else \
                registry.recipient_key(recipient, time.time())
            jti = str(uuid.uuid4())
            sealed = hpke.seal_payload(body, jti=jti, iss=registry.broker_id, typ="referral", ver=1,
                                       recipient=recipient, kid=rkid, suite=rsuite, public_key=rpub)
            jws.sign(claims | {"jti": jti, "payload": sealed.payload}, broker.signing_key, broker.sig_kid)
        samples.append((time.perf_counter() - t0) * 1000)
    return {"msgs_per_s": round(len(samples) / seconds), **_percentiles(samples), "n": len(samples)}


async def _delivered(js: Any) -> int:
    info = await js.stream_info(DELIVERY, subjects_filter="sg.out.la-camden")
    return int((info.state.subjects or {}).get("sg.out.la-camden", 0))


async def _start_brokers(home: Path, url: str, count: int, *args: str) -> list[asyncio.subprocess.Process]:
    procs = []
    for i in range(count):
        instance = f"bench-{i}-{uuid.uuid4().hex[:6]}"
        env = os.environ | {"SGB_NATS_URL": url, "SGB_HOME": str(home), "SGB_INSTANCE": instance}
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker.cli", "serve", "--log-level", "ERROR", *args, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
    return procs


async def _stop(procs: list[asyncio.subprocess.Process]) -> None:
    for p in procs:
        p.terminate()
    await asyncio.gather(*(asyncio.wait_for(p.wait(), 30) for p in procs))


async def _drain_la(js: Any) -> None:
    """Empty la-camden's queue between runs (ack everything)."""
    sub = await js.pull_subscribe_bind("la-camden", DELIVERY)
    while True:
        try:
            msgs = await sub.fetch(512, timeout=0.5)
        except (TimeoutError, NatsTimeoutError):  # empty
            break
        for m in msgs:
            await m.ack()
    await sub.unsubscribe()


async def full_pipeline(home: Path, url: str, settings: Settings, registry: Registry, catalogue: Catalogue,
                        brokers: int) -> dict[str, Any]:
    """Throughput from a preloaded backlog drained by ``brokers`` processes."""
    async with connected(settings, url, name="bench-load") as nc:
        js = jetstream(nc, settings)
        await ensure_topology(js, settings.streams, settings.pipeline, addressable(registry))
        await _drain_la(js)
        police = AgencyClient(nc, js, registry, load_identity(home, "police-met"), catalogue)
        payload, sharing = _referral(), _sharing()
        built = [police.build(typ="referral", to=["la-camden"], payload=payload, sharing=sharing)
                 for _ in range(PIPELINE_N)]
        futures = [await js.publish_async("sg.in.police-met", data, headers={"Nats-Msg-Id": jti})
                   for jti, data in built]
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        procs = await _start_brokers(home, url, brokers)
        try:
            while (first := await _delivered(js)) == 0:
                await asyncio.sleep(0.01)
            t_first = time.perf_counter()
            while (n := await _delivered(js)) < PIPELINE_N:
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - t_first
        finally:
            await _stop(procs)
        await _drain_la(js)
    return {"msgs_per_s": round((n - first) / elapsed), "n": PIPELINE_N, "brokers": brokers}


async def paced_latency(home: Path, url: str, settings: Settings, registry: Registry,
                        catalogue: Catalogue) -> dict[str, Any]:
    """End-to-end latency at a modest steady rate with one broker process."""
    async with connected(settings, url, name="bench-paced") as nc, connected(settings, url, name="bench-la") as nc2:
        js, js2 = jetstream(nc, settings), jetstream(nc2, settings)
        police = AgencyClient(nc, js, registry, load_identity(home, "police-met"), catalogue)
        payload, sharing = _referral(), _sharing()
        procs = await _start_brokers(home, url, 1)
        await asyncio.sleep(2.0)  # let the broker connect and bind
        sent: dict[str, float] = {}
        arrived: dict[str, float] = {}

        async def receive() -> None:
            sub = await js2.pull_subscribe_bind("la-camden", DELIVERY)
            while len(arrived) < PACED_RATE * PACED_SECONDS:
                try:
                    msgs = await sub.fetch(64, timeout=1)
                except (TimeoutError, NatsTimeoutError):  # nothing yet: keep waiting
                    continue
                now = time.perf_counter()
                for m in msgs:
                    body = m.data.split(b".")[1]
                    claims = orjson.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
                    arrived[claims["origin"]["jti"]] = now
                    await m.ack()

        receiver = asyncio.create_task(receive())
        try:
            interval = 1 / PACED_RATE
            start = time.perf_counter()
            for i in range(PACED_RATE * PACED_SECONDS):
                await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
                jti, data = police.build(typ="referral", to=["la-camden"], payload=payload, sharing=sharing)
                sent[jti] = time.perf_counter()
                await js.publish_async("sg.in.police-met", data, headers={"Nats-Msg-Id": jti})
            await asyncio.wait_for(receiver, 60)
        finally:
            receiver.cancel()
            await _stop(procs)
    samples = [(arrived[j] - t) * 1000 for j, t in sent.items() if j in arrived]
    return {"rate_per_s": PACED_RATE, "n": len(samples), **_percentiles(samples)}


async def audit_bench(home: Path, registry: Registry, n: int = 100_000) -> dict[str, Any]:
    """(d) the IG side on a 100,000-record log: index queries the pages make, and verifying the
    signed, hash-chained blocks of that many records (no NATS: the cost of the work itself)."""
    from broker.audit.chain import Head, build_block
    from broker.audit.index import AuditIndex, RecordQuery
    from broker.audit.verify import Verifier, broker_keys

    identity = load_identity(home, registry.broker_id)
    agencies = ["police-met", "health-camden", "la-camden", "school-hillside"]
    bases = ["UKGDPR_6_1_E", "UKGDPR_6_1_C", "UKGDPR_6_1_D"]
    start = time.time() - 90 * 86400
    records = []
    for i in range(n):
        event = ("received", "shared", "shared", "refused")[i % 4]
        records.append({"v": 1, "id": f"r{i}", "at": dt.datetime.fromtimestamp(start + i * 77.76, dt.UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z"), "instance": "bench", "message": f"m{i // 4}",
            "event": event, "type": "referral", "sender": agencies[i % 4], "recipient": agencies[(i + 2) % 4],
            "decision": {"shared": "share", "refused": "refuse"}.get(event), "rules": ["referral.to-la"],
            "sharing": {"lawfulBasis": bases[i % 3], "consentStatus": "NOT_SOUGHT"},
            "flags": ["shared-without-consent"] if i % 40 == 0 else [], "subjects": [f"k.{i // 8}"]})
    t0 = time.perf_counter()
    head, blocks = Head(), []
    for i in range(0, n, 256):
        token, head = build_block(records[i:i + 256], head, identity, "bench", time.time())
        blocks.append(token)
    sign_s = time.perf_counter() - t0
    verifier = Verifier(broker_keys(registry))
    t0 = time.perf_counter()
    for seq, token in enumerate(blocks, start=1):
        verifier.block(seq, "sg.audit.bench", token)
    report = verifier.finish()
    verify_s = time.perf_counter() - t0
    assert report.ok and report.records == n

    index = AuditIndex(home / "bench-index.sqlite")
    await index.open()
    t0 = time.perf_counter()
    for i in range(0, n, 2000):
        await index.apply([(i, records[i:i + 2000])], [], i + 2000)
    load_s = time.perf_counter() - t0
    timings: dict[str, float] = {}

    async def timed(name: str, call: Any) -> Any:
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            result = await call()
            best = min(best, time.perf_counter() - t)
        timings[name] = round(best * 1000, 2)
        return result

    first = await timed("log_first_page_ms", lambda: index.records(RecordQuery(limit=50)))
    await timed("log_second_page_ms", lambda: index.records(RecordQuery(limit=50, cursor=first.next)))
    await timed("log_filtered_ms", lambda: index.records(RecordQuery(
        equals={"agency": "health-camden", "event": "shared", "lawfulBasis": "UKGDPR_6_1_C"}, limit=50)))
    await timed("flagged_ms", lambda: index.records(RecordQuery(flagged=True, limit=50)))
    await timed("review_queue_ms", lambda: index.reviews(limit=50))
    await timed("trail_ms", lambda: index.trail("m1234"))
    await timed("subject_search_ms", lambda: index.subject_messages(["k.777"]))
    today = dt.datetime.now(dt.UTC).date()
    await timed("volumes_90_days_ms", lambda: index.volumes("lawfulBasis", since=(today - dt.timedelta(days=90))
                                                               .isoformat(), until=today.isoformat()))
    index.close()
    return {"records": n, "blocks": len(blocks), "sign_records_per_s": round(n / sign_s),
            "verify_records_per_s": round(n / verify_s), "index_load_records_per_s": round(n / load_s), **timings}


async def adapters_in(home: Path, settings: Settings, registry: Registry, catalogue: Catalogue,
                      seconds: float = 3.0) -> dict[str, Any]:
    """Documents per second through :class:`adapters.inbound.Submitter` (no broker draining)."""
    from adapters.formats.health import fhir_bundle
    from adapters.formats.mapping import MapContext, Mapper
    from adapters.formats.police import ppn_csv, ppn_json
    from adapters.runtime.inbound import Submitter
    from adapters.sdk import agency_client
    from tests.test_health import referral_bundle
    from tests.test_police import CSV, PPN

    shares = {t: orjson.loads((EXAMPLES / f"{t}.sharing.example.json").read_bytes())
              for t in ("referral", "encompass-notification")}
    rows = CSV.splitlines()
    export = "\n".join([rows[0], *(rows[1 + i % 2].replace("MPS/2026/7781", f"MPS/B/{i // 2}")
                                    for i in range(500))]) + "\n"
    cases: list[tuple[str, str, bytes, Mapper]] = [
        ("ppn_json", "police-met", orjson.dumps(PPN), ppn_json),
        ("ppn_csv_500_children", "police-met", export.encode(), ppn_csv),
        ("fhir_bundle", "health-camden", orjson.dumps(referral_bundle()), fhir_bundle),
    ]
    out: dict[str, Any] = {}
    for name, agency, body, mapper in cases:
        async with agency_client(settings, agency, seen=home / "bench-seen" / f"{name}.sqlite") as client:
            context = MapContext(agency=agency, registry=registry, catalogue=catalogue,
                                 options={"local_authority": "la-camden"})
            submitter = Submitter(client, context, shares, home / "bench-adapter" / name)
            docs = messages = 0
            samples: list[float] = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                done = await submitter.submit(body, mapper, key=f"{name}-{docs}")
                samples.append((time.perf_counter() - t0) * 1000)
                docs, messages = docs + 1, messages + len(done.messages)
            submitter.close()
        elapsed = sum(samples) / 1000
        out[name] = {"docs_per_s": round(docs / elapsed, 1), "msgs_per_s": round(messages / elapsed),
                     "msgs_per_doc": messages // docs, **(_percentiles(samples) if docs > 2 else {}), "n": docs}
    return out


@contextlib.asynccontextmanager
async def environment() -> AsyncIterator[tuple[Path, str, Settings, Registry, Catalogue]]:
    """A temporary home with development keys and an embedded nats-server (``bench.fuzz`` uses it too)."""
    with tempfile.TemporaryDirectory(prefix="sgb-bench-") as tmp:
        home, catalogue = Path(tmp), Catalogue()
        init_dev_keys(home, home / "registry.json")
        async with embedded_nats(home / "nats") as url:
            settings = Settings(home=home, registry_path=home / "registry.json", instance="bench-load",
                                nats=NatsSettings(url=url, request_timeout=10))
            yield home, url, settings, Registry.load(home / "registry.json", catalogue), catalogue


async def main() -> int:
    logs.configure(level="WARNING")  # the adapters log a line per document at INFO
    async with environment() as (home, url, settings, registry, catalogue):
        print(f"nats-server {url}; payload ≈{PAYLOAD_BYTES} B; {os.cpu_count()} cores", flush=True)
        relay = await raw_relay(url, settings)
        print(f"(a) raw relay        {relay['msgs_per_s']:>7} msg/s", flush=True)
        floor = crypto_floor(home, registry, catalogue)
        print(f"(b) crypto floor     {floor['msgs_per_s']:>7} msg/s  p50 {floor['p50_ms']} ms", flush=True)
        one = await full_pipeline(home, url, settings, registry, catalogue, 1)
        print(f"(c) full, 1 broker   {one['msgs_per_s']:>7} msg/s", flush=True)
        two = await full_pipeline(home, url, settings, registry, catalogue, 2)
        print(f"(c) full, 2 brokers  {two['msgs_per_s']:>7} msg/s", flush=True)
        paced = await paced_latency(home, url, settings, registry, catalogue)
        print(f"(c) latency at {PACED_RATE}/s  p50 {paced['p50_ms']} ms  p95 {paced['p95_ms']} ms"
              f"  p99 {paced['p99_ms']} ms", flush=True)
        inbound = await adapters_in(home, settings, registry, catalogue)
        for name, r in inbound.items():
            print(f"(e) adapter in, {name:<22} {r['docs_per_s']:>7} docs/s  {r['msgs_per_s']:>6} msg/s", flush=True)
        audit = await audit_bench(home, registry)
        print(f"(d) audit, 100k records: verify {audit['verify_records_per_s']} rec/s; log page "
              f"{audit['log_first_page_ms']} ms, filtered {audit['log_filtered_ms']} ms, volumes "
              f"{audit['volumes_90_days_ms']} ms", flush=True)
    floor_rate = min(relay["msgs_per_s"], floor["msgs_per_s"])
    best = max(one["msgs_per_s"], two["msgs_per_s"])
    results = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "payload_bytes": PAYLOAD_BYTES,
        "raw_relay": relay, "crypto_floor": floor,
        "full_pipeline": {"one_broker": one, "two_brokers": two, "latency": paced,
                          "msgs_per_s": best, **{k: paced[k] for k in ("p50_ms", "p95_ms", "p99_ms")}},
        "ratio_full_to_floor": round(best / floor_rate, 3),
        "audit": audit,
        "adapters_in": inbound,
    }
    RESULTS.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"full / min(raw relay, crypto floor) = {results['ratio_full_to_floor']}  → {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
