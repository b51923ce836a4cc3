"""Handing a delivered message to the agency's own system: by webhook, or into a drop folder.

Webhook requests are signed with HMAC-SHA256 over ``<timestamp>.<delivery id>.<body>`` (header
``X-SGB-Signature: v1=<hex>``, with ``X-SGB-Timestamp`` and ``X-SGB-Delivery-Id``), so the
agency system can check they came from its adapter and were not replayed; :func:`verify_webhook`
is the receiving side. A sink makes one attempt per call, within a timeout, and says whether a
failure may pass (a timeout, a refused connection, HTTP 408, 425, 429 or 5xx: ``permanent`` false)
or will not (another 4xx). Trying again later is the deliverer's job (:mod:`adapters.runtime.retries`:
the delivery goes back to JetStream with a delay, for as long as ``retry_for`` allows), so a
sink never sleeps and one unreachable system never holds the others' deliveries. Every request
carries the same delivery id, so a receiver that stores by it takes a delivery once however
often it is sent.

A drop folder gets ``<delivery id>.<ext>`` written atomically (temporary file, fsync, rename,
fsync of the folder): a batch job never sees half a file, and writing the same delivery twice
leaves one file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp

from adapters.sdk.handover import DeliveryFailed
from broker.files import private_folder, write_private

SIGNATURE_HEADER: Final = "X-SGB-Signature"
TIMESTAMP_HEADER: Final = "X-SGB-Timestamp"
DELIVERY_HEADER: Final = "X-SGB-Delivery-Id"
_RETRYABLE_STATUS: Final = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    url: str
    secret: bytes = field(repr=False)
    timeout: float = 10.0        # seconds per attempt


def signature(secret: bytes, timestamp: str, delivery_id: str, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.{delivery_id}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signed_headers(secret: bytes, body: bytes, *, key: str = "", key_header: str = "Idempotency-Key",
                   now: float | None = None) -> dict[str, str]:
    """The headers that sign a request: what an agency system sends to its adapter's endpoint."""
    timestamp = str(int(time.time() if now is None else now))
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, key, body)}
    if key:
        headers[key_header] = key
    return headers


def verify_webhook(secret: bytes, headers: Mapping[str, str], body: bytes, *, tolerance: float = 300.0,
                   now: float | None = None, id_header: str = DELIVERY_HEADER) -> bool:
    """The request is from the holder of ``secret``, unaltered, and recent: the agency system
    checks its adapter's hand-overs with it, and the adapter its agency system's submissions
    (``id_header="Idempotency-Key"``)."""
    timestamp, delivery_id = headers.get(TIMESTAMP_HEADER, ""), headers.get(id_header, "")
    if "." in delivery_id:  # the id is a field of the signed text: a '.' in it would make the split ambiguous
        return False
    try:
        age = abs((time.time() if now is None else now) - float(timestamp))
    except ValueError:
        return False
    expected = signature(secret, timestamp, delivery_id, body)
    return age <= tolerance and hmac.compare_digest(expected, headers.get(SIGNATURE_HEADER, ""))


class WebhookSink:
    def __init__(self, session: aiohttp.ClientSession, settings: WebhookSettings) -> None:
        self._session = session
        self._settings = settings

    async def deliver(self, delivery_id: str, body: bytes, content_type: str) -> None:
        """One signed POST; returns on a 2xx, else raises :class:`DeliveryFailed` saying whether
        trying again may help."""
        s = self._settings
        timestamp = str(int(time.time()))
        headers = {"Content-Type": content_type, DELIVERY_HEADER: delivery_id, TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: signature(s.secret, timestamp, delivery_id, body), "Idempotency-Key": delivery_id}
        try:
            async with self._session.post(s.url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=s.timeout)) as response:
                if 200 <= response.status < 300:
                    return
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else f"cannot reach it ({type(exc).__name__})"
            raise DeliveryFailed(f"the agency system did not take the delivery: {reason}", permanent=False,
                                 attempts=1) from None
        if status >= 500 or status in _RETRYABLE_STATUS:
            raise DeliveryFailed(f"the agency system did not take the delivery (HTTP {status})", permanent=False,
                                 attempts=1)
        raise DeliveryFailed(f"the agency system refused the delivery (HTTP {status})", permanent=True, attempts=1)


class DropFolderSink:
    def __init__(self, folder: Path, *, extension: str = "json") -> None:
        self._folder = folder
        self._extension = extension
        private_folder(folder)

    def path_for(self, delivery_id: str) -> Path:
        if not delivery_id or any(c in delivery_id for c in "/\\\0") or delivery_id.startswith("."):
            raise DeliveryFailed("a delivery id that cannot be a file name", permanent=True, attempts=1)
        return self._folder / f"{delivery_id}.{self._extension}"

    async def deliver(self, delivery_id: str, body: bytes, content_type: str) -> None:
        target = self.path_for(delivery_id)
        try:
            await asyncio.to_thread(self._write, target, body)
        except OSError as exc:
            raise DeliveryFailed(f"cannot write to the drop folder ({exc.strerror})", permanent=False,
                                 attempts=1) from exc

    def _write(self, target: Path, body: bytes) -> None:
        if target.exists():
            return  # written before (a redelivery): one file per delivery
        write_private(target, body)
