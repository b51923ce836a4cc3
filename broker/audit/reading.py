"""Reading audit records back out of ``SG_AUDIT`` (unverified; see :mod:`broker.audit.verify`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nats.js import JetStreamContext

from broker.audit.chain import block_records, is_block, read_stream


async def read_audit(js: JetStreamContext, *, idle: float = 2.0) -> AsyncIterator[dict[str, Any]]:
    """Every audit record stored so far, in stream order; a record repeated under its id (a message
    processed again after a crash) once, as first written (:mod:`broker.audit.verify` says why)."""
    seen: set[str] = set()
    async for stored in read_stream(js, idle=idle):
        if is_block(stored.subject):
            for record in block_records(stored.data):
                rid = record.get("id")
                if isinstance(rid, str):
                    if rid in seen:
                        continue
                    seen.add(rid)
                yield record
