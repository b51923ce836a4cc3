"""Signed exports of the audit log, and checking the live store.

An export is JSON lines: a header; one line per stored block or checkpoint whose time falls in
the range (``{"seq", "subject", "token"}``, the token exactly as stored, so each block's own
signature still holds); and a last line with a *manifest* the broker signs over the SHA-256 of
every line before it. ``sgb audit verify --export FILE`` needs only the public keys in the
trust registry: it checks the manifest, every block and checkpoint signature, and each chain's
links within the slice.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Final

import orjson
from nats.js import JetStreamContext

from broker.audit.chain import EXPORT_TYP, Stored, is_checkpoint, is_cosigned, is_tlog, read_stream, sign
from broker.audit.verify import Problem, Report, Verifier, broker_keys, broker_public_keys
from broker.config import AuditSettings
from broker.errors import InvalidEnvelope
from broker.identity.keys import Identity
from broker.timestamps import at_of, iso
from broker.transport.topology import kv_latest
from broker.wire.jws import unverified, verify_typed
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT, AUDIT_HEADS_BUCKET

FORMAT: Final = "sgb-audit-export/1"


def _stored_time(stored: Stored) -> float:
    if is_tlog(stored.subject) or is_cosigned(stored.subject):
        return stored.time  # a note states no time: when JetStream stored it
    token = stored.data
    try:
        return at_of(unverified(token)[1])
    except InvalidEnvelope:
        return 0.0


async def export(js: JetStreamContext, identity: Identity, out: IO[bytes], *, since: float, until: float) -> int:
    """Write a signed export of the blocks and checkpoints stored in [since, until). Returns the
    number of lines before the manifest."""
    digest = hashlib.sha256()
    lines = 0

    def write(obj: Any) -> None:
        nonlocal lines
        line = orjson.dumps(obj) + b"\n"
        digest.update(line)
        out.write(line)
        lines += 1

    write({"format": FORMAT, "broker": identity.id, "since": iso(since), "until": iso(until),
           "createdAt": iso(time.time())})
    async for stored in read_stream(js):
        if since <= _stored_time(stored) < until:
            write({"seq": stored.seq, "subject": stored.subject, "token": stored.data.decode("utf-8")})
    manifest = sign({"typ": "audit-export", "iss": identity.id, "lines": lines, "sha256": digest.hexdigest(),
                     "since": iso(since), "until": iso(until), "at": iso(time.time())}, identity, EXPORT_TYP)
    out.write(orjson.dumps({"manifest": manifest.decode("ascii")}) + b"\n")
    return lines


def verify_export(path: Path, registry: Registry, *, tlog_origin: str = AuditSettings().tlog_origin) -> Report:
    """Check an export file offline with the broker's public keys from ``registry``."""
    keys = broker_keys(registry)
    verifier = Verifier(keys, note_keys=broker_public_keys(registry), tlog_origin=tlog_origin)
    problems: list[Problem] = []
    digest = hashlib.sha256()
    lines, manifest = 0, None
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                problems.append(Problem("unreadable", "export", f"line {number} is not JSON", number))
                digest.update(raw)
                lines += 1
                continue
            if isinstance(item, dict) and "manifest" in item:
                manifest = str(item["manifest"]).encode("ascii")
                break
            digest.update(raw)
            lines += 1
            if number == 1:
                if not isinstance(item, dict) or item.get("format") != FORMAT:
                    problems.append(Problem("unreadable", "export", f"not an {FORMAT} file", number))
                continue
            if not isinstance(item, dict) or not isinstance(item.get("token"), str):
                problems.append(Problem("unreadable", "export", f"line {number} is not a stored block", number))
                continue
            token, subject = item["token"].encode("utf-8"), str(item.get("subject", ""))
            if is_cosigned(subject):
                continue  # a checkpoint again, with witnesses' lines: its log signature is checked as .tlog
            if is_tlog(subject):
                verifier.tlog(number, subject, token)
            elif is_checkpoint(subject):
                verifier.checkpoint(number, token, source="export")
            else:
                verifier.block(number, subject, token)
    report = verifier.finish(partial=True)
    if manifest is None:
        problems.append(Problem("truncated", "export", "the signed manifest (the last line) is missing"))
    else:
        try:
            claims = verify_typed(manifest, EXPORT_TYP, keys)
        except InvalidEnvelope as exc:
            problems.append(Problem("signature", "export", f"manifest: {exc}"))
        else:
            if claims.get("lines") != lines or claims.get("sha256") != digest.hexdigest():
                problems.append(Problem("changed", "export", f"the file does not match its signed manifest "
                                        f"({lines} lines read, {claims.get('lines')} signed)"))
    report.problems[:0] = problems
    return report


async def head_checkpoints(js: JetStreamContext) -> list[bytes]:
    """The last checkpoint of every instance from ``SG_AUDIT_HEADS``, kept apart from the stream so
    that cutting the stream's tail does not also cut the evidence of it."""
    return list((await kv_latest(js, AUDIT_HEADS_BUCKET)).values())


async def verify_store(js: JetStreamContext, registry: Registry, *, witnesses: Iterable[bytes] = (),
                       stream: str = AUDIT, tlog_origin: str = AuditSettings().tlog_origin) -> Report:
    """Verify every chain in the live stream against its own checkpoints, the heads bucket and
    any witness checkpoints (for example one saved from an earlier ``sgb audit verify``)."""
    verifier = Verifier(broker_keys(registry), note_keys=broker_public_keys(registry), tlog_origin=tlog_origin)
    async for stored in read_stream(js, stream=stream):
        if is_cosigned(stored.subject):
            continue  # a checkpoint again, with witnesses' lines: its log signature is checked as .tlog
        if is_tlog(stored.subject):
            verifier.tlog(stored.seq, stored.subject, stored.data)
        elif is_checkpoint(stored.subject):
            verifier.checkpoint(stored.seq, stored.data)
        else:
            verifier.block(stored.seq, stored.subject, stored.data)
    for token in await head_checkpoints(js):
        verifier.checkpoint(None, token, source="heads-bucket")
    for token in witnesses:
        verifier.checkpoint(None, token, source="witness")
    return verifier.finish()
