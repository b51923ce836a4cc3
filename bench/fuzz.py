"""Hostile input at scale: mutated and random wire messages through a real ``sgb serve`` on a real
nats-server (``make fuzz``; CI does not run it).

Inputs come from the generators in ``bench/fuzz_inputs.py``, each built so that no input can be a
valid message: every one must be refused.

The publisher stays at most ``--window`` messages ahead of the broker (its ``/readyz`` fails at
10,000 waiting), and ``/readyz`` is polled throughout. At the end: every input has a rejection on
``SG_DELIVERY`` and a ``rejected`` audit record, the broker's counters agree, and a valid
referral afterwards is delivered. Figures go to ``bench/fuzz-results.json``.

    python -m bench.fuzz [--inputs 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from nats.js.errors import NotFoundError

from adapters.sdk import AgencyClient
from bench.common import environment, start_brokers, stop_brokers
from bench.fuzz_inputs import Inputs, example
from broker import logs
from broker.audit.reading import read_audit
from broker.identity.keys import load_identity
from broker.transport.connection import connected, jetstream
from broker.transport.topology import ensure_topology
from broker.wire.registry import addressable
from broker.wire.subjects import DELIVERY, ingress_subject
from tests.hostile import Kit, claims_of

RESULTS = Path(__file__).resolve().parent / "fuzz-results.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _watch_ready(url: str, stop: asyncio.Event, seen: collections.Counter[int]) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                async with http.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    seen[r.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                seen[0] += 1
            await asyncio.sleep(0.5)


def _metric(text: str, name: str) -> dict[str, float]:
    """``{label value or "": sample}`` for one counter in Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            labels, _, value = line.rpartition(" ")
            out[labels.partition('="')[2].rstrip('"}') if "{" in labels else ""] = float(value)
    return out


async def run(inputs: int, seed: int, window: int) -> dict[str, Any]:
    async with environment() as (home, url, settings, registry, catalogue), \
            connected(settings, url, name="fuzz") as nc:
        js = jetstream(nc, settings)
        await ensure_topology(js, settings.streams, settings.pipeline, addressable(registry))
        police = AgencyClient(nc, js, registry, load_identity(home, "police-met"), catalogue)
        la = AgencyClient(nc, js, registry, load_identity(home, "la-camden"), catalogue)
        maker = Inputs(Kit(police, la), random.Random(seed))
        port = _free_port()
        http = f"http://127.0.0.1:{port}"
        procs = await start_brokers(home, url, 1, "--http", f"127.0.0.1:{port}")
        ready: collections.Counter[int] = collections.Counter()
        stop = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session:
                await _until(lambda: _status(session, f"{http}/readyz"), 200, 30)
            watcher = asyncio.create_task(_watch_ready(http, stop, ready))
            started = time.perf_counter()
            await _publish_all(js, maker, inputs, window)
            published = time.perf_counter()
            await _until(lambda: _stored(js), inputs, 600, at_least=True)
            elapsed = time.perf_counter() - started
            stop.set()
            await watcher
            result = await _check(js, http, police, la, inputs, elapsed, published - started)
        finally:
            stop.set()
            await stop_brokers(procs)
    return {**result, "inputs": inputs, "seed": seed, "window": window, "made": dict(maker.made),
            "readyz": {str(k): v for k, v in ready.items()}}


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as r:
            return r.status
    except aiohttp.ClientError:
        return 0


async def _until(probe: Callable[[], Any], want: int, timeout: float, *, at_least: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while (got := await probe()) != want and not (at_least and got > want):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting: {got} (wanted {want})")
        await asyncio.sleep(0.2)


async def _stored(js: Any) -> int:
    return int((await js.stream_info(DELIVERY)).state.messages)


async def _publish_all(js: Any, maker: Inputs, inputs: int, window: int) -> None:
    pending: list[Any] = []
    for i in range(inputs):
        agency, data = maker.next()
        pending.append(await js.publish_async(ingress_subject(agency), data, headers={"Nats-Msg-Id": f"fuzz-{i}"}))
        if len(pending) >= 500:
            await asyncio.wait_for(asyncio.gather(*pending), 60)
            pending.clear()
            while i + 1 - await _stored(js) > window:  # let the broker catch up
                await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*pending), 60)


async def _check(js: Any, http: str, police: AgencyClient, la: AgencyClient, inputs: int, elapsed: float,
                 publishing: float) -> dict[str, Any]:
    """Every input refused, counted and audited; then a valid message is delivered."""
    stored = await _stored(js)
    async with aiohttp.ClientSession() as session, session.get(f"{http}/metrics") as r:
        metrics = await r.text()
    rejected = _metric(metrics, "sgb_messages_rejected_total")
    events = collections.Counter([(r["event"], r.get("code")) async for r in read_audit(js, idle=1.0)])
    audit = {code: n for (event, code), n in sorted(events.items(), key=str) if event == "rejected"}
    jti, token = police.build(typ="referral", to=["la-camden"], payload=example("referral"),
                              sharing=example("referral.sharing"))
    await police.publish(token, jti)

    async def delivered_after() -> int:
        try:
            last = await js.get_last_msg(DELIVERY, "sg.out.la-camden")
        except NotFoundError:
            return 0
        claims = claims_of(last.data)
        if claims["typ"] != "referral" or claims["origin"]["jti"] != jti:
            return 0
        return 1 if la.open(last.data).payload == example("referral") else 0

    await _until(delivered_after, 1, 30)
    return {"rejections_stored": stored, "seconds": round(elapsed, 1), "publishing_seconds": round(publishing, 1),
            "rejected_per_second": round(inputs / elapsed),
            "received_metric": int(_metric(metrics, "sgb_messages_received_total").get("", 0)),
            "rejected_metric": {k: int(v) for k, v in sorted(rejected.items())},
            "rejected_metric_total": int(sum(rejected.values())),
            "delivered_before_valid": int(sum(_metric(metrics, "sgb_deliveries_total").values())),
            "accepted_metric": {k: int(v) for k, v in _metric(metrics, "sgb_messages_accepted_total").items()},
            "retried_metric": int(_metric(metrics, "sgb_messages_retried_total").get("", 0)),
            "audit_rejected": audit, "audit_rejected_total": sum(audit.values()),
            "audit_other_records": sum(n for (event, _), n in events.items() if event != "rejected"),
            "valid_message_after": "delivered"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window", type=int, default=4000, help="publish at most this far ahead of the broker")
    args = parser.parse_args(argv)
    logs.configure(level="WARNING")
    result = asyncio.run(run(args.inputs, args.seed, args.window))
    RESULTS.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    ok = (result["rejections_stored"] == result["rejected_metric_total"] == result["audit_rejected_total"]
          == result["received_metric"] == args.inputs and result["delivered_before_valid"] == 0
          and result["retried_metric"] == 0 and "internal" not in result["rejected_metric"]
          and result["audit_other_records"] == 0 and set(result["readyz"]) == {"200"})
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"{'OK' if ok else 'FAILED'}: {args.inputs} inputs, {result['rejected_per_second']} rejected/s → {RESULTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
