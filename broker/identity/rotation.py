"""Key rotation without downtime (``sgb keys rotate`` and ``sgb keys retire``).

New keys are published next to the old ones, which stay valid for an overlap and are removed from
the registry after it; the old decryption private keys stay in the key file, so what is kept
sealed to them still opens (``keys/README.md``, ``docs/operating.md``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from broker.errors import ConfigError, KeyStoreError
from broker.files import write_private, write_public
from broker.identity.keys import identity_doc, identity_from_doc, identity_path, new_party
from broker.timestamps import iso
from broker.wire import _crypto
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry, read_document

DAY: Final = 86400.0


DEFAULT_OVERLAP: Final = 30 * DAY  # as long as deliveries are kept (SGB_DELIVERY_RETENTION_DAYS)


@dataclass(frozen=True, slots=True)
class Rotation:
    """What :func:`rotate_keys` changed. Key ids only: nothing here is secret."""

    party: str
    sig_kid: str                  # signs from now on
    enc_kid: str | None           # sealed to from ``enc_from`` (None: the party has no encryption key)
    suite: _crypto.SuiteName | None
    enc_from: float
    ended: tuple[str, ...]        # the keys that were in use, now ending at ``not_after``
    not_after: float


@dataclass(frozen=True, slots=True)
class Retirement:
    """The keys :func:`retire_keys` removes from the registry (or, from :func:`plan_retirement`,
    would remove), and the decryption private keys it removed from the key file (only on request)."""

    party: str
    sig: tuple[str, ...]
    enc: tuple[str, ...]
    kept: tuple[str, ...]  # expired but kept: the broker's signing keys still verify old audit blocks
    purged: tuple[str, ...] = ()  # decryption private keys removed from the key file (``purge=True``)

    @property
    def removed(self) -> tuple[str, ...]:
        return self.sig + self.enc


def _load_registry(registry_path: Path) -> tuple[dict[str, Any], Registry]:
    """The registry document (to edit) and its parsed, validated form."""
    doc = read_document(registry_path)
    return doc, Registry.from_document(doc, Catalogue())


def _entry(doc: dict[str, Any], party: str) -> dict[str, Any]:
    for entry in doc["agencies"]:
        if entry["id"] == party:
            return entry  # type: ignore[no-any-return]
    raise ConfigError(f"{party} is not in the trust registry")


def _write_both(home: Path, party: str, identity: dict[str, Any], registry_path: Path,
                registry: dict[str, Any]) -> None:
    """Both checked first; then the key file, then the registry, each atomically. Should the
    registry not be written, the previous key file is put back, so the two never disagree."""
    Registry.from_document(registry, Catalogue())
    identity_from_doc(identity)
    path = identity_path(home, party)
    try:
        before = path.read_bytes()
        write_private(path, orjson.dumps(identity, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        write_public(registry_path, orjson.dumps(registry, option=orjson.OPT_INDENT_2))
    except BaseException as exc:
        write_private(path, before)
        if isinstance(exc, OSError):
            raise KeyStoreError(f"cannot write {registry_path}: {exc.strerror}; the key file is unchanged") from exc
        raise


def rotate_keys(home: Path, registry_path: Path, party: str, *, overlap: float = DEFAULT_OVERLAP,
                enc_delay: float = 0.0, now: float | None = None) -> Rotation:
    """Give ``party`` a new Ed25519 signing key and a new HPKE key (the suite of its current one).

    The registry lists the new public keys after the old ones, so the new encryption key is the
    one sealed to (from ``now + enc_delay``), and the old keys get ``notAfter = now + overlap``
    (an earlier one is kept): a message signed or sealed with them before the rotation is still
    accepted or opened during the overlap. The key file signs with the new key from now on (the
    old signing private key is dropped: nothing needs it to read anything) and keeps the old
    HPKE private keys, so what was sealed to them still opens (see :func:`retire_keys`).
    ``enc_delay`` is the time the party's processes have to load the new key file before
    anything is sealed to the new key (``sgb keys rotate`` defaults it to an hour). Both files
    are written atomically.
    Raises :class:`ConfigError` or :class:`KeyStoreError` and changes nothing when it cannot.
    """
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    if overlap <= 0:
        raise ConfigError("the overlap must be longer than zero")
    if not 0 <= enc_delay < overlap:
        raise ConfigError("the new encryption key must come into use before the old one ends")
    doc, registry = _load_registry(registry_path)
    agency = registry.get(party)
    if agency is None:
        raise ConfigError(f"{party} is not in the trust registry")
    private = identity_doc(home, party)
    enc_keys = [k for k in agency.keys if k.use == "enc"]
    suite: _crypto.SuiteName | None = None
    if enc_keys:
        current = next((k for k in reversed(enc_keys) if k.valid_at(now)), enc_keys[-1])
        suite = _crypto.HYBRID_SUITE if current.alg == "MLKEM768X25519" else _crypto.X25519_SUITE
    new_private, new_public = new_party(party, suite, dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%d"))
    not_after = now + overlap
    entry = _entry(doc, party)
    ended = []
    for key, parsed in zip(entry["keys"], agency.keys, strict=True):
        if parsed.not_after is None or parsed.not_after > not_after:
            if parsed.not_after is None or parsed.not_after >= now:
                ended.append(parsed.kid)
            key["notAfter"] = iso(not_after)
    enc_kid = None
    for key in new_public:
        if key["use"] == "enc":
            enc_kid = key["kid"]
            if enc_delay:
                key["notBefore"] = iso(now + enc_delay)
    entry["keys"].extend(new_public)
    identity = {"id": party, "sig": new_private["sig"], "enc": [*private["enc"], *new_private["enc"]]}
    _write_both(home, party, identity, registry_path, doc)
    return Rotation(party, new_private["sig"]["kid"], enc_kid, suite, now + enc_delay, tuple(ended), not_after)


def plan_retirement(registry_path: Path, party: str, *, now: float) -> Retirement:
    """The keys of ``party`` whose ``notAfter`` has passed, which :func:`retire_keys` removes.

    Refuses (:class:`ConfigError`) when the party would be left without a valid signing key, or
    without a valid encryption key while it has any: rotate first. The broker's own signing keys
    stay in the registry (expired, so nothing new verifies with them), because the audit blocks
    they signed are verified with them for as long as the audit log is kept.
    """
    _, registry = _load_registry(registry_path)
    agency = registry.get(party)
    if agency is None:
        raise ConfigError(f"{party} is not in the trust registry")
    expired = [k for k in agency.keys if k.not_after is not None and k.not_after < now]
    kept = tuple(k.kid for k in expired if k.use == "sig" and party == registry.broker_id)
    gone = [k for k in expired if k.kid not in kept]
    left = [k for k in agency.keys if k not in gone]
    if not any(k.use == "sig" and k.valid_at(now) for k in left):
        raise ConfigError(f"{party} has no valid signing key left; run `sgb keys rotate --agency {party}` first")
    if any(k.use == "enc" for k in agency.keys) and not any(k.use == "enc" and k.valid_at(now) for k in left):
        raise ConfigError(f"{party} has no valid encryption key left; run `sgb keys rotate --agency {party}` first")
    return Retirement(party, tuple(k.kid for k in gone if k.use == "sig"),
                      tuple(k.kid for k in gone if k.use == "enc"), kept)


def purgeable(home: Path, registry_path: Path, party: str, plan: Retirement) -> tuple[str, ...]:
    """The decryption private keys in ``party``'s key file that ``retire_keys(..., purge=True)``
    would remove: those the registry no longer lists once ``plan`` is carried out (retired now
    or at an earlier retirement)."""
    doc, _ = _load_registry(registry_path)
    listed = {k["kid"] for k in _entry(doc, party)["keys"] if k["kid"] not in plan.removed}
    return tuple(k["kid"] for k in identity_doc(home, party)["enc"] if k["kid"] not in listed)


def retire_keys(home: Path, registry_path: Path, party: str, *, now: float, purge: bool = False) -> Retirement:
    """Remove the keys of ``party`` whose ``notAfter`` has passed from the registry (see
    :func:`plan_retirement` for what is refused and kept). Nothing new is signed with them or
    sealed to them, and a message still waiting signed with one is rejected (``unknown-key``):
    ``sgb keys retire`` looks in the streams first.

    The old decryption private keys stay in the key file, still loaded by :func:`load_identity`:
    what was sealed to them and is kept sealed (a school's inbox, the adapters' dead letters, a
    delivery not yet collected) still opens. (The old signing private key left the key file at
    the rotation.) With ``purge``, every decryption private key the registry no longer lists is
    removed from the key file too, and anything still stored sealed to one of them can never be
    opened again: only for a key that is compromised, or once nothing sealed to it is kept.
    Nothing is written when there is nothing to do.
    """
    plan = plan_retirement(registry_path, party, now=now)
    purged = purgeable(home, registry_path, party, plan) if purge else ()
    if not plan.removed and not purged:
        return plan
    doc, _ = _load_registry(registry_path)
    private = identity_doc(home, party)
    if private["sig"]["kid"] in plan.sig:
        raise KeyStoreError(f"the key file of {party} still signs with an expired key; rotate first")
    entry = _entry(doc, party)
    entry["keys"] = [k for k in entry["keys"] if k["kid"] not in plan.removed]
    private["enc"] = [k for k in private["enc"] if k["kid"] not in purged]
    _write_both(home, party, private, registry_path, doc)
    return dataclasses.replace(plan, purged=purged)
