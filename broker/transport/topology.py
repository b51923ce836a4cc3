"""The JetStream streams and consumers of the wire contract, created idempotently.

================  ==================  =========================================================
stream            subjects            retention
================  ==================  =========================================================
``SG_INGRESS``    ``sg.in.*``         work queue: a message leaves once the broker acks it
``SG_DELIVERY``   ``sg.out.*``        interest: kept until the recipient's adapter acks it; no age
                                      limit (expiry is done with notice, broker/retention.py)
``SG_AUDIT``      ``sg.audit.>``      limits, no age limit, deny delete, deny purge
``KV_SG_SEEN``    (KV bucket)         message ids seen recently, for replay detection
``KV_SG_DEADLINES`` (KV bucket)       open deadlines per delivered message (broker/deadlines.py)
``KV_SG_AUDIT_HEADS`` (KV bucket)     last signed checkpoint of each instance's audit chain
``KV_SG_HOLDS``   (KV bucket)         legal holds by message id
``KV_SG_LEASES``  (KV bucket)         leases: which instance scans the deadlines (transport/lease.py)
================  ==================  =========================================================

All use file storage and a duplicate window, so that a re-publish under the same
``Nats-Msg-Id`` is absorbed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from broker.config import PipelineSettings, StreamSettings
from broker.errors import TransportError
from broker.transport.errors import nats_failures, quietly
from broker.wire.subjects import (
    AUDIT,
    AUDIT_HEADS_BUCKET,
    BROKER_CONSUMER,
    DEADLINES_BUCKET,
    DELIVERY,
    HOLDS_BUCKET,
    INGRESS,
    LEASES_BUCKET,
    SEEN_BUCKET,
    delivery_subject,
)

log = structlog.get_logger("sgb.streams")


def stream_configs(s: StreamSettings) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=INGRESS, subjects=["sg.in.*"], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, num_replicas=s.replicas, duplicate_window=s.duplicate_window,
            max_age=s.ingress_max_age, max_msg_size=s.max_msg_size, discard=DiscardPolicy.NEW,
        ),
        StreamConfig(
            name=DELIVERY, subjects=["sg.out.*"], retention=RetentionPolicy.INTEREST,
            storage=StorageType.FILE, num_replicas=s.replicas, duplicate_window=s.duplicate_window,
            max_msg_size=s.max_msg_size, discard=DiscardPolicy.NEW,
        ),
        StreamConfig(
            name=AUDIT, subjects=["sg.audit.>"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, num_replicas=s.replicas, duplicate_window=s.duplicate_window,
            deny_delete=True, deny_purge=True, allow_rollup_hdrs=False, discard=DiscardPolicy.NEW,
            max_msg_size=1024 * 1024,
        ),
    ]


def agency_consumer(agency: str, ack_wait: float = 60.0) -> ConsumerConfig:
    """The durable an agency's adapter pulls from. The broker creates it; adapters may not."""
    return ConsumerConfig(
        durable_name=agency, filter_subject=delivery_subject(agency), ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL, ack_wait=ack_wait, max_deliver=-1, max_ack_pending=1000,
    )


def broker_consumer(p: PipelineSettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=BROKER_CONSUMER, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        ack_wait=p.ack_wait, max_deliver=-1, max_ack_pending=max(4 * p.max_in_flight, 1000),
    )


async def _retry(call: Any, *args: Any, attempts: int = 5) -> Any:
    """Admin calls can time out while a cluster elects a meta leader: retry them."""
    for attempt in range(attempts):
        try:
            return await call(*args)
        except TimeoutError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await _retry(js.add_stream, config)
    except BadRequestError as exc:
        if exc.err_code != 10058:  # exists with a different configuration
            raise TransportError(f"cannot create stream {config.name}: {exc.description}") from exc
        existing = (await _retry(js.stream_info, config.name)).config
        if (existing.num_replicas or 1) > (config.num_replicas or 1):
            # never lower replication because one instance started with a smaller setting
            log.warning("stream keeps its replicas", stream=config.name, replicas=existing.num_replicas,
                        configured=config.num_replicas)
            config = replace(config, num_replicas=existing.num_replicas)
        await _retry(js.update_stream, config)


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> None:
    try:
        await _retry(js.create_key_value, config)
    except BadRequestError as exc:
        if exc.err_code != 10058:
            raise
        # it exists with other settings (more replicas, say): keep it as it is
        log.info("bucket kept as it is", bucket=config.bucket)


async def ensure_topology(
    js: JetStreamContext, streams: StreamSettings, pipeline: PipelineSettings, agencies: Iterable[str]
) -> None:
    """Create or update every stream, the KV buckets, and the consumers (idempotent)."""
    with nats_failures("cannot set up JetStream"):
        for config in stream_configs(streams):
            await ensure_stream(js, config)
        for bucket in (
            KeyValueConfig(bucket=SEEN_BUCKET, history=1, ttl=streams.seen_ttl, storage=StorageType.FILE,
                           replicas=streams.replicas),
            KeyValueConfig(bucket=DEADLINES_BUCKET, history=1, storage=StorageType.FILE, replicas=streams.replicas),
            KeyValueConfig(bucket=AUDIT_HEADS_BUCKET, history=64, storage=StorageType.FILE,
                           replicas=streams.replicas),
            KeyValueConfig(bucket=HOLDS_BUCKET, history=8, storage=StorageType.FILE, replicas=streams.replicas),
            KeyValueConfig(bucket=LEASES_BUCKET, history=1, storage=StorageType.FILE, replicas=streams.replicas),
        ):
            await _ensure_bucket(js, bucket)
        await _retry(js.add_consumer, INGRESS, broker_consumer(pipeline))
        for agency in agencies:
            await _retry(js.add_consumer, DELIVERY, agency_consumer(agency, pipeline.delivery_ack_wait))


async def kv_latest(js: JetStreamContext, bucket: str, *, idle: float = 2.0) -> dict[str, bytes]:
    """Every live key of a bucket and its value, read through an ordered consumer (nats-py's KV
    key watcher can swallow task cancellation, which stalls shutdown)."""
    stream = f"KV_{bucket}"
    with nats_failures(f"cannot read {bucket}"):
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return {}
        if not info.state.messages:
            return {}
        sub = await js.subscribe(f"$KV.{bucket}.>", stream=stream, ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
        found: dict[str, bytes] = {}
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(sub.next_msg(timeout=idle), idle + 1)
                except TimeoutError:
                    return found
                key = msg.subject.removeprefix(f"$KV.{bucket}.")
                if msg.data and (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                    found[key] = msg.data
                if msg.metadata.num_pending == 0:
                    return found
        finally:
            with quietly():
                await sub.unsubscribe()
