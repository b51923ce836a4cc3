"""Private keys under the data directory (``<home>/keys``, mode 0700; files 0600, written and
checked by :mod:`broker.files`).

``sgb keys init`` makes a development registry and an identity per demo agency. Production
identities come from the agency's own key ceremony; only their public halves go into the
registry. ``sgb keys rotate`` and ``sgb keys retire`` replace a party's keys without downtime:
new keys are published next to the old ones, which stay valid for an overlap and are removed
from the registry after it; the old decryption private keys stay in the key file, so what is
kept sealed to them still opens (``keys/README.md``, ``docs/operating.md``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from broker.errors import KeyStoreError
from broker.files import read_private
from broker.wire import _crypto
from broker.wire.registry import Agency

BROKER_ID = "sg-broker"


@dataclass(slots=True, eq=False)
class Identity:
    """One party's private keys: a signing key and one or more HPKE keys (rotation overlap).

    Changed only by :meth:`replace_with`, so that every holder (intake, outcomes, the audit
    writer) uses the new keys from the same moment."""

    id: str
    sig_kid: str
    signing_key: _crypto.SigningKey
    kem: dict[str, _crypto.KemKeyPair]

    def kem_key(self, kid: str) -> _crypto.KemKeyPair | None:
        return self.kem.get(kid)

    def replace_with(self, other: Identity) -> None:
        """Take ``other``'s keys in place (a reload after a rotation). Called on the event loop:
        no coroutine sees the new signing key with the old key id, or the reverse."""
        if other.id != self.id:
            raise KeyStoreError(f"the key file is for {other.id}, not {self.id}")
        self.kem = other.kem  # the new KEM keys first: a message sealed to them may arrive at once
        self.signing_key, self.sig_kid = other.signing_key, other.sig_kid


def identity_path(home: Path, party: str) -> Path:
    return home / "keys" / f"{party}.key.json"


def identity_doc(home: Path, party: str) -> dict[str, Any]:
    path = identity_path(home, party)
    try:
        doc = orjson.loads(read_private(path))
    except FileNotFoundError as exc:
        raise KeyStoreError(f"no private key for {party} at {path}; run `sgb keys init`") from exc
    except orjson.JSONDecodeError as exc:
        raise KeyStoreError(f"{path} is not a key file") from exc
    if not isinstance(doc, dict) or doc.get("id") != party:
        raise KeyStoreError(f"{path} is not the key file of {party}")
    return doc


def load_identity(home: Path, party: str) -> Identity:
    return identity_from_doc(identity_doc(home, party))


def identity_from_doc(doc: dict[str, Any]) -> Identity:
    kem = {
        k["kid"]: _crypto.kem_key_from_bytes(
            k["suite"], _crypto.unb64u(k["x"]), _crypto.unb64u(k["pq_seed"]) if k.get("pq_seed") else None
        )
        for k in doc["enc"]
    }
    return Identity(doc["id"], doc["sig"]["kid"], _crypto.signing_key_from_bytes(_crypto.unb64u(doc["sig"]["d"])), kem)


def _kid(party: str, use: str, today: str) -> str:
    return f"{party}-{use}-{today}-{secrets.token_hex(3)}"


def new_party(party: str, suite: _crypto.SuiteName | None, today: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Private document and public registry keys for a fresh identity."""
    sk = _crypto.new_signing_key()
    sig_kid = _kid(party, "sig", today)
    private: dict[str, Any] = {
        "id": party,
        "sig": {"kid": sig_kid, "d": _crypto.b64u(_crypto.signing_key_bytes(sk))},
        "enc": [],
    }
    public: list[dict[str, Any]] = [
        {"kid": sig_kid, "use": "sig", "alg": "Ed25519", "x": _crypto.b64u(_crypto.verify_key_bytes(sk.public_key()))}
    ]
    if suite is not None:
        kp = _crypto.new_kem_key(suite)
        enc_kid = _kid(party, "enc", today)
        entry: dict[str, Any] = {"kid": enc_kid, "suite": suite, "x": _crypto.b64u(kp.x_private)}
        pub: dict[str, Any] = {"kid": enc_kid, "use": "enc", "x": _crypto.b64u(kp.x_public)}
        if kp.pq_seed is not None and kp.pq_public is not None:
            entry["pq_seed"] = _crypto.b64u(kp.pq_seed)
            pub |= {"alg": "MLKEM768X25519", "pq": _crypto.b64u(kp.pq_public)}
        else:
            pub["alg"] = "X25519"
        private["enc"].append(entry)
        public.append(pub)
    return private, public


def load_secret(home: Path, name: str) -> bytes:
    path = home / "keys" / name
    try:
        return read_private(path)
    except FileNotFoundError as exc:
        raise KeyStoreError(f"no {name} under {home / 'keys'}; run `sgb keys init`") from exc


def check_key_file(party: Agency, identity: Identity, now: float) -> None:
    """A party's key file must fit the registry: it signs with a key of the party's valid now, and
    it holds every encryption key others may seal to (valid now or later), so nothing sealed to the
    party is undecryptable. The broker checks its own on reload, an adapter its agency's."""
    if not any(k.kid == identity.sig_kid and k.use == "sig" and k.valid_at(now) for k in party.keys):
        raise KeyStoreError(f"{party.id}'s key file signs with {identity.sig_kid}, which the registry does not "
                            "list as valid; copy the new key file and registry together")
    for key in party.keys:
        if key.use == "enc" and (key.not_after is None or key.not_after >= now):
            held = identity.kem_key(key.kid)
            if held is None or (held.suite == _crypto.HYBRID_SUITE) != (key.alg == "MLKEM768X25519"):
                raise KeyStoreError(f"the registry lists {party.id}'s encryption key {key.kid}, which its key "
                                    "file does not hold; copy the new key file and registry together")
