"""Reading the audit stream. (The hash chain, signatures and index are a later issue.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from broker.streams import AUDIT


async def read_audit(js: JetStreamContext, *, idle: float = 2.0) -> AsyncIterator[dict[str, Any]]:
    """Every audit record stored so far, in stream order, through an ordered consumer."""
    info = await js.stream_info(AUDIT)
    last = info.state.last_seq
    if info.state.messages == 0:
        return
    sub = await js.subscribe("sg.audit.>", stream=AUDIT, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            msg = await asyncio.wait_for(sub.next_msg(timeout=idle), idle + 1)
            yield orjson.loads(msg.data)
            if msg.metadata.sequence.stream >= last:
                return
    finally:
        await sub.unsubscribe()
