"""The offline verifier of the audit log's proofs (issue 16; docs/transparency.md, "The offline verifier").

The standard library and ``cryptography`` only, with :mod:`broker.audit.signednote` and nothing
else of the broker: ``sgb audit verifier`` packs the two into one file, ``sgb-verify.pyz``, that an
auditor runs as ``python sgb-verify.pyz FILE --key VKEY [--witness VKEY --quorum N]``. The one home
of RFC 9162 inclusion and consistency checks (:mod:`broker.audit.merkle` builds trees and proofs) and
of checking a proof bundle or a consistency proof, and with ``--witness`` that each checkpoint carries
a quorum of trusted witnesses' cosignatures. Error messages are fixed text naming at most a key, a
size or an index, never a record or note line.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
import tempfile
import zipapp
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from broker.audit.signednote import (
    Checkpoint,
    CosignatureKey,
    NoteError,
    UnverifiedNote,
    VerifierKey,
    WrongOrigin,
    open_checkpoint,
    parse_note,
)

__all__ = ["BUNDLE_FORMAT", "CONSISTENCY_FORMAT", "EMPTY_ROOT", "HASH_SIZE", "NODE_PREFIX", "CosignatureKey",
           "VerifierKey", "Witnesses", "build_verifier", "check_bundle", "check_consistency", "check_file", "leaf_hash",
           "main", "open_checkpoint", "verify_consistency", "verify_inclusion"]

BUNDLE_FORMAT: Final = "sgb-audit-proof/1"
CONSISTENCY_FORMAT: Final = "sgb-audit-consistency/1"
HASH_SIZE: Final = 32
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""MTH({}): the root of the empty tree is the hash of the empty string (RFC 9162 2.1.1)."""

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """MTH of one entry: SHA-256(0x00 || data). The prefix keeps a leaf from passing as a node."""
    return _sha256(LEAF_PREFIX + data).digest()


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``proof`` shows leaf ``index`` of the tree of ``size`` leaves with ``root`` to be
    ``leaf_hash``: RFC 9162 2.1.3.2 step by step (pure; standard library only)."""
    if not 0 <= index < size:  # 1. the index must be inside the tree
        return False
    if len(leaf_hash) != HASH_SIZE:  # else a one-leaf "tree" would accept any bytes equal to the root
        return False
    fn, sn = index, size - 1  # 2.
    r = leaf_hash  # 3.
    for p in proof:  # 4.
        if sn == 0:  # a. more hashes than the tree has levels
            return False
        if fn & 1 or fn == sn:  # b. p is a left sibling (or we are on the right edge)
            r = _sha256(NODE_PREFIX + p + r).digest()
            while fn and not fn & 1:  # the right edge: skip the levels where r has no sibling
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(NODE_PREFIX + r + p).digest()
        fn >>= 1  # c.
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)  # 5.


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes,
                       new_root: bytes) -> bool:
    """Whether ``proof`` shows the tree (``new_size``, ``new_root``) to extend (``old_size``, ``old_root``):
    RFC 9162 2.1.4.2 step by step for 0 < old < new. Otherwise, as C2SP tlog-witness: the proof is empty,
    an equal size needs equal roots, size 0 the empty tree's root (consistent with every tree)."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == 0:
        return not proof and hmac.compare_digest(old_root, EMPTY_ROOT) and (
            new_size > 0 or hmac.compare_digest(new_root, EMPTY_ROOT))
    if old_size == new_size:
        return not proof and hmac.compare_digest(old_root, new_root)
    if not proof:  # 1.
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # 2. a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # 3.
    while fn & 1:  # 4.
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # 5.
    for c in path[1:]:  # 6.
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            fr = _sha256(NODE_PREFIX + c + fr).digest()
            sr = _sha256(NODE_PREFIX + c + sr).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(NODE_PREFIX + sr + c).digest()
        fn >>= 1  # c.
        sn >>= 1
    return hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root) and sn == 0  # 7.


def _b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class Witnesses:
    """The witnesses the checker trusts (cosignature/v1 keys) and how many of them must have cosigned
    each checkpoint: without them a checkpoint is the log's word alone (docs/transparency.md)."""

    keys: tuple[CosignatureKey, ...] = ()
    quorum: int = 0

    def __post_init__(self) -> None:
        # one public key under two names is one witness: a cosignature does not sign the key's name
        if len({k.public_key for k in self.keys}) != len(self.keys) or (
                1 <= self.quorum <= len(self.keys)) != bool(self.keys):
            raise ValueError("the quorum is between 1 and the number of (distinct) witnesses, or 0 without them")


