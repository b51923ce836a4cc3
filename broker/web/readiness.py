"""The broker's readiness checks, by name (:mod:`broker.http.probes` serves them at ``/readyz``).

``warn`` keeps the broker ready (a key expiring within two weeks); any ``fail`` makes
``/readyz`` answer 503 so a load balancer or orchestrator stops sending work. What each
failure means and what to do is in ``docs/operating.md``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from nats.js.errors import NotFoundError

from broker.errors import TransportError
from broker.http.probes import Check
from broker.pipeline.service import Broker
from broker.pipeline.workers import Workers
from broker.policy.engine import ReloadablePolicy, RulebookPolicy
from broker.transport.errors import nats_failures
from broker.web.context import AuditService
from broker.web.integrity import last_verification
from broker.web.vocabulary import TAMPERED, VERIFIED
from broker.wire.subjects import AUDIT, DELIVERY, INGRESS

KEY_WARNING: Final = 14 * 86400.0


def _keys(broker: Broker, now: float) -> Check:
    own = broker.registry.broker.keys
    valid = [k for k in own if k.valid_at(now)]
    if not any(k.use == "sig" for k in valid) or not any(k.use == "enc" for k in valid):
        return Check("fail", "the broker has no valid signing or encryption key in the registry")
    if broker.identity.sig_kid not in {k.kid for k in valid}:
        return Check("fail", "the broker's private signing key is not a valid key in the registry")
    soon = [key for agency in broker.registry.agencies.values() for key in agency.keys
            if key.not_after is not None and 0 < key.not_after - now < KEY_WARNING]
    if soon:
        return Check("warn", f"{len(soon)} registry keys expire within 14 days")
    return Check("ok", f"{len(valid)} broker keys valid")


async def _streams(broker: Broker, timeout: float) -> Check:
    missing = []
    try:
        for name in (INGRESS, DELIVERY, AUDIT):
            with nats_failures("JetStream"):
                try:
                    await asyncio.wait_for(broker.js.stream_info(name), timeout)
                except NotFoundError:
                    missing.append(name)
    except TransportError:
        return Check("fail", "JetStream does not answer")
    if missing:
        return Check("fail", f"missing: {', '.join(missing)}")
    return Check("ok", "SG_INGRESS, SG_DELIVERY, SG_AUDIT")


def _rulebook(broker: Broker) -> Check:
    policy = broker.policy
    current = policy.current if isinstance(policy, ReloadablePolicy) else policy
    if isinstance(current, RulebookPolicy):
        book = current.rulebook
        return Check("ok", f"edition {book.edition}, {len(book.rules)} rules")
    return Check("ok", "a policy is loaded")


async def _index(service: AuditService | None) -> Check:
    if service is None:
        return Check("ok", "not served by this process")
    try:
        await asyncio.wait_for(service.index.set_meta("probe", time.time()), 2.0)
    except Exception as exc:  # sqlite3.Error, StoreError, its deadline: any failure is "not writable"
        return Check("fail", f"the audit index cannot be written ({type(exc).__name__})")
    if service.index.follower_failure:  # the pages go stale; the broker still takes work
        return Check("warn", f"the audit index stopped following the log ({service.index.follower_failure}, "
                     "a bug: see the log); it keeps trying")
    if service.index.derive_failure:  # the queue stays incomplete until a retry (or the next start) finishes
        return Check("warn", f"deriving the review queue again failed ({service.index.derive_failure}, a bug: "
                     "see the log); it keeps trying")
    if service.index.deriving:  # after a reload changed the triage: the queue is incomplete meanwhile
        return Check("warn", "the review queue is being derived again under the reloaded triage")
    return Check("ok", "writable")


async def _integrity(service: AuditService | None) -> Check:
    """The last integrity check (incremental, from the last trusted checkpoint, unless one of the
    whole log ran since): a tampered log is a warning to act on, not a reason to stop taking work."""
    if service is None:
        return Check("ok", "not served by this process")
    status = await last_verification(service.index)
    state = status.get("state")
    if state == VERIFIED:
        read = f", {status['recordsRead']} records read" if "recordsRead" in status else ""
        return Check("ok", f"verified at {status.get('at')} ({status.get('scope', 'full')}{read})")
    if state == TAMPERED:
        return Check("warn", f"the audit log fails verification: {len(status.get('problems', []))} problems "
                     "(see the IG integrity page)")
    return Check("ok", str(state).replace("-", " "))


def _workers(workers: Workers | None) -> Check:
    if workers is None:
        return Check("ok", "1 of 1 running")
    down = workers.down()
    if down:
        return Check("fail", f"worker {', '.join(map(str, down))} not running (being started again)")
    return Check("ok", f"{workers.count} of {workers.count} running")


async def readiness(broker: Broker, service: AuditService | None, workers: Workers | None = None,
                    ) -> dict[str, Check]:
    """Every check of this broker instance (of the audit index, when this process serves it, and
    of its child workers, when it has some)."""
    now = time.time()
    backlog = broker.metrics.backlog._value.get()
    limit = broker.settings.pipeline.ready_backlog
    checks = {
        "nats": Check("ok", "connected") if broker.nc.is_connected else Check("fail", "not connected to NATS"),
        "streams": await _streams(broker, min(broker.settings.nats.request_timeout, 2.0)),
        "keys": _keys(broker, now),
        "rulebook": _rulebook(broker),
        "pipeline": Check("fail", "the pipeline stopped") if broker.task.done() else Check("ok", "running"),
        "audit-writer": Check("ok", f"{broker.audit.head.count} records in this instance's chain")
        if broker.audit.running else Check("fail", "the audit writer stopped"),
        "audit-index": await _index(service),
        "audit-integrity": await _integrity(service),
        "backlog": Check("ok" if backlog < limit else "fail", f"{int(backlog)} waiting (limit {limit})"),
        "maintenance": Check("fail", "maintenance mode: taking no new work") if broker.pipeline.paused
        else Check("ok", "off"),
        "workers": _workers(workers),
    }
    witnesses = broker.witnesses.check(now)
    if witnesses is not None:  # absent when no witness is configured
        checks["witnesses"] = witnesses
    return checks

