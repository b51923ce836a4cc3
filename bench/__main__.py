"""Benchmark of the broker on this machine, in one process tree.

(a) raw relay: durable pull consumer → ``publish_async`` to another stream → ack; no crypto.
(b) crypto floor: the crypto one message costs the broker (read the header and verify the
    sender's JWS as intake does, HPKE-open, HPKE-seal and sign the delivery and the sender's
    receipt), in a loop on one core.
(c) full pipeline: a backlog of referrals drained by ``sgb serve`` processes (1 and 2), and a
    paced run for end-to-end latency (publish → delivery stored for the recipient).
(d) the audit side on 100,000 records (``bench.audit``): signing and verifying chained blocks,
    and the index queries behind the IG pages.
(e) adapters in (``bench.adapters_in``): native documents mapped, checked, signed, sealed and
    published by the police and health adapters.
(f) the one JWS reader (``bench.reader``) on a message and an audit block, against its floor.

What every part shares (a temporary home with an embedded nats-server, the padded referral,
broker processes) is in ``bench.common``.

Writes ``bench/results.json``. A benchmark, not a test: numbers vary ±30 % between runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from adapters.sdk import AgencyClient
from bench.adapters_in import adapters_in
from bench.audit import audit_bench
from bench.common import (
    PAYLOAD_BYTES,
    environment,
    percentiles,
    referral_payload,
    referral_sharing,
    start_brokers,
    stop_brokers,
)
from bench.reader import reader_bench
from broker import logs
from broker.config import Settings
from broker.identity.keys import load_identity
from broker.transport.connection import connected, jetstream
from broker.transport.topology import ensure_topology
from broker.wire import hpke, jws
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry, addressable
from broker.wire.subjects import DELIVERY

RELAY_N = 5000
PIPELINE_N = 3000
PACED_RATE, PACED_SECONDS = 200, 5
RESULTS = Path(__file__).resolve().parent / "results.json"


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
    return {"msgs_per_s": round(RELAY_N / elapsed), **percentiles(latencies), "n": RELAY_N,
            "note": "latency = one fetched batch's republish+ack time"}


def crypto_floor(home: Path, registry: Registry, catalogue: Catalogue, seconds: float = 3.0) -> dict[str, Any]:
    """The broker's crypto for one message: verify, open, then seal+sign twice (delivery, receipt)."""
    police = AgencyClient(None, None, registry, load_identity(home, "police-met"), catalogue)  # type: ignore[arg-type]
    broker = load_identity(home, registry.broker_id)
    _, token = police.build(typ="referral", to=["la-camden"], payload=referral_payload(), sharing=referral_sharing())
    _, verify_key = registry.signer(jws.read(token).kid, time.time())
    kid, suite, public = registry.recipient_key("la-camden", time.time())
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        claims = jws.read(token).verify(verify_key)  # as intake reads it
        plaintext = hpke.open_payload(claims, registry.broker_id, broker.kem[claims["enc"]["kid"]])
        for recipient, body in (("la-camden", plaintext), ("police-met", b'{"status":"routed"}')):
            rkid, rsuite, rpub = (kid, suite, public) if recipient == "la-camden" else \
                registry.recipient_key(recipient, time.time())
            jti = str(uuid.uuid4())
            sealed = hpke.seal_payload(body, jti=jti, iss=registry.broker_id, typ="referral", ver=1,
                                       recipient=recipient, kid=rkid, suite=rsuite, public_key=rpub)
            jws.sign(claims | {"jti": jti, "payload": sealed.payload}, broker.signing_key, broker.sig_kid)
        samples.append((time.perf_counter() - t0) * 1000)
    return {"msgs_per_s": round(len(samples) / seconds), **percentiles(samples), "n": len(samples)}


async def _delivered(js: Any) -> int:
    info = await js.stream_info(DELIVERY, subjects_filter="sg.out.la-camden")
    return int((info.state.subjects or {}).get("sg.out.la-camden", 0))


async def _drain_la(js: Any) -> None:
    """Empty la-camden's queue between runs (ack everything)."""
    sub = await js.pull_subscribe_bind("la-camden", DELIVERY)
    while True:
        try:
            msgs = await sub.fetch(512, timeout=0.5)
        except TimeoutError:  # empty
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
        payload, sharing = referral_payload(), referral_sharing()
        built = [police.build(typ="referral", to=["la-camden"], payload=payload, sharing=sharing)
                 for _ in range(PIPELINE_N)]
        futures = [await js.publish_async("sg.in.police-met", data, headers={"Nats-Msg-Id": jti})
                   for jti, data in built]
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        procs = await start_brokers(home, url, brokers)
        try:
            while (first := await _delivered(js)) == 0:
                await asyncio.sleep(0.01)
            t_first = time.perf_counter()
            while (n := await _delivered(js)) < PIPELINE_N:
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - t_first
        finally:
            await stop_brokers(procs)
        await _drain_la(js)
    return {"msgs_per_s": round((n - first) / elapsed), "n": PIPELINE_N, "brokers": brokers}


async def paced_latency(home: Path, url: str, settings: Settings, registry: Registry,
                        catalogue: Catalogue) -> dict[str, Any]:
    """End-to-end latency at a modest steady rate with one broker process."""
    async with connected(settings, url, name="bench-paced") as nc, connected(settings, url, name="bench-la") as nc2:
        js, js2 = jetstream(nc, settings), jetstream(nc2, settings)
        police = AgencyClient(nc, js, registry, load_identity(home, "police-met"), catalogue)
        payload, sharing = referral_payload(), referral_sharing()
        procs = await start_brokers(home, url, 1)
        await asyncio.sleep(2.0)  # let the broker connect and bind
        sent: dict[str, float] = {}
        arrived: dict[str, float] = {}

        async def receive() -> None:
            sub = await js2.pull_subscribe_bind("la-camden", DELIVERY)
            while len(arrived) < PACED_RATE * PACED_SECONDS:
                try:
                    msgs = await sub.fetch(64, timeout=1)
                except TimeoutError:  # nothing yet: keep waiting
                    continue
                now = time.perf_counter()
                for m in msgs:
                    claims = jws.unverified(m.data)[1]
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
            await stop_brokers(procs)
    samples = [(arrived[j] - t) * 1000 for j, t in sent.items() if j in arrived]
    return {"rate_per_s": PACED_RATE, "n": len(samples), **percentiles(samples)}


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
        reader = reader_bench(home, registry, catalogue)
        for name, r in reader.items():
            print(f"(f) reader, {name:<12} {r['reader_us']:>8} µs, {r['reader_to_floor']}× its floor", flush=True)
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
        "reader": reader,
    }
    RESULTS.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"full / min(raw relay, crypto floor) = {results['ratio_full_to_floor']}  → {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