def _when(timestamp: int | None) -> str:
    """A cosignature's time, readable; a time past the calendar's years stays a number."""
    try:
        return datetime.fromtimestamp(timestamp or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return f"unix time {timestamp}"


def _open(entry: Any, trusted: Sequence[VerifierKey], what: str,
          witnesses: Witnesses = Witnesses()) -> tuple[str, Checkpoint, str | None]:
    """A checkpoint entry ``{"instance", "note"}``: signed by a trusted key, of that instance's log, and
    cosigned by the quorum of ``witnesses`` (then also the line naming them and their times)."""
    instance, note = (entry.get("instance"), entry.get("note")) if isinstance(entry, dict) else (None, None)
    if not isinstance(instance, str) or not isinstance(note, str):
        raise NoteError(f"{what} is not an object with an instance and a note")
    origin = Checkpoint.parse(parse_note(note).text).origin
    if not origin.endswith("/" + instance):
        raise WrongOrigin(f"{what} is not of the log of its instance")
    signed = open_checkpoint(note, origin=origin, log_keys=trusted, witness_keys=witnesses.keys)
    if not witnesses.keys:
        return instance, signed.checkpoint, None
    cosigned = signed.cosignatures  # one a trusted key, and Witnesses holds each public key once
    said = (f"size {signed.checkpoint.size} of {origin}: cosigned by {len(cosigned)} of the {len(witnesses.keys)} "
            "trusted witnesses")
    if len(cosigned) < witnesses.quorum:
        raise UnverifiedNote(f"{said}, fewer than the quorum of {witnesses.quorum}")
    by = ", ".join(f"{v.key.name}+{v.key.key_id:08x} at {_when(v.timestamp)}" for v in cosigned)
    return instance, signed.checkpoint, f"{what}, {said} (quorum {witnesses.quorum}): {by}"


def check_bundle(bundle: Any, trusted: Sequence[VerifierKey],
                 witnesses: Witnesses = Witnesses()) -> tuple[list[str], list[str]]:
    """A proof bundle against trusted keys only: each checkpoint's signature (and with ``witnesses``
    its quorum of cosignatures), each record's claims (id, message, index, instance, the query) and
    its inclusion proof. Returns what holds and what fails."""
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        return [], [f"not a {BUNDLE_FORMAT} bundle"]
    held: list[str] = []
    failed: list[str] = []
    checkpoints: dict[int, tuple[str, Checkpoint]] = {}
    entries = bundle.get("checkpoints")
    for i, entry in enumerate(entries if isinstance(entries, list) else ()):
        try:
            instance, cp, cosigned = _open(entry, trusted, f"checkpoint {i}", witnesses)
        except NoteError as exc:
            failed.append(f"checkpoint {i}: {exc}")
            continue
        checkpoints[i] = instance, cp
        if cosigned is not None:
            held.append(cosigned)
    query = bundle.get("query")  # one id, or a list of them (a subject access's messages)
    wanted = {query} if isinstance(query, str) else {q for q in query if isinstance(q, str)} if isinstance(
        query, list) else set()
    records = bundle.get("records")
    if not isinstance(records, list) or not records:
        failed.append("the bundle holds no record")
    for i, entry in enumerate(records if isinstance(records, list) else ()):
        try:
            raw = _b64(entry["record"])
            record = json.loads(raw)
            claims = (record.get("id"), record.get("message"), record.get("n"))
            proof = [_b64(h) for h in entry["proof"]]
        except (KeyError, TypeError, ValueError, AttributeError):
            failed.append(f"record {i}: malformed (not base64 JSON with an id, or its proof)")
            continue
        if not isinstance(entry.get("checkpoint"), int) or entry["checkpoint"] not in checkpoints:
            failed.append(f"record {i}: its checkpoint is missing or does not verify")
            continue
        instance, cp = checkpoints[entry["checkpoint"]]
        if (claims != (entry.get("id"), entry.get("message"), entry.get("index")) or type(claims[2]) is not int
                or instance != entry.get("instance")):
            failed.append(f"record {i}: the record is not the one its entry names (id, message, index, instance)")
        elif not any(isinstance(c, str) and c in wanted for c in claims[:2]):
            failed.append(f"record {i}: neither its id nor its message is (in) the bundle's query")
        elif not verify_inclusion(leaf_hash(raw), claims[2], cp.size, proof, cp.root_hash):
            failed.append(f"record {i}: its inclusion proof does not lead to the root of checkpoint size {cp.size}")
        else:
            held.append(f"record {claims[0]}: leaf {claims[2]} of {instance}'s tree of size {cp.size}")
    return held, failed


def check_consistency(doc: Any, trusted: Sequence[VerifierKey],
                      witnesses: Witnesses = Witnesses()) -> tuple[list[str], list[str]]:
    """A consistency proof: both checkpoints signed by a trusted key (and with ``witnesses`` cosigned
    by their quorum), of one log, the newer extending the older."""
    if not isinstance(doc, dict) or doc.get("format") != CONSISTENCY_FORMAT:
        return [], [f"not a {CONSISTENCY_FORMAT} proof"]
    opened: list[tuple[str, Checkpoint, str | None]] = []
    failed: list[str] = []
    for side in ("old", "new"):
        try:
            opened.append(_open(doc.get(side), trusted, f"the {side} checkpoint", witnesses))
        except NoteError as exc:
            failed.append(f"the {side} checkpoint: {exc}")
    try:
        proof = [_b64(h) for h in doc["proof"]]
    except (KeyError, TypeError, ValueError):
        failed.append("the consistency proof is malformed")
    if failed:
        return [], failed
    (_, old, old_cosigned), (_, new, new_cosigned) = opened
    if old.origin != new.origin:
        return [], ["the two checkpoints are of different logs"]
    if not verify_consistency(old.size, new.size, proof, old.root_hash, new.root_hash):
        return [], [f"the tree of size {new.size} does NOT extend the tree of size {old.size}: a forked history"]
    cosigned = [line for line in (old_cosigned, new_cosigned) if line is not None]
    return [*cosigned, f"the tree of size {new.size} of {new.origin} extends the tree of size {old.size}"], []


def _vkeys(values: Sequence[str]) -> list[str]:
    """Each value a vkey, or a file of them, one a line (a vkey always holds '+', a path need not)."""
    return [k for v in values for k in (Path(v).read_text().split() if "+" not in v and Path(v).is_file() else [v])]


def _witnesses(values: Sequence[str], quorum: int | None) -> Witnesses:
    """``--witness`` keys (type 0x04 only) and ``--quorum`` (default 1 with any witness)."""
    keys: list[CosignatureKey] = []
    for vkey in dict.fromkeys(_vkeys(values)):
        try:
            keys.append(CosignatureKey.parse(vkey))
        except NoteError as exc:
            raise NoteError(f"--witness {vkey.split('+')[0]} is not a witness's cosignature key (cosignature/v1, "
                            f"type 0x04; a log's key goes to --key): {exc}") from None
    if len({k.public_key for k in keys}) != len(keys):
        raise NoteError("two --witness keys are one public key under two names: one witness, counted once")
    if quorum is not None and not 1 <= quorum <= len(keys):
        raise NoteError(f"--quorum {quorum} is not between 1 and the number of --witness keys ({len(keys)})")
    return Witnesses(tuple(keys), (1 if quorum is None else quorum) if keys else 0)


def check_file(path: str, keys: Sequence[str], witnesses: Sequence[str] = (), quorum: int | None = None) -> int:
    """Check a bundle or consistency proof and print a line per result: 0 all holds, 1 not, 2 cannot check.
    Each key or witness is a verifier key or a file of them, one a line."""
    try:
        trusted = [VerifierKey.parse(k) for k in _vkeys(keys)]
        cosigners = _witnesses(witnesses, quorum)
        doc = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"cannot check {path}: {exc if isinstance(exc, NoteError) else type(exc).__name__}", file=sys.stderr)
        return 2
    if not trusted:
        print("no trusted key given (--key): the keys inside a bundle are not trusted on their own", file=sys.stderr)
        return 2
    consistency = isinstance(doc, dict) and doc.get("format") == CONSISTENCY_FORMAT
    held, failed = (check_consistency if consistency else check_bundle)(doc, trusted, cosigners)
    return report(held, failed, "" if cosigners.keys else "the checkpoints' witness cosignatures were not checked "
                  "(no --witness): they are the log's word alone")


