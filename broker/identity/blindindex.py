"""A keyed blind index of the child a message is about, so that the audit log can answer
"what has been shared about this child" without ever holding who the child is.

From the opened payload the broker takes the child's NHS number and, when the name and date
of birth are known, a normalised first given name + family name + date of birth, and stores
only ``HMAC-SHA256(key, identifier)`` (truncated to 128 bits) in the audit record. An IG
officer searching for a child enters the identifier; the same normalisation and every key in
the keyring give the tokens to look up. Without the key the tokens cannot be reversed by
guessing NHS numbers.

Rotation: ``sgb keys rotate-subject-key`` adds a key and makes it current. New records use
the new key; searches use every key in the keyring, so records written under an old key are
still found. A key is removed only when no record under it is kept any longer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from broker.errors import ConfigError, KeyStoreError
from broker.files import write_private
from broker.identity.keys import load_secret
from broker.wire import _crypto

KEYRING: Final = "subject-index.keyring.json"
_CONTAINERS: Final = ("child", "subject")
_NAME_STRIP = re.compile(r"[^a-z]+")


def normalise_nhs_number(text: str) -> str:
    """Ten digits; spaces and dashes are ignored. The check digit is not enforced: the index must
    find what an agency actually sent, typo or not."""
    digits = re.sub(r"[\s-]", "", text)
    if not re.fullmatch(r"[0-9]{10}", digits):
        raise ConfigError("an NHS number has ten digits")
    return digits


def nhs_check_digit_ok(digits: str) -> bool:
    """The modulus-11 check (shown as a warning to an officer who may have mistyped)."""
    total = sum(int(d) * (10 - i) for i, d in enumerate(digits[:9]))
    check = (11 - total % 11) % 11
    return check != 10 and check == int(digits[9])


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return _NAME_STRIP.sub("", "".join(c for c in decomposed if not unicodedata.combining(c)).casefold())


def normalise_name_dob(given: str | None, family: str, dob: str) -> str:
    """First given name and family name, case, accents, spaces and punctuation folded; ISO date."""
    first = (given or "").split()[0] if (given or "").split() else ""
    try:
        day = dt.date.fromisoformat(dob.strip())
    except ValueError as exc:
        raise ConfigError("a date of birth is YYYY-MM-DD") from exc
    folded = _fold(family)
    if not folded:
        raise ConfigError("a family name is needed with a date of birth")
    return f"{_fold(first)}|{folded}|{day.isoformat()}"


def identifiers(payload: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(kind, normalised value) for every child the payload names."""
    people: list[Mapping[str, Any]] = []
    for key in _CONTAINERS:
        if isinstance(payload.get(key), Mapping):
            people.append(payload[key])
    if isinstance(payload.get("children"), list):
        people.extend(p for p in payload["children"] if isinstance(p, Mapping))
    if "nhsNumber" in payload:
        people.append(payload)
    for person in people:
        yield from _person_identifiers(person)


def _person_identifiers(person: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Unusable identifiers (a bad check digit, no family name) give no token rather than a wrong one."""
    found = []
    with contextlib.suppress(ConfigError):
        if isinstance(person.get("nhsNumber"), str):
            found.append(("nhs", normalise_nhs_number(person["nhsNumber"])))
    name = person.get("name")
    with contextlib.suppress(ConfigError):
        if isinstance(name, Mapping) and isinstance(name.get("family"), str) and isinstance(
                person.get("dateOfBirth"), str):
            found.append(("name-dob", normalise_name_dob(name.get("given"), name["family"], person["dateOfBirth"])))
    return found


@dataclass(frozen=True, slots=True)
class SubjectIndex:
    keys: Mapping[str, bytes]
    current: str

    def _token(self, kid: str, kind: str, value: str) -> str:
        mac = hmac.new(self.keys[kid], f"{kind}:{value}".encode(), hashlib.sha256).digest()[:16]
        return f"{kid}.{_crypto.b64u(mac)}"

    def tokens_for(self, payload: Mapping[str, Any]) -> list[str]:
        """The tokens to store in an audit record (current key only)."""
        return sorted({self._token(self.current, kind, value) for kind, value in identifiers(payload)})

    def search_tokens(self, *, nhs_number: str | None = None, given: str | None = None, family: str | None = None,
                      date_of_birth: str | None = None) -> list[str]:
        """The tokens to look up for one child, under every key. Raises :class:`ConfigError`
        with a plain reason when the identifier is not usable."""
        wanted: list[tuple[str, str]] = []
        if nhs_number:
            wanted.append(("nhs", normalise_nhs_number(nhs_number)))
        if family or date_of_birth:
            if not (family and date_of_birth):
                raise ConfigError("search by name needs the family name and the date of birth")
            wanted.append(("name-dob", normalise_name_dob(given, family, date_of_birth)))
        if not wanted:
            raise ConfigError("give an NHS number, or a name with a date of birth")
        return sorted({self._token(kid, kind, value) for kid in self.keys for kind, value in wanted})


def load_subject_index(home: Path) -> SubjectIndex:
    try:
        doc = orjson.loads(load_secret(home, KEYRING))
        keys = {kid: _crypto.unb64u(k) for kid, k in doc["keys"].items()}
        return SubjectIndex(keys, doc["current"]) if doc["current"] in keys else _bad_keyring(home)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise KeyStoreError(f"{home / 'keys' / KEYRING} is not a subject index keyring") from exc


def _bad_keyring(home: Path) -> SubjectIndex:
    raise KeyStoreError(f"{home / 'keys' / KEYRING}: the current key is not in the keyring")


def rotate_subject_key(home: Path) -> str:
    """Add a fresh key and make it current (creating the keyring if there is none). Returns its id."""
    try:
        doc = orjson.loads(load_secret(home, KEYRING))
    except KeyStoreError:
        doc = {"keys": {}}
    kid = f"s{dt.datetime.now(dt.UTC):%Y%m%d}{secrets.token_hex(2)}"
    doc["keys"][kid] = _crypto.b64u(secrets.token_bytes(32))
    doc["current"] = kid
    write_private(home / "keys" / KEYRING, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return kid
