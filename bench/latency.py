"""(c) The latency curve: end-to-end latency (the police's publish → the delivery stored for
la-camden) under an open-loop load at fractions of the one-broker capacity, one broker worker,
fresh state for each point.

The generator (``bench.loadgen``) runs in its own process and keeps each message's send time by
message id. This process receives: a JetStream push subscription on ``sg.out.la-camden`` whose
callback stamps each delivery (``time.monotonic()``, the generator's clock too) as it arrives,
before anything else is done with it; the message ids are read after the run.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import broker_rss_mb, environment, percentiles, start_brokers, stop_brokers
from bench.throughput import wait_ready
from broker.transport.connection import connected, jetstream
from broker.transport.topology import ensure_topology
from broker.wire import jws
from broker.wire.registry import addressable
from broker.wire.subjects import DELIVERY

ROOT = Path(__file__).resolve().parent.parent  # where ``python -m bench.loadgen`` is found
FRACTIONS = (0.25, 0.50, 0.75)
SETTLE_S = 60.0  # after the generator's schedule, wait at most this long for the last deliveries


async def latency_point(rate: float, samples: int) -> dict[str, Any]:
    """``samples`` referrals (after a warm-up) at ``rate`` a second through one fresh broker."""
    warmup = max(20, min(500, samples // 20))
    total = warmup + samples
    async with environment() as (home, url, settings, registry, _), \
            connected(settings, url, name="bench-la") as nc:
        js = jetstream(nc, settings)
        await ensure_topology(js, settings.streams, settings.pipeline, addressable(registry))
        arrivals: list[tuple[float, bytes]] = []
        everything = asyncio.Event()

        async def arrived(msg: Any) -> None:
            arrivals.append((time.monotonic(), msg.data))
            if len(arrivals) >= total:
                everything.set()

        sub = await js.subscribe("sg.out.la-camden", stream=DELIVERY, cb=arrived, ordered_consumer=True,
                                 pending_msgs_limit=total + 1024)
        procs = await start_brokers(home, url, 1)
        try:
            await wait_ready(js, 1)
            out = home / "sent.json"
            generator = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.loadgen", "--home", str(home), "--url", url, "--rate", f"{rate:.3f}",
                "--count", str(samples), "--warmup", str(warmup), "--out", str(out), cwd=ROOT)
            schedule = total / rate + 30  # building the first messages ahead, then the sends
            await asyncio.wait_for(generator.wait(), schedule + 120 + 60)
            if generator.returncode != 0:
                raise RuntimeError(f"the load generator failed ({generator.returncode})")
            try:
                await asyncio.wait_for(everything.wait(), SETTLE_S)
            except TimeoutError:
                print(f"  ({total - len(arrivals)} deliveries not seen {SETTLE_S:.0f} s after the last send)",
                      flush=True)
            rss = broker_rss_mb(procs)
        finally:
            await stop_brokers(procs)
            await sub.unsubscribe()
        generated = orjson.loads(out.read_bytes())
    sent: dict[str, float] = generated["sent"]
    skipped = set(generated["warmup"])
    ms = []
    for at, data in arrivals:
        jti = jws.unverified(data)[1]["origin"]["jti"]
        if jti in sent and jti not in skipped:
            ms.append((at - sent[jti]) * 1000)
    return {"rate_per_s": round(rate, 1), **(percentiles(ms) if len(ms) > 1 else {}), "n": len(ms),
            "sent": len(sent) - len(skipped), "warmup": len(skipped), "generator_lag_ms": generated["lag_ms"],
            "publish_failed": generated["publish_failed"], "rss_mb": rss}


async def latency_curve(capacity: float, samples: int) -> list[dict[str, Any]]:
    points = []
    for fraction in FRACTIONS:
        point = await latency_point(capacity * fraction, samples)
        point["fraction_of_one_broker"] = fraction
        points.append(point)
        print(f"(c) latency at {point['rate_per_s']:>6}/s ({fraction:.0%})  p50 {point.get('p50_ms')} ms"
              f"  p95 {point.get('p95_ms')} ms  p99 {point.get('p99_ms')} ms  n {point['n']}", flush=True)
    return points


def plot(points: list[dict[str, Any]], capacity: float, path: Path) -> bool:
    """bench/latency.png: p50/p95/p99 against the offered load (matplotlib, Agg; False without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import ScalarFormatter
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    rates = [p["rate_per_s"] for p in points]
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        ax.plot(rates, [p.get(key, float("nan")) for p in points], marker="o", label=label)
    ax.axvline(capacity, color="grey", linestyle=":", label=f"one-broker capacity ({capacity:.0f}/s)")
    ax.axhline(25, color="red", linestyle="--", linewidth=0.8, label="goal: p99 ≤ 25 ms at 50 %")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlim(0, capacity * 1.05)
    ax.set_xlabel("offered load (referrals/s, open loop)")
    ax.set_ylabel("publish → delivery stored (ms)")
    ax.set_title(f"End-to-end latency, one broker ({points[0]['n'] if points else 0} samples a point)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
