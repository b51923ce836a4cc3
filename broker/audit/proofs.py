"""Proof bundles and consistency proofs from the audit stream (issue 16; docs/transparency.md).

Each instance chain's tree is built again by reading the chain (records in block order, leaf ``i``
the canonical bytes of record ``n = i``); its transparency checkpoints are the notes on
``sg.audit.<instance>.tlog`` that the broker's key signed, each replaced by the same checkpoint
from ``sg.audit.<instance>.cosigned`` where the witnesses cosigned it, so that bundles and
consistency proofs carry their cosignatures. :mod:`broker.audit.offline` checks what this writes,
with keys (and witnesses) the checker trusts.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from broker.audit import notes, offline
from broker.audit.chain import block_records, is_block, is_cosigned, is_tlog, read_stream
from broker.audit.checkpoints import broker_note_keys
from broker.audit.merkle import MerkleTree
from broker.audit.tree import record_bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class Signed:
    """A transparency checkpoint the broker's key signed: the note as stored, the keys that verify it;
    ``cosigned`` when the note is the one with the witnesses' lines."""

    checkpoint: notes.Checkpoint
    note: str
    keys: list[str]
    cosigned: bool = False

    def entry(self, instance: str) -> dict[str, str]:
        return {"instance": instance, "note": self.note}


@dataclass
class Chain:
    records: list[dict[str, Any]] = field(default_factory=list)
    tree: MerkleTree = field(default_factory=MerkleTree)
    signed: dict[int, Signed] = field(default_factory=dict)  # by size

    def latest(self, covering: int = 0) -> Signed | None:
        """The largest signed checkpoint whose root is this chain's tree at its size; the largest
        cosigned one instead if it covers the first ``covering`` records, since the latest may not be
        cosigned yet (a subject access forces one just before it reads)."""
        good = [s for size, s in self.signed.items()
                if size <= self.tree.size and self.tree.root(size) == s.checkpoint.root_hash]
        cosigned = [s for s in good if s.cosigned and s.checkpoint.size >= covering]
        return max(cosigned or good, key=lambda s: s.checkpoint.size, default=None)


def open_signed(data: bytes, origin: str, public_keys: list[bytes]) -> Signed:
    """A checkpoint note of ``origin`` signed by one of the broker's keys (NoteError if not)."""
    opened = notes.open_checkpoint(data, origin=origin, log_keys=broker_note_keys(origin, public_keys))
    return Signed(opened.checkpoint, data.decode("utf-8"), [str(v.key) for v in opened.note.verified])


async def read_chains(js: JetStreamContext, tlog_origin: str, public_keys: list[bytes]) -> dict[str, Chain]:
    """Every instance chain's records, tree and signed transparency checkpoints, from the audit stream;
    a checkpoint the witnesses cosigned as its cosigned note."""
    chains: dict[str, Chain] = {}
    tlogs: list[tuple[str, bytes]] = []
    cosigned: list[tuple[str, bytes]] = []
    async for stored in read_stream(js):
        instance = stored.subject.removeprefix("sg.audit.")
        if is_tlog(stored.subject):
            tlogs.append((instance.removesuffix(".tlog"), stored.data))
        elif is_cosigned(stored.subject):
            cosigned.append((instance.removesuffix(".cosigned"), stored.data))
        elif is_block(stored.subject):
            chain = chains.setdefault(instance, Chain())
            for record in block_records(stored.data):
                if record.get("n") == chain.tree.size:
                    chain.records.append(record)
                    chain.tree.append(offline.leaf_hash(record_bytes(record)))
    for instance, data in tlogs:
        try:
            signed = open_signed(data, f"{tlog_origin}/{instance}", public_keys)
        except notes.NoteError:
            continue  # sgb audit verify names it
        chains.setdefault(instance, Chain()).signed.setdefault(signed.checkpoint.size, signed)
    for instance, data in cosigned:
        try:
            signed = open_signed(data, f"{tlog_origin}/{instance}", public_keys)
        except notes.NoteError:
            continue  # one the log did not sign is no checkpoint of it
        stored_as = chains.setdefault(instance, Chain()).signed
        kept = stored_as.setdefault(signed.checkpoint.size, signed)
        if kept.checkpoint == signed.checkpoint:  # the same tree: every round's witnesses' lines in one note
            signed.note, signed.cosigned = _merged(kept.note, signed.note), True
            stored_as[signed.checkpoint.size] = signed
    return chains


def _merged(kept: str, new: str) -> str:
    """The note ``kept`` with the signature lines of ``new`` (the same text) by keys it lacks: each
    round of asking the witnesses stores that round's lines only, and a quorum may span rounds."""
    a, b = notes.parse_note(kept), notes.parse_note(new)
    lines: dict[tuple[str, int], notes.Signature] = {}
    for line in (*a.signatures, *b.signatures):
        lines.setdefault((line.name, line.key_id), line)  # one line a key: the first round's
    return str(notes.Note(a.text, tuple(lines.values())[:notes.MAX_SIGNATURES]))


def prove(chains: dict[str, Chain], query: str | Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The ``sgb-audit-proof/1`` bundle of every record whose id or message is ``query`` (one id, or
    a list of them: a subject access's messages), and the records (``<instance>#<n>``) no checkpoint
    covers yet, left out of it."""
    wanted = {query} if isinstance(query, str) else set(query)
    records: list[dict[str, Any]] = []
    checkpoints: list[dict[str, str]] = []
    keys: set[str] = set()
    pending: list[str] = []
    for instance, chain in sorted(chains.items()):
        matching = [r for r in chain.records if r.get("id") in wanted or r.get("message") in wanted]
        latest = chain.latest(max((r["n"] + 1 for r in matching), default=0))
        if matching and latest is not None:
            checkpoints.append(latest.entry(instance))
            keys.update(latest.keys)
        for record in matching:
            n, size = record["n"], latest.checkpoint.size if latest else 0
            if n >= size:
                pending.append(f"{instance}#{n}")
                continue
            records.append({"id": record.get("id"), "message": record.get("message"), "instance": instance,
                            "index": n, "record": _b64(record_bytes(record)), "checkpoint": len(checkpoints) - 1,
                            "proof": [_b64(h) for h in chain.tree.inclusion_proof(n, size)]})
    bundle = {"format": offline.BUNDLE_FORMAT, "query": query if isinstance(query, str) else sorted(wanted),
              "records": records, "checkpoints": checkpoints,
              "keys": sorted(keys)}
    return bundle, pending


def consistency(chain: Chain, instance: str, old: Signed, new: Signed) -> dict[str, Any]:
    """The ``sgb-audit-consistency/1`` proof that ``new`` extends ``old``, from the chain's tree as read."""
    size = min(new.checkpoint.size, chain.tree.size)
    proof = chain.tree.consistency_proof(min(old.checkpoint.size, size), size)
    return {"format": offline.CONSISTENCY_FORMAT, "instance": instance, "old": old.entry(instance),
            "new": new.entry(instance), "proof": [_b64(h) for h in proof]}
