"""Benchmark of the broker on this machine (``make bench``), every part on fresh state: its own
temporary home, fresh keys and its own embedded nats-server (``bench.common.environment``).

(a) raw relay: durable pull consumer → ``publish_async`` to another stream → ack; no crypto.
(b) crypto floor: the primitives one message costs the broker (one Ed25519 verification, one HPKE
    open, two HPKE seals, two Ed25519 signatures), no JSON or base64, on one core.
(c) full pipeline (``bench.throughput``, ``bench.latency``): a backlog of referrals drained by one
    broker worker, then by two on the same durable consumer; the ratio of one broker to
    min(raw relay, crypto floor) and of two to one; the latency curve from an open-loop generator
    in its own process at 25, 50 and 75 % of the one-broker capacity just measured; the brokers' RSS.
(d) the audit side on 100,000 records (``bench.audit``): signing and verifying chained blocks,
    and the index queries behind the IG pages.
(e) adapters in (``bench.adapters_in``): native documents mapped, checked, signed, sealed and
    published by the police and health adapters.
(f) the one JWS reader (``bench.reader``) on a message and an audit block, against its floor.
(g) the transparency log (``bench.merkle``, issue 16): proofs generated and verified on a
    1,000,000-record tree, their sizes, what the writer's tree and checkpoints cost a record, and
    the size of a 100-record subject-access bundle (on a 100,000-record chain) and its offline check.

Writes ``bench/results.json`` and draws ``bench/latency.png``. A benchmark, not a test: numbers
vary ±30 % between runs.

    python -m bench [--samples N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.adapters_in import adapters_in
from bench.audit import audit_bench
from bench.common import PAYLOAD_BYTES, environment
from bench.latency import latency_curve, plot
from bench.merkle import checkpoint_cost, merkle_bench, subject_bundle, writer_share
from bench.reader import reader_bench
from bench.throughput import crypto_floor, full_pipeline, raw_relay
from broker import logs
from broker.transport.connection import connected, jetstream
from broker.transport.topology import ensure_topology
from broker.wire.registry import addressable

HERE = Path(__file__).resolve().parent
RESULTS, PLOT = HERE / "results.json", HERE / "latency.png"
GOALS = {  # issue 15
    "one_broker_over_floor": (">=", 0.50),
    "two_over_one": (">=", 1.8),
    "p99_ms_at_50pct": ("<=", 25.0),
    "rss_mb_per_worker": ("<=", 150.0),
}


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    if args.quick:
        return {"samples": args.samples or 1000, "relay": 2000, "backlog": 1000, "audit": 20_000, "tlog": 100_000}
    return {"samples": args.samples or 10_000, "relay": 5000, "backlog": 5000, "audit": 100_000, "tlog": 1_000_000}


def _load() -> float:
    """The 1-minute load average: the bench wants the machine to itself (recorded with the results)."""
    return round(os.getloadavg()[0], 2)


def _goals(pipeline: dict[str, Any]) -> dict[str, Any]:
    at_half = [p for p in pipeline["latency"] if p.get("fraction_of_one_broker") == 0.5]
    rss = [mb for values in pipeline["rss_mb"].values() for mb in values]
    measured = {
        "one_broker_over_floor": pipeline["one_broker_over_floor"],
        "two_over_one": pipeline["two_over_one"],
        "p99_ms_at_50pct": at_half[0].get("p99_ms") if at_half else None,
        "rss_mb_per_worker": max(rss) if rss else None,
    }
    out = {}
    for name, (op, target) in GOALS.items():
        value = measured[name]
        met = value is not None and (value >= target if op == ">=" else value <= target)
        out[name] = {"value": value, "goal": f"{op} {target}", "met": met}
    return out


async def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    logs.configure(level="WARNING")  # the adapters log a line per document at INFO
    sizes = _sizes(args)
    load = {"start": _load()}
    if load["start"] > (os.cpu_count() or 1) / 2:
        print(f"warning: load average {load['start']} before the bench: other work here skews it", flush=True)
    print(f"payload ≈{PAYLOAD_BYTES} B; {os.cpu_count()} cores; fresh nats-server and keys for each part; "
          f"{sizes['samples']} latency samples a point", flush=True)
    relay = await raw_relay(sizes["relay"])
    print(f"(a) raw relay        {relay['msgs_per_s']:>7} msg/s", flush=True)
    floor = await crypto_floor()
    print(f"(b) crypto floor     {floor['msgs_per_s']:>7} msg/s  p50 {floor['p50_ms']} ms (one core)", flush=True)
    one = await full_pipeline(1, sizes["backlog"])
    print(f"(c) full, 1 broker   {one['msgs_per_s']:>7} msg/s  RSS {one['rss_mb']} MB", flush=True)
    two = await full_pipeline(2, sizes["backlog"])
    print(f"(c) full, 2 brokers  {two['msgs_per_s']:>7} msg/s  RSS {two['rss_mb']} MB", flush=True)
    load["before_latency"] = _load()
    curve = await latency_curve(one["msgs_per_s"], sizes["samples"])
    load["after_latency"] = _load()
    pipeline: dict[str, Any] = {
        "one_broker": one, "two_brokers": two,
        "one_broker_over_floor": round(one["msgs_per_s"] / min(relay["msgs_per_s"], floor["msgs_per_s"]), 3),
        "two_over_one": round(two["msgs_per_s"] / one["msgs_per_s"], 3),
        "latency": curve,
        "rss_mb": {"one_broker": one["rss_mb"], "two_brokers": two["rss_mb"],
                   "after_latency_curve": curve[-1]["rss_mb"] if curve else []},
    }
    pipeline["goals"] = _goals(pipeline)
    drawn = plot(curve, one["msgs_per_s"], PLOT)
    async with environment() as (home, url, settings, registry, catalogue):
        async with connected(settings, url, name="bench-topology") as nc:  # the streams the adapters publish to
            await ensure_topology(jetstream(nc, settings), settings.streams, settings.pipeline, addressable(registry))
        inbound = await adapters_in(home, settings, registry, catalogue)
    for name, r in inbound.items():
        print(f"(e) adapter in, {name:<22} {r['docs_per_s']:>7} docs/s  {r['msgs_per_s']:>6} msg/s", flush=True)
    async with environment() as (home, _, _s, registry, catalogue):
        reader = reader_bench(home, registry, catalogue)
    for name, r in reader.items():
        print(f"(f) reader, {name:<12} {r['reader_us']:>8} µs, {r['reader_to_floor']}× its floor", flush=True)
    async with environment() as (home, _, _s, registry, _c):
        audit = await audit_bench(home, registry, sizes["audit"])
    print(f"(d) audit, {sizes['audit']} records: verify {audit['verify_records_per_s']} rec/s; log page "
          f"{audit['log_first_page_ms']} ms, filtered {audit['log_filtered_ms']} ms, volumes "
          f"{audit['volumes_90_days_ms']} ms", flush=True)
    tlog = {"tree": merkle_bench(sizes["tlog"]), "writer": checkpoint_cost(),
            "subject_bundle": subject_bundle(sizes["tlog"] // 10)}
    tree = tlog["tree"]
    tlog["writer"]["share_of_one_broker_cpu"] = writer_share(tlog["writer"], one)
    print(f"(g) transparency log, {sizes['tlog']} records: {tree['inclusion_proofs_per_s']} inclusion and "
          f"{tree['consistency_proofs_per_s']} consistency proofs/s, {tree['inclusion_verifications_per_s']} and "
          f"{tree['consistency_verifications_per_s']} verifications/s, inclusion proof "
          f"{tree['inclusion_proof_bytes']['max']} B; writer {tlog['writer']['per_record_us']} µs a record "
          f"({tlog['writer']['share_of_one_broker_cpu']} % of a broker's CPU a message); a 100-record subject bundle "
          f"{tlog['subject_bundle']['bundle_bytes']} B, checked in {tlog['subject_bundle']['check_ms']} ms", flush=True)
    results = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_1min": load | {"end": _load()}},
        "payload_bytes": PAYLOAD_BYTES, "quick": args.quick, "samples_per_point": sizes["samples"],
        "raw_relay": relay, "crypto_floor": floor, "full_pipeline": pipeline,
        "audit": audit, "adapters_in": inbound, "reader": reader, "transparency_log": tlog,
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"one broker / min(raw relay, crypto floor) = {pipeline['one_broker_over_floor']}; "
          f"two / one = {pipeline['two_over_one']}", flush=True)
    for name, goal in pipeline["goals"].items():
        print(f"  goal {name:<22} {goal['value']!s:>8} {goal['goal']:<8} {'met' if goal['met'] else 'NOT met'}")
    print(f"→ {RESULTS}" + (f", {PLOT}" if drawn else " (no matplotlib: no plot)")
          + f"; {results['seconds']} s", flush=True)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark the broker on this machine.")
    parser.add_argument("--samples", type=int, default=None,
                        help="latency samples per point (default 10000; 1000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short run: smaller backlogs, 1000 samples a point")
    args = parser.parse_args(argv)
    if args.samples is not None and not 100 <= args.samples <= 1_000_000:
        parser.error("--samples: between 100 and 1,000,000")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
