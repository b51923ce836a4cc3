"""The witness's cosigning key (a private file) and the logs it witnesses (their verifier keys).

The key file holds one line in the signer-key format of golang.org/x/mod/sumdb/note, which
transparency-dev's witness also reads: ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed)``.
The same Ed25519 key cosigns as type 0x04 (``cosignature/v1``); its verifier key (what a log
configures) is :attr:`notes.Cosigner.key`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import notes
from broker.config import Settings
from broker.errors import ConfigError, KeyStoreError
from broker.files import read_private, write_private

_PREFIX = "PRIVATE+KEY+"


def key_path(settings: Settings) -> Path:
    return settings.witness.key_file or settings.home / "witness" / "witness.key"


def state_path(settings: Settings) -> Path:
    return settings.witness.state_path or settings.home / "witness" / "state.sqlite"


def signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """The Go signer-key line for ``private_key`` under ``name`` (type 0x01 key ID, as Go has it)."""
    public = private_key.public_key().public_bytes_raw()
    seed = private_key.private_bytes_raw()
    kid = notes.key_id(name, notes.ED25519, public)
    return f"{_PREFIX}{name}+{kid:08x}+{base64.b64encode(bytes([notes.ED25519]) + seed).decode('ascii')}"


def parse_signer_key(text: str) -> notes.Cosigner:
    """A cosigner from a signer-key line; fixed messages that never quote the key."""
    parts = text.strip().removeprefix(_PREFIX).split("+", 2)
    if not text.strip().startswith(_PREFIX) or len(parts) != 3 or not notes.valid_name(parts[0]):
        raise KeyStoreError("the witness key file is not PRIVATE+KEY+<name>+<id>+<key>")
    try:
        raw = base64.b64decode(parts[2], validate=True)
        kid = int(parts[1], 16)
    except (binascii.Error, ValueError):
        raise KeyStoreError("the witness key file is not PRIVATE+KEY+<name>+<id>+<key>") from None
    if len(raw) != 33 or raw[0] != notes.ED25519:
        raise KeyStoreError("the witness key file does not hold an Ed25519 key")
    private = Ed25519PrivateKey.from_private_bytes(raw[1:])
    if notes.key_id(parts[0], notes.ED25519, private.public_key().public_bytes_raw()) != kid:
        raise KeyStoreError("the witness key file's key ID does not match its name and key")
    return notes.Cosigner(parts[0], private)


def create_key(path: Path, name: str, *, force: bool = False) -> notes.Cosigner:
    """A new Ed25519 cosigning key written to ``path`` (0600, folder 0700); an existing file is
    kept unless ``force`` (a new key is a new witness: every log must configure it again)."""
    if not notes.valid_name(name):
        raise ConfigError("a witness name is non-empty, without spaces, '+' or control characters")
    if path.exists() and not force:
        raise KeyStoreError(f"{path} exists; --force replaces it (logs must then configure the new key)")
    private = Ed25519PrivateKey.generate()
    write_private(path, (signer_key(name, private) + "\n").encode("ascii"))
    return notes.Cosigner(name, private)


def load_key(path: Path) -> notes.Cosigner:
    try:
        data = read_private(path)
    except FileNotFoundError:
        raise KeyStoreError(f"no witness key at {path}: run sgb witness init --name NAME") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyStoreError("the witness key file is not ASCII") from None
    return parse_signer_key(text)


def log_keys(logs: Mapping[str, Any]) -> dict[str, tuple[notes.VerifierKey, ...]]:
    """``[witness] logs``: origin -> a vkey string or a list of them, each a type 0x01 key."""
    out: dict[str, tuple[notes.VerifierKey, ...]] = {}
    for origin, given in logs.items():
        if not origin or "\n" in origin or any(c < " " for c in origin):
            raise ConfigError("[witness] logs: an origin is one non-empty line")
        vkeys = [given] if isinstance(given, str) else given
        if not isinstance(vkeys, list) or not vkeys or not all(isinstance(v, str) for v in vkeys):
            raise ConfigError(f"[witness] logs: {origin!r} must name a verifier key or a list of them")
        try:
            keys = tuple(notes.VerifierKey.parse(v) for v in vkeys)
        except notes.NoteError as exc:
            raise ConfigError(f"[witness] logs: {origin!r}: {exc}") from None
        if any(k.sig_type != notes.ED25519 for k in keys):
            raise ConfigError(f"[witness] logs: {origin!r}: a log's key is an Ed25519 (type 0x01) verifier key")
        out[origin] = keys
    return out
