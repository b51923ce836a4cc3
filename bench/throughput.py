"""(a) raw relay, (b) crypto floor and (c) the full pipeline's throughput, each on fresh state (its
own temporary home, keys and embedded nats-server, from :func:`bench.common.environment`).

- raw relay: durable pull consumer → ``publish_async`` to another stream → ack; no crypto.
- crypto floor: the primitives one message costs the broker, from :mod:`broker.wire._crypto` (one
  Ed25519 verification, one HPKE open, two HPKE seals and two Ed25519 signatures: the delivery and
  the sender's receipt), no JSON or base64, on one core.
- full pipeline: a backlog of referrals (each opening a deadline) drained by ``workers`` broker
  workers on the one durable consumer. The consumer is paused while the backlog is stored and the
  workers start; the clock runs from the moment it is resumed to the last delivery stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from typing import Any

import orjson
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from adapters.sdk import AgencyClient
from bench.common import (
    PAYLOAD_BYTES,
    broker_pids,
    broker_rss_mb,
    cpu_seconds,
    environment,
    nats_server_pid,
    percentiles,
    referral_payload,
    referral_sharing,
    start_brokers,
    stop_brokers,
)
from broker.identity.keys import load_identity
from broker.transport.connection import connected, jetstream
from broker.transport.topology import ensure_topology
from broker.wire import _crypto, hpke, jws
from broker.wire.registry import addressable
from broker.wire.subjects import BROKER_CONSUMER, DELIVERY, INGRESS

DRAIN_LIMIT_S = 300.0  # a drain that takes longer is reported as it stands


async def raw_relay(n: int = 5000) -> dict[str, Any]:
    """Consume, republish (pipelined, with Nats-Msg-Id), ack after the republish is stored."""
    data = os.urandom(PAYLOAD_BYTES)
    async with environment() as (_, url, settings, _r, _c), connected(settings, url, name="bench-relay") as nc:
        js = nc.jetstream(timeout=10, publish_async_max_pending=4000)
        for name in ("BENCH_IN", "BENCH_OUT"):
            await js.add_stream(StreamConfig(name=name, subjects=[name.lower()], storage=StorageType.FILE,
                                             duplicate_window=120))
        futures = [await js.publish_async("bench_in", data, headers={"Nats-Msg-Id": f"in-{i}"}) for i in range(n)]
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        await js.add_consumer("BENCH_IN", ConsumerConfig(durable_name="relay", ack_policy=AckPolicy.EXPLICIT,
                                                         ack_wait=60, max_ack_pending=10000))
        sub = await js.pull_subscribe_bind("relay", "BENCH_IN")
        latencies: list[float] = []
        done = 0
        start = time.perf_counter()
        while done < n and time.perf_counter() - start < DRAIN_LIMIT_S:
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
    return {"msgs_per_s": round(done / elapsed), **percentiles(latencies), "n": done,
            "note": "latency = one fetched batch's republish+ack time"}


@contextlib.contextmanager
def one_core() -> Any:
    """Pin this process to one CPU for the block (where the platform allows it)."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def crypto_floor(seconds: float = 3.0, max_n: int = 200_000) -> dict[str, Any]:
    """The primitives of one message, each on bytes of its real size, in a loop on one core."""
    async with environment() as (home, _, _s, registry, catalogue):
        police = AgencyClient(None, None, registry, load_identity(home, "police-met"), catalogue)  # type: ignore[arg-type]
        broker = load_identity(home, registry.broker_id)
        _, token = police.build(typ="referral", to=["la-camden"], payload=referral_payload(),
                                sharing=referral_sharing())
    now = time.time()
    signed = jws.read(token)
    verify_key = registry.signer(signed.kid, now)[1]
    claims = signed.verify(verify_key)
    signature = _crypto.unb64u(token.rpartition(b".")[2].decode("ascii"))
    enc = broker.kem[claims["enc"]["kid"]]
    info_in = hpke.hpke_info(jti=claims["jti"], iss=claims["iss"], typ=claims["typ"], ver=claims["ver"],
                             recipient=registry.broker_id)
    ciphertext = _crypto.unb64u(claims["payload"])
    plaintext = _crypto.open_sealed(enc.suite, enc.private, ciphertext, info_in)
    outputs = []  # per output: the suite, the recipient's key, the plaintext, the HPKE info, the JWS signing input
    for recipient, body in (("la-camden", plaintext), ("police-met", orjson.dumps({"status": "routed"}))):
        kid, suite, public = registry.recipient_key(recipient, now)
        jti = str(uuid.uuid4())
        info = hpke.hpke_info(jti=jti, iss=registry.broker_id, typ="referral", ver=1, recipient=recipient)
        sealed = hpke.seal_payload(body, jti=jti, iss=registry.broker_id, typ="referral", ver=1, recipient=recipient,
                                   kid=kid, suite=suite, public_key=public)
        out_token = jws.sign(claims | {"jti": jti, "payload": sealed.payload}, broker.signing_key, broker.sig_kid)
        outputs.append((suite, public, body, info, jws.parse(out_token).signing_input))
    key = broker.signing_key
    samples: list[float] = []
    with one_core():
        end = time.perf_counter() + seconds
        while len(samples) < max_n and (t0 := time.perf_counter()) < end:
            _crypto.verify_signature(verify_key, signature, signed.signing_input)
            _crypto.open_sealed(enc.suite, enc.private, ciphertext, info_in)
            for suite, public, body, info, signing_input in outputs:
                _crypto.seal(suite, public, body, info)
                key.sign(signing_input)
            samples.append((time.perf_counter() - t0) * 1000)
    return {"msgs_per_s": round(len(samples) / (sum(samples) / 1000)), **percentiles(samples), "n": len(samples),
            "note": "1 Ed25519 verify + 1 HPKE open + 2 HPKE seals + 2 Ed25519 signatures, one core"}


