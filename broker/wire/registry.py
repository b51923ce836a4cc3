"""The trust registry: which agencies exist, their kind, and their public keys.

The registry is public data (a JSON file validated by ``schemas/registry.v1.json``; the
format is documented in ``keys/README.md``). Private keys never appear in it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from broker.errors import ConfigError, UnknownKey
from broker.wire import _crypto
from broker.wire.catalogue import Catalogue


def _parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class PublicKey:
    kid: str
    use: str  # "sig" | "enc"
    alg: str  # "Ed25519" | "X25519" | "MLKEM768X25519"
    x: bytes
    pq: bytes | None
    not_before: float | None
    not_after: float | None

    def valid_at(self, when: float) -> bool:
        return (self.not_before is None or when >= self.not_before) and (
            self.not_after is None or when <= self.not_after
        )


# Kinds that cannot be addressed by agencies: the broker itself and token issuers.
NOT_ADDRESSABLE: Final = frozenset({"broker", "token-issuer"})

# The statutory safeguarding partners of an area (Children Act 2004 s16E(1)): its local authority,
# an integrated care board and the chief officer of police.
PARTNER_TYPES: Final = frozenset({"local-authority", "integrated-care-board", "police-force"})


@dataclass(frozen=True, slots=True)
class Agency:
    id: str
    kind: str
    name: str
    suite: _crypto.SuiteName
    keys: tuple[PublicKey, ...]
    public_authority: bool = True  # from the registry entry; the rulebook's basis checks read it
    organisation_type: str = "service"
    areas: frozenset[str] = frozenset()

    @property
    def safeguarding_partner(self) -> bool:
        return self.organisation_type in PARTNER_TYPES

    def enc_key(self, when: float) -> PublicKey:
        """The newest encryption key valid now (the last listed wins during a rotation overlap)."""
        for key in reversed(self.keys):
            if key.use == "enc" and key.valid_at(when):
                return key
        raise ConfigError(f"agency {self.id} has no valid encryption key")

    def sealable(self, when: float) -> bool:
        """Whether anything can be sealed to this agency at ``when`` (an encryption key valid then)."""
        return any(key.use == "enc" and key.valid_at(when) for key in self.keys)


@dataclass(frozen=True, slots=True)
class _Contents:
    broker_id: str
    agencies: dict[str, Agency]
    raw: Mapping[str, Any]
    by_kid: dict[str, tuple[Agency, PublicKey]]


class Registry:
    """Read-only view of the registry, indexed by agency id and key id.

    One object is shared by everyone who checks or seals (intake, outcomes, retention, the
    adapters' clients); :meth:`replace_with` swaps its contents in one step when the file is
    reloaded, so they all see the new keys at once and none sees half of them."""

    def __init__(self, broker_id: str, agencies: Iterable[Agency], raw: Mapping[str, Any]) -> None:
        by_id = {a.id: a for a in agencies}
        by_kid: dict[str, tuple[Agency, PublicKey]] = {}
        for agency in by_id.values():
            for key in agency.keys:
                if key.kid in by_kid:
                    raise ConfigError(f"key id {key.kid} is listed twice")
                by_kid[key.kid] = (agency, key)
        if broker_id not in by_id:
            raise ConfigError(f"the broker {broker_id} is not in the registry")
        self._contents = _Contents(broker_id, by_id, raw, by_kid)

    def replace_with(self, other: Registry) -> None:
        """Take ``other``'s agencies and keys in place (a reload). The broker's id cannot change."""
        if other.broker_id != self.broker_id:
            raise ConfigError(f"the new registry names broker {other.broker_id}, not {self.broker_id}")
        self._contents = other._contents

    @property
    def broker_id(self) -> str:
        return self._contents.broker_id

    @property
    def agencies(self) -> Mapping[str, Agency]:
        return self._contents.agencies

    @property
    def raw(self) -> Mapping[str, Any]:
        return self._contents.raw

    @property
    def broker(self) -> Agency:
        contents = self._contents
        return contents.agencies[contents.broker_id]

    def get(self, agency_id: str) -> Agency | None:
        return self.agencies.get(agency_id)

    def partners_of(self, agency: Agency) -> tuple[str, ...]:
        """The agency itself, then the safeguarding partners (s16E) of the areas it works in. With no
        areas given, only the agency itself: a partner is never guessed."""
        found = {a.id for a in self.agencies.values() if a.safeguarding_partner and a.areas & agency.areas}
        return (agency.id, *sorted(found - {agency.id}))

    def signer(self, kid: str, when: float) -> tuple[Agency, _crypto.VerifyKey]:
        """The agency and verification key for ``kid``; :class:`UnknownKey` if none is valid."""
        found = self._contents.by_kid.get(kid)
        if found is None or found[1].use != "sig":
            raise UnknownKey("the signing key id is not in the trust registry", field="/header/kid")
        agency, key = found
        if not key.valid_at(when):
            raise UnknownKey("the signing key is outside its validity period", field="/header/kid")
        return agency, _crypto.verify_key_from_bytes(key.x)

    def recipient_key(self, agency_id: str, when: float) -> tuple[str, _crypto.SuiteName, _crypto.KemPublicKey]:
        agency = self.agencies[agency_id]
        key = agency.enc_key(when)
        suite: _crypto.SuiteName = _crypto.HYBRID_SUITE if key.alg == "MLKEM768X25519" else _crypto.X25519_SUITE
        return key.kid, suite, _crypto.kem_public_from_bytes(suite, key.x, key.pq)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], catalogue: Catalogue) -> Registry:
        issue = catalogue.first_issue(catalogue.validator("registry.v1.json"), doc)
        if issue is not None:
            raise ConfigError(f"trust registry invalid at {issue.pointer or '/'} ('{issue.keyword}' failed)")
        agencies = []
        for entry in doc["agencies"]:
            keys = tuple(
                PublicKey(
                    kid=k["kid"], use=k["use"], alg=k["alg"], x=_crypto.unb64u(k["x"]),
                    pq=_crypto.unb64u(k["pq"]) if "pq" in k else None,
                    not_before=_parse_time(k.get("notBefore")), not_after=_parse_time(k.get("notAfter")),
                )
                for k in entry["keys"]
            )
            agencies.append(Agency(
                id=entry["id"], kind=entry["kind"], name=entry["name"],
                suite=entry.get("suite", _crypto.X25519_SUITE), keys=keys,
                public_authority=entry.get("publicAuthority", True),
                organisation_type=entry.get("organisationType", "service"),
                areas=frozenset(entry.get("areas", ())),
            ))
        return cls(doc["broker"], agencies, doc)

    @classmethod
    def load(cls, path: Path, catalogue: Catalogue) -> Registry:
        return cls.from_document(read_document(path), catalogue)


def read_document(path: Path) -> dict[str, Any]:
    """The registry file as JSON (not yet validated)."""
    try:
        doc: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"no trust registry at {path}; run `sgb keys init` first") from exc
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"trust registry {path} is not JSON: {exc}") from exc
    return doc


def addressable(registry: Registry) -> list[str]:
    """The agencies messages can be addressed to (each has a delivery consumer)."""
    return [a.id for a in registry.agencies.values() if a.kind not in NOT_ADDRESSABLE]
