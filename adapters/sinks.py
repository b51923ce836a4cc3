"""Handing a delivered message to the agency's own system: by webhook, or into a drop folder.

Webhook requests are signed with HMAC-SHA256 over ``<timestamp>.<delivery id>.<body>`` (header
``X-SGB-Signature: v1=<hex>``, with ``X-SGB-Timestamp`` and ``X-SGB-Delivery-Id``), so the
agency system can check they came from its adapter and were not replayed; :func:`verify_webhook`
is the receiving side. Each attempt has a timeout; failures that may pass (a timeout, a refused
connection, HTTP 408, 425, 429 or 5xx) are retried with exponential backoff and full jitter; an
answer that will not change (another 4xx) stops at once. Every request carries the same
delivery id, so a receiver that stores by it takes a delivery once however often it is sent.

A drop folder gets ``<delivery id>.<ext>`` written atomically (temporary file, fsync, rename,
fsync of the folder): a batch job never sees half a file, and writing the same delivery twice
leaves one file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import aiohttp

from broker.errors import BrokerError
from broker.keystore import write_private

SIGNATURE_HEADER: Final = "X-SGB-Signature"
TIMESTAMP_HEADER: Final = "X-SGB-Timestamp"
DELIVERY_HEADER: Final = "X-SGB-Delivery-Id"
_RETRYABLE_STATUS: Final = frozenset({408, 425, 429})


class DeliveryFailed(BrokerError):
    """The agency system did not take a delivery. ``permanent``: retrying will not help."""

    def __init__(self, reason: str, *, permanent: bool, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.attempts = attempts


class Sink(Protocol):
    async def deliver(self, delivery_id: str, body: bytes, content_type: str) -> None:
        """Return once the agency system has accepted it; raise :class:`DeliveryFailed` otherwise."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    url: str
    secret: bytes = field(repr=False)
    timeout: float = 10.0        # per attempt
    attempts: int = 6
    backoff_base: float = 0.5    # seconds before the second attempt (at most; full jitter)
    backoff_max: float = 30.0


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
    def __init__(self, session: aiohttp.ClientSession, settings: WebhookSettings, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self._session = session
        self._settings = settings
        self._sleep = sleep
        self._jitter = jitter

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt))."""
        ceiling = min(self._settings.backoff_max, self._settings.backoff_base * 2.0**attempt)
        return float(self._jitter() * ceiling)

    async def deliver(self, delivery_id: str, body: bytes, content_type: str) -> None:
        s = self._settings
        last = "no attempt made"
        for attempt in range(s.attempts):
            timestamp = str(int(time.time()))
            headers = {"Content-Type": content_type, DELIVERY_HEADER: delivery_id, TIMESTAMP_HEADER: timestamp,
                       SIGNATURE_HEADER: signature(s.secret, timestamp, delivery_id, body),
                       "Idempotency-Key": delivery_id}
            try:
                async with self._session.post(s.url, data=body, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=s.timeout)) as response:
                    if 200 <= response.status < 300:
                        return
                    last = f"HTTP {response.status}"
                    if response.status < 500 and response.status not in _RETRYABLE_STATUS:
                        raise DeliveryFailed(f"the agency system refused the delivery ({last})", permanent=True,
                                             attempts=attempt + 1)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = ("no answer in time" if isinstance(exc, TimeoutError)
                        else f"cannot reach it ({type(exc).__name__})")
            if attempt + 1 < s.attempts:
                await self._sleep(self.backoff(attempt))
        raise DeliveryFailed(f"the agency system did not take the delivery after {s.attempts} attempts ({last})",
                             permanent=False, attempts=s.attempts)


class DropFolderSink:
    def __init__(self, folder: Path, *, extension: str = "json") -> None:
        self._folder = folder
        self._extension = extension
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

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
