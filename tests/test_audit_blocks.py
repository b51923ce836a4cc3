"""Audit blocks as the chain writes them now (each record serialised once, the block signed by
:func:`jws.sign_serialised`) against blocks as PyJWT wrote them before: the same claims, and a
chain that holds both kinds verifies, so chains written before still do. No NATS: the verifier
is fed the blocks as the stream would give them."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.chain import BLOCK_TYP, GENESIS, Head, build_block, record_hash
from broker.audit.merkle import MerkleTree, leaf_hash
from broker.audit.verify import Verifier
from broker.identity.keys import Identity
from broker.timestamps import iso
from broker.wire import _crypto, jws

_IDENTITY = Identity("sg-broker", "sg-broker-sig-1", _crypto.new_signing_key(), {})


def _keys(kid: str, when: float) -> _crypto.VerifyKey | None:
    return _IDENTITY.signing_key.public_key() if kid == _IDENTITY.sig_kid else None


def _pyjwt_block(records: Sequence[Mapping[str, Any]], head: Head, now: float) -> tuple[bytes, Head]:
    """A block as the chain wrote it before: records linked in insertion order, hashed over their
    canonical JSON, the claims serialised again by PyJWT's ``json.dumps`` (ASCII escapes)."""
    chained, h, n = [], head.hash, head.count
    for record in records:
        linked = dict(record) | {"n": n, "prev": h}
        h = hashlib.sha256(orjson.dumps(linked, option=orjson.OPT_SORT_KEYS)).hexdigest()
        chained.append(linked)
        n += 1
    claims = {"typ": "audit-block", "iss": _IDENTITY.id, "instance": "test-1", "block": head.blocks,
              "first": head.count, "count": len(chained), "prev": head.hash, "head": h, "at": iso(now),
              "records": chained}
    token = jwt.encode(claims, _IDENTITY.signing_key, algorithm="EdDSA",
                       headers={"kid": _IDENTITY.sig_kid, "typ": BLOCK_TYP})
    return token.encode(), Head(head.blocks + 1, head.count + len(chained), h, head.seq)


_RECORDS = st.lists(st.fixed_dictionaries(
    {"v": st.just(1), "id": st.uuids().map(str), "event": st.sampled_from(["received", "shared", "rejected"]),
     "message": st.uuids().map(str)},
    optional={"reason": st.text(max_size=30), "rules": st.lists(st.text(max_size=8), max_size=3),
              "ingressSeq": st.integers(0, 2**40), "flags": st.lists(st.sampled_from(["urgent", "late"]))}),
    min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(first=_RECORDS, second=_RECORDS, old_first=st.booleans())
def test_blocks_written_now_and_before_hold_the_same_and_chain_together(
        first: list[dict[str, Any]], second: list[dict[str, Any]], old_first: bool) -> None:
    now = 1767603600.0
    new, head = build_block(first, Head(), _IDENTITY, "test-1", now)
    old, old_head = _pyjwt_block(first, Head(), now)
    assert _place(head) == _place(old_head) and old_head.frontier == ()  # the new head knows its tree too
    new_claims = jws.verify_typed(new, BLOCK_TYP, _keys)
    tree = new_claims.pop("tree")  # blocks now state their tree (broker/audit/tree.py); the rest is as before
    assert new_claims == jws.verify_typed(old, BLOCK_TYP, _keys)
    assert tree["size"] == len(first) and tree["root"] == _root(new_claims["records"]).hex()

    # the bytes each record was hashed by are the bytes the block carries
    segment = new.split(b".")[1]
    body = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))  # the signed claims, as stored
    h = GENESIS
    for record in jws.verify_typed(new, BLOCK_TYP, _keys)["records"]:
        assert record["prev"] == h and orjson.dumps(record, option=orjson.OPT_SORT_KEYS) in body
        h = record_hash(record)
    assert h == head.hash

    # a chain whose blocks were written either way verifies whole
    then = _built(second, head, now + 1)[0] if old_first else _pyjwt_block(second, head, now + 1)[0]
    verifier = Verifier(_keys)
    for seq, token in enumerate([old if old_first else new, then], 1):
        verifier.block(seq, "sg.audit.test-1", token)
    report = verifier.finish()
    assert report.ok, report.problems
    assert report.records == len(first) + len(second)


def _place(head: Head) -> tuple[int, int, str, int]:
    return head.blocks, head.count, head.hash, head.seq


def _root(records: Sequence[Mapping[str, Any]]) -> bytes:
    return MerkleTree(leaf_hash(orjson.dumps(r, option=orjson.OPT_SORT_KEYS)) for r in records).root()


def _built(records: Sequence[Mapping[str, Any]], head: Head, now: float) -> tuple[bytes, Head]:
    return build_block(records, head, _IDENTITY, "test-1", now)
