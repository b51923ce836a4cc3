"""(e) Adapters in: native documents mapped, checked, signed, sealed and published by the police
adapter (one PPN at a time, and a CSV export of 500 children) and the health adapter (FHIR
Bundles, validated with fhir.resources)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import EXAMPLES, percentiles
from broker.config import Settings
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry


async def adapters_in(home: Path, settings: Settings, registry: Registry, catalogue: Catalogue,
                      seconds: float = 3.0) -> dict[str, Any]:
    """Documents per second through :class:`adapters.runtime.inbound.Submitter` (no broker draining)."""
    from adapters.formats.health import fhir_bundle
    from adapters.formats.mapping import MapContext, Mapper
    from adapters.formats.police import ppn_csv, ppn_json
    from adapters.runtime.inbound import Submitter
    from adapters.sdk import agency_client
    from tests.support.fhir import referral_bundle
    from tests.support.police import CSV, PPN

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
                     "msgs_per_doc": messages // docs, **(percentiles(samples) if docs > 2 else {}), "n": docs}
    return out
