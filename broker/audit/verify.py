"""Checking the audit log: every block's signature, every record's link, every chain's order
and completeness against the signed checkpoints a verifier has seen.

What is reported, per instance chain:

``signature``  a block whose signature does not verify, or signed by a key that is not the broker's
``changed``    a record whose content no longer matches the hash its successor (or the block) holds
``removed``    records missing from the middle of a chain (a block or a record gone)
``inserted``   a block or record that does not belong (duplicate, forged, or moved between chains)
``reordered``  blocks or records stored out of their chain order
``truncated``  a chain shorter than a signed checkpoint says it was
``forked``     a checkpoint whose head does not match the record at that place in the chain
``unreadable`` a stored message that is not an audit block or checkpoint at all
``conflicting`` a record id written twice with different decisions
``tree``       a block whose stated Merkle tree (size, root, frontier) is not the tree of the records

Transparency checkpoints (``sg.audit.<instance>.tlog``, C2SP tlog-checkpoint notes) are checked
too: signed by one of the broker's keys under the chain's origin (else ``signature`` or
``inserted``), and their root the root of the chain's tree at their size, recomputed from the
records (else ``forked``; a size beyond the chain is ``truncated``). Blocks written before blocks
stated their tree are verified as before, and their records are still leaves of the tree.

A record written twice under its id with the same decision is a *repeat*, not a problem: a
message processed again after a crash (the pipeline is at-least-once; its outputs have
deterministic ids) records its decision again, in whichever chain processed it the second time.
The verifier counts repeats and the distinct records; the index and ``sgb audit list`` keep one.

The same :class:`Verifier` checks the live stream (``sgb audit verify``) and an export file
offline (``sgb audit verify --export FILE``), with only the broker's public keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from broker.audit import notes
from broker.audit.chain import BLOCK_TYP, GENESIS, canonical, decision_digest
from broker.audit.checkpoints import CHECKPOINT_TYP, broker_note_keys
from broker.audit.merkle import Frontier, leaf_hash
from broker.audit.tree import stated_frontier
from broker.config import AuditSettings
from broker.errors import InvalidEnvelope, Malformed
from broker.timestamps import at_of
from broker.wire import _crypto, jws
from broker.wire.registry import Registry


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    instance: str
    detail: str
    seq: int | None = None   # stream sequence (or export line) where it was seen
    record: int | None = None

    def __str__(self) -> str:
        where = f" at stream seq {self.seq}" if self.seq is not None else ""
        rec = f" record {self.record}" if self.record is not None else ""
        return f"{self.kind}: chain {self.instance}{rec}{where}: {self.detail}"


@dataclass(slots=True)
class _Block:
    seq: int
    block: int
    first: int
    count: int
    prev: str
    head: str
    signed: bool


@dataclass(slots=True)
class ChainReport:
    instance: str
    blocks: int = 0
    records: int = 0
    head: str = GENESIS
    checkpoint: dict[str, Any] | None = None
    checkpoint_token: bytes | None = None


@dataclass(slots=True)
class Report:
    chains: dict[str, ChainReport] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    blocks: int = 0
    records: int = 0
    checkpoints: int = 0
    tlog_checkpoints: int = 0
    repeats: int = 0   # records written again under an id already seen, with the same decision

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "blocks": self.blocks, "records": self.records, "checkpoints": self.checkpoints,
            "tlogCheckpoints": self.tlog_checkpoints,
            "repeats": self.repeats, "distinctRecords": self.records - self.repeats,
            "chains": {c.instance: {"blocks": c.blocks, "records": c.records, "head": c.head} for c in
                       self.chains.values()},
            "problems": [{"kind": p.kind, "chain": p.instance, "seq": p.seq, "record": p.record, "detail": p.detail}
                         for p in self.problems],
        }


def broker_keys(registry: Registry) -> Callable[[str, float], _crypto.VerifyKey | None]:
    """Key lookup for audit tokens: only the broker's own signing keys, valid at the time signed.
    Read from the registry at each call, so a reload (a rotated broker key) is seen at once."""

    def lookup(kid: str, when: float) -> _crypto.VerifyKey | None:
        key = next((k for k in registry.broker.keys if k.kid == kid and k.use == "sig"), None)
        return _crypto.verify_key_from_bytes(key.x) if key is not None and key.valid_at(when) else None

    return lookup


def broker_public_keys(registry: Registry) -> Callable[[], list[bytes]]:
    """The broker's Ed25519 signing keys (raw), read at each call: they sign transparency checkpoints."""
    return lambda: [k.x for k in registry.broker.keys if k.use == "sig"]