def report(held: Sequence[str], failed: Sequence[str], note: str = "") -> int:
    """Print what holds and what fails, then a summary line (and ``note``); 1 if anything fails, else 0."""
    print("".join(f"ok {line}\n" for line in held) + "".join(f"FAILED {line}\n" for line in failed)
          + (f"FAILED: {len(failed)} problems" if failed else f"verified: {len(held)} proofs hold")
          + (f"\n{note}" if note else ""))
    return 1 if failed else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """FILE, --key, --witness and --quorum, for this script and ``sgb audit check``."""
    parser.add_argument("file", metavar="FILE", help=f"a {BUNDLE_FORMAT} bundle or {CONSISTENCY_FORMAT} proof")
    parser.add_argument("--key", action="append", default=[], metavar="VKEY",
                        help="a trusted verifier key of the broker's log, or a file of them; repeat for more")
    parser.add_argument("--witness", action="append", default=[], metavar="VKEY",
                        help="a trusted witness's cosignature key (type 0x04), or a file of them; repeat for more. "
                        "Each checkpoint must then carry the quorum of their cosignatures")
    parser.add_argument("--quorum", type=int, metavar="N",
                        help="how many of the --witness keys must have cosigned each checkpoint (default 1)")


def build_verifier(out: Path) -> None:
    """``sgb-verify.pyz``: this module and :mod:`broker.audit.signednote` in one file an auditor runs
    with Python (3.11+) and ``cryptography``. Their packages are empty stand-ins there, so nothing
    else of the broker is packed or needed."""
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "broker" / "audit").mkdir(parents=True)
        for package in (root / "broker", root / "broker" / "audit"):
            (package / "__init__.py").write_text('"""The sgb audit verifier: only its two modules are here."""\n')
        for name in ("offline.py", "signednote.py"):
            (root / "broker" / "audit" / name).write_bytes((here / name).read_bytes())
        (root / "__main__.py").write_text("import sys\n\nfrom broker.audit.offline import main\n\nsys.exit(main())\n")
        zipapp.create_archive(root, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sgb-verify.pyz", description="Check an sgb audit proof bundle or "
                                     "consistency proof offline, against broker keys you trust.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return check_file(args.file, args.key, args.witness, args.quorum)


if __name__ == "__main__":
    sys.exit(main())
