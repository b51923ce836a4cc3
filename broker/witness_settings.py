"""The ``[audit] witnesses`` setting: each witness the broker asks to cosign its transparency
checkpoints (docs/transparency.md, "Witnesses"), checked where the settings are read
(:mod:`broker.config`): an http(s) URL and a cosignature verifier key. It sits beside the loader
because the full vkey parser (:mod:`broker.audit.notes`) is a layer above the settings.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AuditWitness:
    """One witness the broker asks to cosign: its tlog-witness URL prefix and its verifier key."""

    url: str
    key: str

    @property
    def name(self) -> str:
        """The witness's key name (the first part of its vkey), as metrics and logs name it."""
        return self.key.split("+", 1)[0]



def audit_witnesses(given: tuple[Any, ...], problems: list[str]) -> tuple[AuditWitness, ...]:
    """``[audit] witnesses`` as read (tables ``{url, key}``), each checked: an http(s) URL and a
    cosignature (type 0x04) verifier key; the names of the keys differ."""
    out: list[AuditWitness] = []
    for i, item in enumerate(given):
        where = f"[audit] witnesses[{i}]"
        if isinstance(item, AuditWitness):
            item = {"url": item.url, "key": item.key}
        if not isinstance(item, Mapping) or set(item) != {"url", "key"}:
            problems.append(f"{where} must be a table with exactly url and key")
            continue
        url, key = item["url"], item["key"]
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s]+", url):
            problems.append(f"{where} url must be an http:// or https:// URL")
            continue
        if not isinstance(key, str) or not _cosignature_vkey(key):
            problems.append(f"{where} key must be a witness's cosignature verifier key (type 0x04, as "
                            "`sgb witness key` prints it)")
            continue
        out.append(AuditWitness(url, key))
    names = [w.name for w in out]
    if len(set(names)) != len(names):
        problems.append("[audit] witnesses: two witnesses have keys of the same name")
    return tuple(out)


def _cosignature_vkey(vkey: str) -> bool:
    """Whether ``vkey`` is a signed-note verifier key of type 0x04 (cosignature/v1, Ed25519) whose
    key ID fits it (the full parse is :meth:`broker.audit.notes.VerifierKey.parse`, a layer above)."""
    name, _, rest = vkey.partition("+")
    key_id, _, encoded = rest.partition("+")
    if not name or not re.fullmatch(r"[!-*,-~]+", name) or not re.fullmatch(r"[0-9a-f]{8}", key_id):
        return False
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        return False
    return (len(raw) == 33 and raw[0] == 0x04
            and hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4] == bytes.fromhex(key_id))
