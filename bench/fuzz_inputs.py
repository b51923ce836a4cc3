"""Hostile inputs for ``bench.fuzz``: five generators, each built so that no input can be a valid
message (so the broker must refuse every one).

- ``bytes``: byte-level mutations of the hostile corpus (``tests/hostile.py``) and a valid message;
- ``claims``: random edits to an envelope, re-signed with the agency's real key (they pass the
  signature and reach the envelope, freshness and decryption checks; each carries a fresh jti its
  sealed payload was not made for, so none can open);
- ``header``: random header parameters, re-signed (same fresh-jti guarantee);
- ``payload``: an example payload of a random type, mutated, then broken on purpose (an unknown
  member, truncated or not-an-object JSON, a duplicate member, nesting, a lone surrogate, invalid
  UTF-8), sealed to the broker and signed: they reach the strict reader and the schema;
- ``random``: random bytes, base64url-looking segments, random JSON.
"""

from __future__ import annotations

import collections
import copy
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from broker.wire import hpke
from tests.hostile import CASES, Kit, claims_of, signed

EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SPECIAL = b'.{}[]":,\\\x00\xff=+/ '
GENERATORS = {"bytes": 40, "claims": 22, "header": 10, "payload": 18, "random": 10}


def _value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (extremes included)."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**53 + 1, 2**63, -(2**64), 10**30, int(time.time())])
    if kind == 3:
        return rng.choice([0.5, -1e300, 1e-300, 1.0, 3.14])
    if kind == 4:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF), 0x1F600]))
                       for _ in range(rng.randrange(0, 40)))
    if kind == 5:
        return rng.choice(["police-met", "la-camden", "sg-broker", "../../etc", "", "referral", str(uuid.uuid4())])
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {rng.choice(["a", "iss", "kid", "to", "x", "$ref", ""]): _value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


class Inputs:
    """Makes hostile inputs, none of which can be a valid message."""

    def __init__(self, kit: Kit, rng: random.Random) -> None:
        self.kit, self.rng = kit, rng
        self.jti, token = kit.police.build(typ="referral", to=["la-camden"], payload=example("referral"),
                                           sharing=example("referral.sharing"))
        self.template = claims_of(token)
        self.valid = {token}
        self.seeds: list[bytes] = [token]
        for case in CASES:
            if case.code == "nats" or case.replays:
                continue
            data = case.make(kit)[1]
            if case.subject:  # refused only for the subject it is sent on: valid bytes on their own
                self.valid.add(data)
            if len(data) <= 64 * 1024:
                self.seeds.append(data)
        self.types = [p.name.removesuffix(".example.json") for p in sorted(EXAMPLES.glob("*.example.json"))
                      if ".sharing." not in p.name and p.name.split(".")[0] in _payload_types(kit)]
        self.made: collections.Counter[str] = collections.Counter()

    def next(self) -> tuple[str, bytes]:
        """``(ingress agency, bytes)``."""
        kind = self.rng.choices(list(GENERATORS), weights=list(GENERATORS.values()))[0]
        self.made[kind] += 1
        data = getattr(self, f"_{kind}")()
        while data in self.valid:  # a mutation that changed nothing
            data = self._bytes()
        agency = "la-camden" if self.rng.random() < 0.1 else "police-met"  # police bytes there: sender-mismatch
        return agency, data

    # -- generators ----------------------------------------------------------------------------

    def _bytes(self) -> bytes:
        rng = self.rng
        seed = rng.choice(self.seeds)
        data = bytearray(seed)
        while data == seed:  # some operations can leave it as it was
            data = self._mutated(data)
        return bytes(data)

    def _mutated(self, data: bytearray) -> bytearray:
        rng = self.rng
        for _ in range(rng.randrange(1, 9)):
            op, n = rng.randrange(9), len(data)
            i = rng.randrange(n + 1)
            if op == 0 and n:
                data[min(i, n - 1)] ^= 1 << rng.randrange(8)
            elif op == 1 and n:
                data[min(i, n - 1)] = rng.choice([rng.choice(B64), rng.choice(SPECIAL), rng.randrange(256)])
            elif op == 2:
                data[i:i] = bytes(rng.choice(B64 + SPECIAL) for _ in range(rng.randrange(1, 17)))
            elif op == 3:
                del data[i:i + rng.randrange(1, 64)]
            elif op == 4:
                data[i:i] = data[i:i + rng.randrange(1, 256)]
            elif op == 5:
                del data[i:]
            elif op == 6:
                other = rng.choice(self.seeds)
                data = data[:i] + other[rng.randrange(len(other) + 1):]
            else:
                parts = bytes(data).split(b".")
                if op == 7:
                    rng.shuffle(parts)
                else:
                    donor = rng.choice(self.seeds).split(b".")
                    parts[rng.randrange(len(parts))] = rng.choice(donor)
                data = bytearray(b".".join(parts))
        return data

    def _fresh(self) -> dict[str, Any]:
        """The template's claims under a new jti (so its payload, sealed for the template's, never opens)."""
        return {**copy.deepcopy(self.template), "jti": str(uuid.uuid4()), "iat": int(time.time())}

    def _claims(self) -> bytes:
        rng, claims = self.rng, self._fresh()
        for _ in range(rng.randrange(1, 4)):
            sharing = claims.get("sharing")
            target = sharing if isinstance(sharing, dict) and rng.random() < 0.3 else claims
            key = rng.choice([*target, "extra", "origin"])
            if rng.random() < 0.25:
                target.pop(key, None)
            else:
                target[key] = _value(rng)
        if claims.get("jti") == self.jti:
            claims["jti"] = str(uuid.uuid4())
        body = _dumps(claims)
        if rng.random() < 0.15:  # what a JSON library would not write: a duplicate member, NaN, garbage
            body = rng.choice([body.replace(b"{", b'{"iss":"la-camden",', 1), body.replace(b"1", b"NaN", 1),
                               body + b" x", body.replace(b'"', b"'", 2)])
        return signed(self.kit, valid_header(self.kit), body)

    def _header(self) -> bytes:
        rng = self.rng
        head = {"alg": rng.choice(["EdDSA", "none", "HS256", "RS256", "ES256", "EdDSA ", "", None]),
                "typ": rng.choice(["sg+jwt", "JWT", None, "SG+JWT"]),
                "kid": rng.choice([self.kit.police.identity.sig_kid, self.kit.kid("la-camden", "sig"),
                                   self.kit.kid("sg-broker", "sig"), self.kit.kid("sg-broker", "enc"),
                                   "../../" + self.kit.police.identity.sig_kid, None, 7])}
        for _ in range(rng.randrange(0, 3)):
            head[rng.choice(["crit", "b64", "jku", "jwk", "x5u", "x5c", "cty", "zip"])] = _value(rng)
        raw = _dumps({k: v for k, v in head.items() if v is not None})
        if raw == valid_header(self.kit) or rng.random() < 0.1:
            raw = raw[:-1] + b',"kid":"x"}'  # never the valid header: a duplicate kid at least
        return signed(self.kit, raw, orjson.dumps(self._fresh()))

    def _payload(self) -> bytes:
        rng = self.rng
        typ = rng.choice(self.types)
        doc = example(typ)
        for _ in range(rng.randrange(0, 4)):
            _mutate_json(rng, doc)
        breaker = rng.randrange(7)
        if breaker == 0:
            doc["sgbFuzz"] = _value(rng)  # every payload schema is closed at the top
        body = _dumps(doc)
        if breaker == 1:
            body = body[: rng.randrange(len(body))]
        elif breaker == 2:
            body = body[:-1] + b',"pad":' + b"[" * 40 + b"]" * 40 + b"}"
        elif breaker == 3:
            body = body[:-1] + b',"pad":"\\udc00"}'
        elif breaker == 4:
            body = body[:-1] + b',"pad":"\xff"}'
        elif breaker == 5:  # not an object
            body = b"[" + body + b"]" if rng.random() < 0.5 else _dumps([_value(rng)])
        elif breaker == 6:
            first = next(iter(doc), "x")
            body = body[:1] + b'"%s":1,' % first.encode() + body[1:]
        claims = self._fresh() | {"typ": typ.split(".")[0], "sharing": example(f"{typ.split('.')[0]}.sharing")}
        kid, suite, public = self.kit.registry.recipient_key("sg-broker", time.time())
        claims["payload"] = hpke.seal_payload(body, jti=claims["jti"], iss="police-met", typ=claims["typ"], ver=1,
                                              recipient="sg-broker", kid=kid, suite=suite, public_key=public).payload
        return signed(self.kit, valid_header(self.kit), orjson.dumps(claims))

    def _random(self) -> bytes:
        rng = self.rng
        size = rng.choice([0, 1, 16, 200, 2000, 20_000]) if rng.random() > 0.002 else 600_000  # past the limit
        shape = rng.randrange(3)
        if shape == 0:
            return rng.randbytes(size)
        if shape == 1:
            return b".".join(bytes(rng.choice(B64) for _ in range(size // 3 + 1)) for _ in range(3))
        return _dumps(_value(rng))


def _dumps(doc: Any) -> bytes:
    """Compact JSON of any size of integer (orjson stops at 64 bits)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _mutate_json(rng: random.Random, node: Any) -> None:
    """One random edit somewhere in a JSON document (in place)."""
    path: list[tuple[Any, Any]] = []
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append((node, key))
        node = node[key]
    if not path:
        return
    parent, key = path[-1]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[key]
    else:
        parent[key] = _value(rng)


def valid_header(kit: Kit) -> bytes:
    return orjson.dumps({"alg": "EdDSA", "typ": "sg+jwt", "kid": kit.police.identity.sig_kid})


def example(name: str) -> Any:
    return orjson.loads((EXAMPLES / f"{name}.example.json").read_bytes())


def _payload_types(kit: Kit) -> set[str]:
    return {name for name, _ in kit.police.catalogue.types}
