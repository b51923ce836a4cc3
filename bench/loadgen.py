"""The open-loop load generator of the latency curve, run in its own process by ``bench.latency``:
police-met referrals to la-camden at a fixed rate, whatever the broker does (it never waits for
an answer before the next send), for ``--warmup`` then ``--count`` messages.

Messages are built ahead of their send time (at most ``LEAD_S`` ahead, so none is stale when it
arrives) in the gaps between sends; the send time of each (``time.monotonic()``, one clock for every
process on the machine, taken just before the publish) is kept by message id and written as JSON to
``--out`` with how far the sends fell behind their schedule.

    python -m bench.loadgen --home DIR --url nats://127.0.0.1:PORT --rate 150 --count 10000 --out sent.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from adapters.sdk import AgencyClient
from bench.common import bench_settings, percentiles, referral_payload, referral_sharing
from broker import logs
from broker.identity.keys import load_identity
from broker.transport.connection import connected
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry

LEAD_S = 120.0         # build a message at most this long before it is sent (the broker refuses after 300 s)
MIN_GAP_S = 0.002      # build only when the next send is at least this far off
OVERRUN_S = 120.0      # give up this long after the schedule's end


async def generate(home: Path, url: str, rate: float, count: int, warmup: int) -> dict[str, Any]:
    catalogue = Catalogue()
    registry = Registry.load(home / "registry.json", catalogue)
    settings = bench_settings(home, url, instance="bench-loadgen")
    total = warmup + count
    async with connected(settings, url, name="bench-loadgen") as nc:
        js = nc.jetstream(timeout=30, publish_async_max_pending=total + 16)
        police = AgencyClient(nc, js, registry, load_identity(home, "police-met"), catalogue)
        payload, sharing = referral_payload(), referral_sharing()

        def build() -> tuple[str, bytes]:
            return police.build(typ="referral", to=["la-camden"], payload=payload, sharing=sharing)

        ahead = [build() for _ in range(min(total, int(LEAD_S * rate)))]
        sent: dict[str, float] = {}
        lag_ms: list[float] = []
        futures = []
        start = time.monotonic() + 0.2
        i = 0
        while i < total and time.monotonic() < start + total / rate + OVERRUN_S:
            now = time.monotonic()
            due = start + i / rate
            if now < due:
                if len(ahead) < total and start + len(ahead) / rate < now + LEAD_S and due - now > MIN_GAP_S:
                    ahead.append(build())
                else:
                    await asyncio.sleep(due - now)
                continue
            while i < total and start + i / rate <= now:
                if i == len(ahead):  # behind on building: build it now (counted in its lag)
                    ahead.append(build())
                jti, data = ahead[i]
                ahead[i] = (jti, b"")  # let the bytes go
                sent[jti] = time.monotonic()
                lag_ms.append((sent[jti] - (start + i / rate)) * 1000)
                futures.append(await js.publish_async("sg.in.police-met", data, headers={"Nats-Msg-Id": jti}))
                i += 1
        stored = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 60)
    failed = sum(isinstance(r, BaseException) for r in stored)
    jtis = list(sent)
    return {"sent": sent, "warmup": jtis[:warmup], "rate_per_s": rate, "publish_failed": failed,
            "lag_ms": {"max": round(max(lag_ms), 2), **percentiles(lag_ms)} if len(lag_ms) > 1 else {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="messages per second")
    parser.add_argument("--count", type=int, required=True, help="messages measured")
    parser.add_argument("--warmup", type=int, default=0, help="messages sent first and not measured")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not (0 < args.rate <= 100_000 and 0 < args.count <= 1_000_000 and 0 <= args.warmup <= 100_000):
        parser.error("rate, count or warmup out of range")
    if not args.url.startswith("nats://127.0.0.1:"):
        parser.error("the load generator sends to 127.0.0.1 only")
    logs.configure(level="WARNING")
    result = asyncio.run(generate(args.home, args.url, args.rate, args.count, args.warmup))
    args.out.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
