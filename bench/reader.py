"""(f) The one JWS reader, timed on its own: reading and verifying a 2 KiB referral as intake does,
and an audit block of 256 records as the verifier does, each against the floor under it (the bare
Ed25519 verification and orjson's parse of the same claims). The ratio to the floor is what to
watch: it does not move with the machine's load the way a rate does.

    python -m bench.reader
"""

from __future__ import annotations

import base64
import datetime as dt
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from broker.identity.keys import load_identity
from broker.wire import jws
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry


def _best_us(call: Callable[[], object], number: int) -> float:
    """The best of several runs, in CPU time (another process on the core does not count)."""
    return min(timeit.repeat(call, number=number, repeat=9, timer=time.process_time)) / number * 1e6


def _audit_block(home: Path, registry: Registry) -> bytes:
    from broker.audit.chain import Head, build_block

    at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    records = [{"v": 1, "id": f"r{i}", "at": at, "instance": "bench", "message": f"m{i // 4}", "event": "shared",
                "type": "referral", "sender": "police-met", "recipient": "la-camden", "decision": "share",
                "rules": ["referral.to-la"], "sharing": {"lawfulBasis": "UKGDPR_6_1_E", "consentStatus": "NOT_SOUGHT"},
                "flags": [], "subjects": [f"k.{i // 8}"]} for i in range(256)]
    token, _ = build_block(records, Head(), load_identity(home, registry.broker_id), "bench", time.time())
    return token


def reader_bench(home: Path, registry: Registry, catalogue: Catalogue) -> dict[str, Any]:
    from adapters.sdk import AgencyClient
    from bench.common import referral_payload, referral_sharing
    from broker.audit.chain import BLOCK_TYP
    from broker.audit.verify import broker_keys

    police = AgencyClient(None, None, registry, load_identity(home, "police-met"), catalogue)  # type: ignore[arg-type]
    _, token = police.build(typ="referral", to=["la-camden"], payload=referral_payload(), sharing=referral_sharing())
    block = _audit_block(home, registry)
    out: dict[str, Any] = {}
    for name, data, verify_key, read in (
        ("message", token, registry.signer(jws.read(token).kid, time.time())[1],
         lambda t, k: jws.read(t).verify(k)),
        ("audit_block", block, broker_keys(registry)(jws.parse(block).kid, time.time()),
         lambda t, k: jws.verify_typed(t, BLOCK_TYP, lambda kid, when: k, 0.0)),
    ):
        assert verify_key is not None
        signing_input, _, signature = data.rpartition(b".")
        body = signing_input.partition(b".")[2]
        raw_signature = base64.urlsafe_b64decode(signature + b"=" * (-len(signature) % 4))

        def floor(key: Any = verify_key, body: bytes = body, sig: bytes = raw_signature,
                  signed: bytes = signing_input) -> object:
            key.verify(sig, signed)
            return orjson.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))

        number = 200 if name == "message" else 20
        reader_us = _best_us(lambda r=read, d=data, k=verify_key: r(d, k), number)  # type: ignore[misc]
        floor_us = _best_us(floor, number)
        out[name] = {"bytes": len(data), "reader_us": round(reader_us, 1), "floor_us": round(floor_us, 1),
                     "reader_to_floor": round(reader_us / floor_us, 2)}
    return out


def main() -> int:
    import asyncio

    from bench.common import environment

    async def run() -> dict[str, Any]:
        async with environment() as (home, _, _, registry, catalogue):
            return reader_bench(home, registry, catalogue)

    for name, r in asyncio.run(run()).items():
        print(f"(f) reader, {name:<12} {r['bytes']:>7} B  {r['reader_us']:>8} µs  floor {r['floor_us']:>8} µs"
              f"  ×{r['reader_to_floor']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