async def delivered(js: Any, agency: str = "la-camden") -> int:
    subject = f"sg.out.{agency}"
    info = await js.stream_info(DELIVERY, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def pause_ingress(nc: Any, on: bool) -> None:
    """Pause (or resume) the brokers' durable consumer (JetStream's consumer pause, nats-server 2.11+)."""
    body = {"pause_until": "2100-01-01T00:00:00Z"} if on else {}
    reply = orjson.loads((await nc.request(f"$JS.API.CONSUMER.PAUSE.{INGRESS}.{BROKER_CONSUMER}",
                                           orjson.dumps(body), timeout=10)).data)
    if reply.get("paused") is not on:
        raise RuntimeError(f"consumer pause answered {reply}")


async def wait_ready(js: Any, workers: int, limit: float = 60.0) -> float:
    """Until ``workers`` pull requests wait on the brokers' consumer (each worker is fetching)."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        info = await js.consumer_info(INGRESS, BROKER_CONSUMER)
        if (info.num_waiting or 0) >= workers:
            break
        await asyncio.sleep(0.05)
    else:
        print(f"  (the brokers' consumer had fewer than {workers} pull requests after {limit:.0f} s)", flush=True)
    return time.perf_counter() - start


async def full_pipeline(workers: int, n: int) -> dict[str, Any]:
    """Throughput of ``workers`` broker workers draining a backlog of ``n`` referrals; RSS at the end."""
    async with environment() as (home, url, settings, registry, catalogue), \
            connected(settings, url, name="bench-load") as nc:
        js = jetstream(nc, settings)
        await ensure_topology(js, settings.streams, settings.pipeline, addressable(registry))
        await pause_ingress(nc, True)
        police = AgencyClient(nc, js, registry, load_identity(home, "police-met"), catalogue)
        payload, sharing = referral_payload(), referral_sharing()
        built = [police.build(typ="referral", to=["la-camden"], payload=payload, sharing=sharing) for _ in range(n)]
        futures = [await js.publish_async("sg.in.police-met", data, headers={"Nats-Msg-Id": jti})
                   for jti, data in built]
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        procs = await start_brokers(home, url, workers)
        try:
            ready_s = await wait_ready(js, workers)
            pids, server = broker_pids(procs), nats_server_pid(home)
            brokers_cpu, server_cpu = cpu_seconds(pids), cpu_seconds([server])
            await pause_ingress(nc, False)
            start = time.perf_counter()
            while (done := await delivered(js)) < n and time.perf_counter() - start < DRAIN_LIMIT_S:
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - start
            brokers_cpu, server_cpu = cpu_seconds(pids) - brokers_cpu, cpu_seconds([server]) - server_cpu
            rss = broker_rss_mb(procs)
        finally:
            await stop_brokers(procs)
    return {"msgs_per_s": round(done / elapsed), "n": done, "of": n, "workers": workers, "seconds": round(elapsed, 2),
            "ready_s": round(ready_s, 2), "rss_mb": rss,
            "cpu": {"brokers_ms_per_msg": round(brokers_cpu / max(done, 1) * 1000, 3),
                    "nats_server_ms_per_msg": round(server_cpu / max(done, 1) * 1000, 3),
                    "cores_busy": round((brokers_cpu + server_cpu) / elapsed, 2),
                    "note": "CPU during the drain, from /proc: the brokers' processes and the nats-server's"}}
