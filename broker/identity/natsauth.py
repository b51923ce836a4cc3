"""Least privilege on NATS: one nkey per party and a server authorisation block that lets each
do only its part of the wire contract.

An agency may publish only to its own ingress subject (``sg.in.<agency>``), pull only from its
own durable on ``SG_DELIVERY`` and ack only that consumer's messages, and receive replies only
on its own inbox prefix (``_INBOX_<agency>.``); it cannot create, update, delete or purge
streams or consumers, nor read anyone else's. The broker may do what the broker does, but not
delete or purge ``SG_AUDIT`` or its checkpoints, nor publish as an agency. Nobody holds those
rights: changing the audit stream means changing this configuration, visibly.

Seeds (private) live in ``<home>/keys/nats/<party>.nk`` (0600); the authorisation block holds
public keys only and is written to ``<home>/nats/authorization.conf``, which the embedded
server includes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import nkeys

from broker.errors import KeyStoreError
from broker.files import write_private
from broker.wire.subjects import AUDIT, AUDIT_HEADS_BUCKET, DELIVERY, ingress_subject

AUTH_FILE: Final = "authorization.conf"
_PROTECTED: Final = (AUDIT, f"KV_{AUDIT_HEADS_BUCKET}")


def seed_path(home: Path, party: str) -> Path:
    return home / "keys" / "nats" / f"{party}.nk"


def inbox_prefix(agency: str) -> str:
    return f"_INBOX_{agency}"


def create_seed(home: Path, party: str) -> str:
    """A fresh user nkey for ``party``; returns its public key."""
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    write_private(seed_path(home, party), seed)
    return public_key(home, party)


def public_key(home: Path, party: str) -> str:
    try:
        seed = seed_path(home, party).read_bytes().strip()
    except FileNotFoundError as exc:
        raise KeyStoreError(f"no NATS credentials for {party}; run `sgb keys init`") from exc
    key: str = nkeys.from_seed(bytearray(seed)).public_key.decode()
    return key


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def agency_permissions(agency: str) -> str:
    publish = [
        ingress_subject(agency),
        f"$JS.API.CONSUMER.MSG.NEXT.{DELIVERY}.{agency}",
        f"$JS.API.CONSUMER.INFO.{DELIVERY}.{agency}",
        f"$JS.ACK.{DELIVERY}.{agency}.>",
        f"$JS.ACK.*.*.{DELIVERY}.{agency}.>",  # the v2 ack subject (with domain and account hash)
    ]
    return (f"{{ publish: {{ allow: {_list(publish)} }}, "
            f"subscribe: {{ allow: {_list([inbox_prefix(agency) + '.>'])} }} }}")


def broker_permissions() -> str:
    deny = [f"$JS.API.STREAM.{op}.{name}" for name in _PROTECTED for op in ("DELETE", "PURGE")]
    deny += [f"$JS.API.STREAM.MSG.DELETE.{name}" for name in _PROTECTED]
    deny.append("sg.in.>")  # the broker never speaks as an agency
    return (f"{{ publish: {{ allow: [\">\"], deny: {_list(deny)} }}, "
            f"subscribe: {{ allow: [\"_INBOX.>\"] }} }}")


def authorization(broker: tuple[str, str], agencies: Iterable[tuple[str, str]]) -> str:
    """The server's ``authorization`` block for (party, public nkey) pairs."""
    lines = ["# Written by `sgb keys init`: public keys only. Each user's permissions are its part of the",
             "# wire contract (broker/natsauth.py). Nobody may delete or purge SG_AUDIT.",
             "authorization {", "  users: ["]
    party, key = broker
    lines.append(f'    # {party}\n    {{ nkey: "{key}", permissions: {broker_permissions()} }}')
    for agency, key in agencies:
        lines.append(f'    # {agency}\n    {{ nkey: "{key}", permissions: {agency_permissions(agency)} }}')
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def write_authorization(nats_dir: Path, broker: tuple[str, str], agencies: Iterable[tuple[str, str]]) -> Path:
    nats_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = nats_dir / AUTH_FILE
    path.write_text(authorization(broker, agencies))
    return path
