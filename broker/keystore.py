"""Private keys under the data directory (``<home>/keys``, mode 0700; files 0600).

``sgb keys init`` makes a development registry and an identity per demo agency. Production
identities come from the agency's own key ceremony; only their public halves go into the
registry.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from broker import _crypto
from broker.errors import ConfigError, KeyStoreError

BROKER_ID = "sg-broker"
TOKEN_ISSUER_ID = "dev-token-issuer"  # noqa: S105 - an agency id, not a secret

# (id, kind, display name, suite): the demo partnership of Camden.
DEMO_AGENCIES: tuple[tuple[str, str, str, _crypto.SuiteName], ...] = (
    ("police-met", "police", "Metropolitan Police Service", _crypto.X25519_SUITE),
    ("health-camden", "health", "NHS North Central London ICB (Camden)", _crypto.HYBRID_SUITE),
    ("la-camden", "local-authority", "London Borough of Camden Children's Social Care", _crypto.X25519_SUITE),
    ("school-hillside", "school", "Hillside Primary School", _crypto.X25519_SUITE),
    ("cscpr-panel", "national-panel", "Child Safeguarding Practice Review Panel", _crypto.X25519_SUITE),
)


@dataclass(frozen=True, slots=True)
class Identity:
    """One party's private keys: a signing key and one or more HPKE keys (rotation overlap)."""

    id: str
    sig_kid: str
    signing_key: _crypto.SigningKey
    kem: dict[str, _crypto.KemKeyPair]

    def kem_key(self, kid: str) -> _crypto.KemKeyPair | None:
        return self.kem.get(kid)


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (temp file, fsync, rename, fsync of the
    folder): a reader never sees half of it, and a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def identity_path(home: Path, party: str) -> Path:
    return home / "keys" / f"{party}.key.json"


def load_identity(home: Path, party: str) -> Identity:
    path = identity_path(home, party)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyStoreError(f"{path} is readable by others; chmod 600 it")
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise KeyStoreError(f"no private key for {party} at {path}; run `sgb keys init`") from exc
    except orjson.JSONDecodeError as exc:
        raise KeyStoreError(f"{path} is not a key file") from exc
    kem = {
        k["kid"]: _crypto.kem_key_from_bytes(
            k["suite"], _crypto.unb64u(k["x"]), _crypto.unb64u(k["pq_seed"]) if k.get("pq_seed") else None
        )
        for k in doc["enc"]
    }
    return Identity(doc["id"], doc["sig"]["kid"], _crypto.signing_key_from_bytes(_crypto.unb64u(doc["sig"]["d"])), kem)


def _kid(party: str, use: str, today: str) -> str:
    return f"{party}-{use}-{today}-{secrets.token_hex(3)}"


def _new_party(party: str, suite: _crypto.SuiteName | None, today: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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


def init_dev_keys(home: Path, registry_path: Path, *, force: bool = False) -> list[str]:
    """Create the development registry and private keys. Returns the party ids created."""
    if registry_path.exists() and not force:
        raise ConfigError(f"{registry_path} exists; pass --force to replace the development keys")
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    parties: list[tuple[str, str, str, _crypto.SuiteName | None]] = [
        (BROKER_ID, "broker", "Safeguarding Broker", _crypto.X25519_SUITE),
        *DEMO_AGENCIES,
        (TOKEN_ISSUER_ID, "token-issuer", "Development token issuer", None),
    ]
    agencies = []
    for party, kind, name, suite in parties:
        private, public = _new_party(party, suite, today)
        write_private(identity_path(home, party), orjson.dumps(private, option=orjson.OPT_INDENT_2))
        entry: dict[str, Any] = {"id": party, "kind": kind, "name": name, "keys": public}
        if suite is not None:
            entry["suite"] = suite
        agencies.append(entry)
    write_private(home / "keys" / "audit-hmac.key", secrets.token_bytes(32))
    from broker import natsauth
    from broker.subjects import rotate_subject_key

    (home / "keys" / "subject-index.keyring.json").unlink(missing_ok=True)
    rotate_subject_key(home)
    broker = (BROKER_ID, natsauth.create_seed(home, BROKER_ID))
    agencies_nats = [(party, natsauth.create_seed(home, party)) for party, *_ in DEMO_AGENCIES]
    natsauth.write_authorization(home / "nats", broker, agencies_nats)
    registry = {"registry": "sgb-trust-registry", "version": 1, "broker": BROKER_ID, "agencies": agencies}
    registry_path.parent.mkdir(parents=True, exist_ok=True)
    registry_path.write_bytes(orjson.dumps(registry, option=orjson.OPT_INDENT_2))
    return [p[0] for p in parties]


def load_secret(home: Path, name: str) -> bytes:
    path = home / "keys" / name
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyStoreError(f"{path} is readable by others; chmod 600 it")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyStoreError(f"no {name} under {home / 'keys'}; run `sgb keys init`") from exc