class Verifier:
    """Feed it stored messages in stream order, then :meth:`finish`."""

    def __init__(self, keys: Callable[[str, float], _crypto.VerifyKey | None],
                 on_record: Callable[[dict[str, Any]], None] | None = None, *,
                 note_keys: Callable[[], Iterable[bytes]] = tuple,
                 tlog_origin: str = AuditSettings().tlog_origin, keep_states: bool = False) -> None:
        self._keys = keys
        self._resumed: dict[str, tuple[int, int, str]] = {}  # instance -> (next block, size, head) trusted
        self._keep_states = keep_states
        self.states: dict[str, dict[int, dict[str, Any]]] = {}  # instance -> size -> the chain after a block
        self._note_keys = note_keys
        self._origin = tlog_origin
        self._trees: dict[str, Frontier | None] = {}
        self._roots: dict[str, dict[int, bytes]] = {}  # the tree's root after each block
        self._tlogs: list[tuple[int | None, str, int, bytes]] = []
        self._blocks: dict[str, list[_Block]] = {}
        self._checkpoints: list[tuple[int | None, dict[str, Any], bytes]] = []
        self._ends: dict[str, dict[int, str]] = {}
        self._decisions: dict[str, str] = {}  # record id -> the decision first recorded under it
        self._on_record = on_record
        self.report = Report()

    def resume(self, instance: str, *, block: int, size: int, head: str, frontier: Iterable[bytes]) -> None:
        """Start ``instance``'s chain from a trusted point instead of genesis: its blocks from ``block``
        on (``size`` records before them, the last hashing to ``head``), its tree from ``frontier``."""
        tree = Frontier(frontier, size)
        self._trees[instance] = tree
        self._roots[instance] = {size: tree.root()}
        self._resumed[instance] = (block, size, head)
        self.report.chains[instance] = ChainReport(instance, records=size, head=head)
        self.states[instance] = {size: {"block": block, "size": size, "head": head, "root": tree.root().hex(),
                                        "frontier": [h.hex() for h in tree.hashes], "seq": None}}

    def _problem(self, kind: str, instance: str, detail: str, seq: int | None = None,
                 record: int | None = None) -> None:
        self.report.problems.append(Problem(kind, instance, detail, seq, record))

    def block(self, seq: int, subject: str, token: bytes) -> None:
        self.report.blocks += 1
        try:  # read once: the signature is checked below, the records whatever it says
            signed_token = jws.parse(token)
            claims = signed_token.claims()
            instance = str(claims["instance"])
            block, first, count = int(claims["block"]), int(claims["first"]), int(claims["count"])
            prev, head, records = str(claims["prev"]), str(claims["head"]), claims["records"]
            if not isinstance(records, list):
                raise TypeError
        except (Malformed, KeyError, TypeError, ValueError):
            self._problem("unreadable", subject.removeprefix("sg.audit."), "not an audit block", seq)
            return
        if signed_token.header.get("typ") != BLOCK_TYP:
            self._problem("inserted", instance, "a message that is not an audit block", seq)
            return
        signed = True
        try:
            signed_token.verified_by(self._keys, at_of(claims), BLOCK_TYP)
        except InvalidEnvelope as exc:
            signed = False
            self._problem("signature", instance, f"block {block}: {exc}", seq)
        if not subject.endswith(f".{instance}"):
            self._problem("inserted", instance, f"block {block} stored on another chain's subject ({subject})", seq)
            return
        # record by record: say which record is wrong, whatever the signature says
        h, leaves = prev, []
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                self._problem("unreadable", instance, f"block {block} item {i} is not a record", seq)
                break
            n = record.get("n")
            if n != first + i:
                kind = "removed" if isinstance(n, int) and n > first + i else (
                    "reordered" if isinstance(n, int) and first <= n < first + count else "inserted")
                self._problem(kind, instance, f"block {block} position {i} holds record {n}", seq, first + i)
                break
            if record.get("prev") != h:
                self._problem("changed", instance, "the record before it no longer matches its hash", seq, n - 1)
                break
            data = canonical(record)
            h = hashlib.sha256(data).hexdigest()
            leaves.append(leaf_hash(data))
            if signed:
                self._once(instance, record, seq)
                if self._on_record is not None:
                    self._on_record(record)
        else:
            self._tree(instance, block, first, leaves, claims.get("tree"), seq)
            if len(records) != count:
                self._problem("removed" if len(records) < count else "inserted", instance,
                              f"block {block} holds {len(records)} records, signed for {count}", seq)
            elif h != head:
                self._problem("changed", instance, "the last record of the block no longer matches its hash", seq,
                              first + count - 1)
            elif self._keep_states and (tree := self._trees.get(instance)) is not None and tree.size == first + count:
                self.states.setdefault(instance, {})[tree.size] = {
                    "block": block + 1, "size": tree.size, "head": head, "root": tree.root().hex(),
                    "frontier": [x.hex() for x in tree.hashes], "seq": seq}
        self.report.records += len(records)
        self._blocks.setdefault(instance, []).append(_Block(seq, block, first, count, prev, head, signed))

    def _tree(self, instance: str, block: int, first: int, leaves: list[bytes], stated: object,
              seq: int) -> None:
        """Carry the chain's tree over the block's records; check the tree the block states."""
        tree = self._trees.get(instance)
        if tree is None or tree.size != first:  # the first block, or one the tree cannot follow to
            tree = Frontier() if first == 0 else None
        if tree is not None:
            for leaf in leaves:
                tree.append(leaf)
        if stated is not None:
            if tree is None:  # an export's slice, or after a gap (reported): take the signed statement
                frontier = stated_frontier(stated, first + len(leaves))
                tree = None if frontier is None else Frontier(frontier, first + len(leaves))
            elif not (isinstance(stated, dict) and stated.get("size") == tree.size
                      and stated.get("root") == tree.root().hex()
                      and stated.get("frontier") == [h.hex() for h in tree.hashes]):
                self._problem("tree", instance, f"block {block} states a Merkle tree that is not the tree of "
                              f"the records", seq, first)
        self._trees[instance] = tree
        if tree is not None:
            self._roots.setdefault(instance, {})[tree.size] = tree.root()

    def tlog(self, seq: int | None, subject: str, note: bytes) -> None:
        """A transparency checkpoint stored on ``sg.audit.<instance>.tlog``."""
        instance = subject.removeprefix("sg.audit.").removesuffix(".tlog")
        origin = f"{self._origin}/{instance}"
        try:
            checkpoint = notes.open_checkpoint(note, origin=origin,
                                               log_keys=broker_note_keys(origin, list(self._note_keys()))).checkpoint
        except notes.WrongOrigin:
            self._problem("inserted", instance, "a transparency checkpoint of another log", seq)
        except (notes.UnverifiedNote, notes.BadSignature) as exc:
            self._problem("signature", instance, f"transparency checkpoint: {exc}", seq)
        except notes.NoteError as exc:
            self._problem("unreadable", instance, f"a transparency checkpoint that cannot be read ({exc})", seq)
        else:
            self.report.tlog_checkpoints += 1
            self._tlogs.append((seq, instance, checkpoint.size, checkpoint.root_hash))

    def _once(self, instance: str, record: dict[str, Any], seq: int) -> None:
        rid = record.get("id")
        if not isinstance(rid, str):
            return
        decision = decision_digest(record)
        first = self._decisions.get(rid)
        if first is None:
            self._decisions[rid] = decision
        elif first == decision:
            self.report.repeats += 1
        else:
            self._problem("conflicting", instance, f"record id {rid} was recorded before with another decision",
                          seq, record.get("n"))

    def checkpoint(self, seq: int | None, token: bytes, *, source: str = "stream") -> None:
        try:
            signed = jws.parse(token)
            claims = signed.claims()
            instance = str(claims["instance"])
        except (Malformed, KeyError):
            self._problem("unreadable", "?", f"a {source} checkpoint that cannot be read", seq)
            return
        try:
            signed.verified_by(self._keys, at_of(claims), CHECKPOINT_TYP)
        except InvalidEnvelope as exc:
            self._problem("signature", instance, f"{source} checkpoint: {exc}", seq)
            return
        self.report.checkpoints += 1
        self._checkpoints.append((seq, claims, token))

    def finish(self, *, partial: bool = False) -> Report:
        """``partial``: the blocks are a slice (an export), so a chain may start after genesis."""
        for instance, blocks in self._blocks.items():
            self._check_chain(instance, blocks, partial=partial)
        for seq, cp, token in self._checkpoints:
            self._check_checkpoint(seq, cp, token, partial=partial)
        for seq, instance, size, root in self._tlogs:
            self._check_tlog(seq, instance, size, root, partial=partial)
        return self.report

    def _check_tlog(self, seq: int | None, instance: str, size: int, root: bytes, *, partial: bool) -> None:
        tree = self._roots.get(instance, {}).get(size)
        records = self.report.chains[instance].records if instance in self.report.chains else 0
        if tree is not None:
            if tree != root:
                self._problem("forked", instance, f"the transparency checkpoint of size {size} has another root "
                              f"than the tree of the chain's records", seq, size - 1)
        elif partial:
            return  # an export holds a slice: the tree at that size may be outside it
        elif size > records:
            self._problem("truncated", instance, f"a transparency checkpoint counts {size} records; the chain "
                          f"holds {records}", seq, records)
        else:
            self._problem("forked", instance, f"the transparency checkpoint of size {size} names a tree the "
                          f"chain's blocks never had", seq, size - 1)

    def _check_chain(self, instance: str, blocks: list[_Block], *, partial: bool) -> None:
        chain = self.report.chains.setdefault(instance, ChainReport(instance))
        seen: dict[int, _Block] = {}
        for index, b in enumerate(blocks):
            if b.block in seen:
                self._problem("inserted", instance, f"block {b.block} appears twice (first at seq "
                              f"{seen[b.block].seq})", b.seq)
                continue
            if index and b.block < blocks[index - 1].block:
                self._problem("reordered", instance, f"block {b.block} is stored after block "
                              f"{blocks[index - 1].block}", b.seq)
            seen[b.block] = b
        ordered = sorted(seen.values(), key=lambda b: b.block)
        if not ordered:
            return
        expected_block, expected_first, head = self._resumed.get(instance) or (
            (ordered[0].block, ordered[0].first, ordered[0].prev) if partial else (0, 0, GENESIS))
        for b in ordered:
            if b.block > expected_block:
                self._problem("removed", instance, f"blocks {expected_block}..{b.block - 1} (records "
                              f"{expected_first}..{b.first - 1}) are missing", b.seq, expected_first)
            elif b.prev != head:
                self._problem("changed" if b.signed else "inserted", instance,
                              f"block {b.block} does not continue the chain from the block before it", b.seq,
                              b.first)
            expected_block, expected_first, head = b.block + 1, b.first + b.count, b.head
        chain.blocks, chain.records, chain.head = len(ordered), expected_first, head
        self._ends[instance] = {b.first + b.count: b.head for b in ordered}

    def _check_checkpoint(self, seq: int | None, cp: dict[str, Any], token: bytes, *, partial: bool) -> None:
        instance, count, head = str(cp["instance"]), int(cp["count"]), str(cp["head"])
        chain = self.report.chains.setdefault(instance, ChainReport(instance))
        if chain.checkpoint is None or count >= int(chain.checkpoint["count"]):
            chain.checkpoint, chain.checkpoint_token = cp, token
        ends = self._ends.get(instance, {})
        if count > chain.records:
            if partial:
                return  # an export holds a slice: a later checkpoint may be outside it
            self._problem("truncated", instance, f"a checkpoint signed at {cp['at']} counts {count} records; "
                          f"the chain holds {chain.records}", seq, chain.records)
        elif count in ends and ends[count] != head:
            self._problem("forked", instance, f"the checkpoint signed at {cp['at']} has a different head at "
                          f"record {count - 1}", seq, count - 1)

