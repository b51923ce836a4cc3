"""(d) The audit side on a 100,000-record log: signing and verifying chained blocks, and the index
queries behind the IG pages (no NATS: the cost of the work itself)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from broker.identity.keys import load_identity
from broker.wire.registry import Registry


async def audit_bench(home: Path, registry: Registry, n: int = 100_000) -> dict[str, Any]:
    """(d) the IG side on a 100,000-record log: index queries the pages make, and verifying the
    signed, hash-chained blocks of that many records (no NATS: the cost of the work itself)."""
    from broker.audit.chain import Head, build_block
    from broker.audit.index import AuditIndex, RecordQuery
    from broker.audit.query import ReviewQuery
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
    await timed("review_queue_ms", lambda: index.reviews(ReviewQuery()))
    await timed("trail_ms", lambda: index.trail("m1234"))
    await timed("subject_search_ms", lambda: index.subject_messages(["k.777"]))
    today = dt.datetime.now(dt.UTC).date()
    await timed("volumes_90_days_ms", lambda: index.volumes("lawfulBasis", since=(today - dt.timedelta(days=90))
                                                               .isoformat(), until=today.isoformat()))
    index.close()
    return {"records": n, "blocks": len(blocks), "sign_records_per_s": round(n / sign_s),
            "verify_records_per_s": round(n / verify_s), "index_load_records_per_s": round(n / load_s), **timings}
