"""Dead letters: deliveries the agency system did not take, kept sealed until an operator acts.

``<home>/adapters/<agency>/dead-letters/`` holds, per letter, ``<key>.jws`` (the signed wire
message, still encrypted to the agency: no personal data in clear on disk) and ``<key>.why.json``
(ids, type, sender, when, a stable ``code`` and the reason in the adapter's own words: never
content). The key is the delivery id (``seq-<n>`` for a message that could not be verified).

Codes: ``refused`` (the agency system answered with a refusal that will not change, a 4xx),
``retries-exhausted`` (not taken within ``retry_for``), ``unrenderable`` (cannot be put in the
agency's format), ``unverifiable`` (not signed by the broker for this agency, or sealed to a key
it does not hold).

``sgb adapter dead-letters`` (:mod:`adapters.runtime.commands`) lists them, retries them once the agency
system is back (the same delivery id, so a system that stores by it still takes each one once;
the sender, told ``not-delivered`` before, is told ``delivered``), or discards them: the files
go, and ``discarded.jsonl`` in the folder keeps the ids, the code, when and by whom (ids only).
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from adapters.sdk import DeliveryFailed
from broker.errors import InvalidEnvelope
from broker.files import append_private, private_folder, write_private
from broker.wire.jws import unverified

log = structlog.get_logger("sgb.adapter")
DISCARDED: Final = "discarded.jsonl"
REFUSED: Final = "refused"
RETRIES_EXHAUSTED: Final = "retries-exhausted"
UNRENDERABLE: Final = "unrenderable"
UNVERIFIABLE: Final = "unverifiable"


def _iso(when: float | None = None) -> str:
    moment = dt.datetime.now(dt.UTC) if when is None else dt.datetime.fromtimestamp(when, dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _ids(wire_bytes: bytes) -> dict[str, str | None]:
    """The delivery's ids from its envelope (signed, not encrypted; no personal data by design)."""
    try:
        _, claims = unverified(wire_bytes)
    except InvalidEnvelope:
        return {"delivery": None, "type": None, "sender": None, "message": None}
    origin = claims.get("origin")
    origin = origin if isinstance(origin, dict) else {}
    return {name: value if isinstance(value, str) else None for name, value in (
        ("delivery", claims.get("jti")), ("type", claims.get("typ")), ("sender", origin.get("iss")),
        ("message", origin.get("jti")))}


@dataclass(frozen=True, slots=True)
class Letter:
    key: str
    delivery: str | None
    type: str | None
    sender: str | None
    message: str | None    # the sender's message id
    code: str
    reason: str
    attempts: int
    at: str                # when it was dead-lettered (UTC)
    first_failure: str | None = None
    retried: int = 0       # operator retries that failed since

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def when(self) -> float | None:
        try:
            return dt.datetime.fromisoformat(self.at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None


class DeadLetters:
    """The dead-letter folder of one adapter."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        private_folder(folder)

    @staticmethod
    def safe(key: str) -> str:
        return "".join(c for c in key if c.isalnum() or c in "-_")[:100] or "unknown"

    def put(self, key: str, wire_bytes: bytes, *, code: str, reason: str, attempts: int,
            first_failure: float | None = None) -> None:
        safe = self.safe(key)
        why = {"code": code, "reason": reason, "attempts": attempts, "at": _iso()} | _ids(wire_bytes)
        if first_failure is not None:
            why["first_failure"] = _iso(first_failure)
        write_private(self.folder / f"{safe}.jws", wire_bytes)
        write_private(self.folder / f"{safe}.why.json", orjson.dumps(why))

    def entries(self) -> list[str]:
        return sorted(p.name.removesuffix(".jws") for p in self.folder.glob("*.jws"))

    def letter(self, key: str) -> tuple[Letter, bytes] | None:
        safe = self.safe(key)
        try:
            data = (self.folder / f"{safe}.jws").read_bytes()
        except FileNotFoundError:
            return None
        try:
            why = orjson.loads((self.folder / f"{safe}.why.json").read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            why = {}
        ids = _ids(data) | {k: why[k] for k in ("delivery", "type", "sender", "message") if why.get(k)}
        code = why.get("code") or (UNVERIFIABLE if safe.startswith("seq-") else REFUSED)  # letters from before codes
        return Letter(safe, ids["delivery"], ids["type"], ids["sender"], ids["message"], str(code),
                      str(why.get("reason", "")), int(why.get("attempts", 0)), str(why.get("at", "")),
                      why.get("first_failure"), int(why.get("retried", 0))), data

    def letters(self) -> list[Letter]:
        return [found[0] for key in self.entries() if (found := self.letter(key)) is not None]

    def remove(self, key: str) -> None:
        safe = self.safe(key)
        for name in (f"{safe}.jws", f"{safe}.why.json"):
            (self.folder / name).unlink(missing_ok=True)

    def note_retry_failed(self, letter: Letter, reason: str) -> None:
        why = letter.as_json() | {"reason": reason, "retried": letter.retried + 1, "last_retry": _iso()}
        why.pop("key")
        write_private(self.folder / f"{letter.key}.why.json", orjson.dumps(why))

    def discard(self, letter: Letter, *, by: str | None = None) -> None:
        """Remove a letter for good, keeping its ids, code and who discarded it in ``discarded.jsonl``."""
        record = {k: v for k, v in letter.as_json().items() if k != "reason"} | {
            "discarded": _iso(), "by": by or _user()}
        append_private(self.folder / DISCARDED, orjson.dumps(record) + b"\n")
        self.remove(letter.key)
        log.warning("dead letter discarded", key=letter.key, delivery=letter.delivery, type=letter.type,
                    sender=letter.sender, message=letter.message, code=letter.code, by=record["by"])


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


@dataclass(frozen=True, slots=True)
class Retried:
    key: str
    outcome: str   # delivered, already-delivered, failed, unverifiable, missing
    reason: str = ""


Resend = Callable[[bytes, float | None], Awaitable[str]]


async def retry(dead: DeadLetters, keys: Iterable[str], resend: Resend) -> list[Retried]:
    """Hand each letter over again with ``resend`` (the deliverer's: verify, open, hand over under
    its own delivery id, tell the sender). A letter handed over is removed; one that fails again
    stays, its reason updated."""
    out: list[Retried] = []
    for key in keys:
        found = dead.letter(key)
        if found is None:
            out.append(Retried(DeadLetters.safe(key), "missing", "no such dead letter"))
            continue
        letter, data = found
        with structlog.contextvars.bound_contextvars(key=letter.key, delivery=letter.delivery, type=letter.type):
            try:
                outcome = await resend(data, letter.when)
            except DeliveryFailed as exc:
                dead.note_retry_failed(letter, exc.reason)
                log.warning("dead letter retried: not taken", reason=exc.reason)
                out.append(Retried(letter.key, "failed", exc.reason))
                continue
            except InvalidEnvelope:
                reason = "the delivery cannot be verified or opened with this adapter's keys"
                dead.note_retry_failed(letter, reason)
                out.append(Retried(letter.key, "unverifiable", reason))
                continue
            dead.remove(letter.key)
            log.info("dead letter retried", outcome=outcome)
            out.append(Retried(letter.key, outcome))
    return out
