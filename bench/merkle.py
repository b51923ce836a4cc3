"""The transparency log's Merkle tree on a 1,000,000-record log (issue 16): the tree built record by
record as the log appends them, then inclusion and consistency proofs generated against the whole
tree and against earlier sizes, and verified as an auditor would (no NATS, one core).

    python -m bench.merkle [RECORDS]
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import offline, proofs
from broker.audit.merkle import Frontier, MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from broker.audit.notes import Checkpoint, NoteSigner, sign_note
from broker.audit.tree import record_bytes

RECORD_BYTES = 600  # about one audit record of canonical JSON


def _rate(call: Callable[[], object], seconds: float = 1.0) -> int:
    """Calls per second of CPU time (another process on the core does not count)."""
    done, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(100):
            call()
        done += 100
    return round(done / elapsed)


def merkle_bench(records: int = 1_000_000, seed: int = 16, seconds: float = 1.0) -> dict[str, Any]:
    """Build time, memory, proof generation and verification rates, and proof sizes."""
    record = bytearray(random.Random(seed).randbytes(RECORD_BYTES))
    tree = MerkleTree()
    start = time.process_time()
    for i in range(records):  # each record differs in its first bytes, as a record id would
        record[:8] = i.to_bytes(8, "big")
        tree.append(leaf_hash(bytes(record)))
    build_s = time.process_time() - start

    rnd = random.Random(seed)
    size = tree.size
    root = tree.root()
    indices = [rnd.randrange(size) for _ in range(1000)]
    earlier = [rnd.randint(1, size) for _ in range(1000)]
    inclusion = [(i, tree.inclusion_proof(i)) for i in indices]
    consistency = [(m, tree.consistency_proof(m)) for m in earlier]
    old_roots = {m: tree.root(m) for m in earlier}
    leaves = {i: tree.leaf(i) for i in indices}
    assert all(verify_inclusion(leaves[i], i, size, p, root) for i, p in inclusion)
    assert all(verify_consistency(m, size, p, old_roots[m], root) for m, p in consistency)

    def pick() -> int:
        return rnd.randrange(1000)

    def at_earlier_size() -> object:
        m = earlier[pick()]
        return tree.inclusion_proof(rnd.randrange(m), m)

    def verify_one_inclusion() -> object:
        i, p = inclusion[pick()]
        return verify_inclusion(leaves[i], i, size, p, root)

    def verify_one_consistency() -> object:
        m, p = consistency[pick()]
        return verify_consistency(m, size, p, old_roots[m], root)

    inclusion_bytes = [32 * len(p) for _, p in inclusion]
    consistency_bytes = [32 * len(p) for _, p in consistency]
    return {
        "records": records,
        "build_s": round(build_s, 2),
        "appends_per_s": round(records / build_s),
        "tree_mb": round(tree.nbytes / 1e6, 1),
        "root_per_s_earlier_size": _rate(lambda: tree.root(earlier[pick()]), seconds),
        "inclusion_proofs_per_s": _rate(lambda: tree.inclusion_proof(indices[pick()]), seconds),
        "inclusion_proofs_per_s_earlier_size": _rate(at_earlier_size, seconds),
        "consistency_proofs_per_s": _rate(lambda: tree.consistency_proof(earlier[pick()]), seconds),
        "inclusion_verifications_per_s": _rate(verify_one_inclusion, seconds),
        "consistency_verifications_per_s": _rate(verify_one_consistency, seconds),
        "inclusion_proof_bytes": {"mean": round(sum(inclusion_bytes) / len(inclusion_bytes)),
                                  "max": max(inclusion_bytes)},
        "consistency_proof_bytes": {"mean": round(sum(consistency_bytes) / len(consistency_bytes)),
                                    "max": max(consistency_bytes)},
    }


def checkpoint_cost(records: int = 200_000, every: int = 1000, seed: int = 16) -> dict[str, Any]:
    """What the audit writer's side of the log costs per record on the hot path: a leaf hash and a
    frontier append for every record, the root for every block, and a signed C2SP checkpoint every
    ``every`` records (``[audit] tlog_checkpoint_records``); CPU time, one core."""
    record = bytearray(random.Random(seed).randbytes(RECORD_BYTES))
    frontier, key = Frontier(), Ed25519PrivateKey.generate()
    signer = NoteSigner("sgb.invalid/audit/bench", key)
    start = time.process_time()
    for i in range(records):
        record[:8] = i.to_bytes(8, "big")
        frontier.append(leaf_hash(bytes(record)))
        if i % 64 == 63:  # a block of 64 records states its root
            frontier.root()
        if i % every == every - 1:
            sign_note(Checkpoint("sgb.invalid/audit/bench", frontier.size, frontier.root()).text(), [signer])
    per_record_us = (time.process_time() - start) / records * 1e6
    return {"records": records, "checkpoint_every": every, "per_record_us": round(per_record_us, 2)}


def writer_share(writer: dict[str, Any], one: dict[str, Any]) -> float | None:
    """The audit writer's tree and checkpoints as a percentage of one broker's CPU per message (a
    referral makes two records): issue 16 allows at most 3 %."""
    per_msg_ms = (one.get("cpu") or {}).get("brokers_ms_per_msg")
    return round(2 * writer["per_record_us"] / 1000 / per_msg_ms * 100, 2) if per_msg_ms else None


def subject_bundle(records: int = 100_000, about: int = 100, seed: int = 16) -> dict[str, Any]:
    """The size of a subject-access bundle of ``about`` records (one child's messages, spread over a
    chain of ``records``), made by :func:`broker.audit.proofs.prove` as the API makes it, and the
    time to check it offline (:func:`broker.audit.offline.check_bundle`) against the log's key."""
    rnd = random.Random(seed)
    origin, key = "sgb.invalid/audit/bench", Ed25519PrivateKey.generate()
    ours = set(rnd.sample(range(records), about))
    pad = "x" * 500  # about the metadata of one audit record
    chain = proofs.Chain()
    for n in range(records):
        record = {"id": f"r-{n}", "n": n, "message": f"m-{n % 7}" if n in ours else f"other-{n}",
                  "event": "shared", "prev": "0" * 64, "sharing": pad}
        chain.records.append(record)
        chain.tree.append(leaf_hash(record_bytes(record)))
    note = sign_note(Checkpoint(origin, records, chain.tree.root()).text(), [NoteSigner(origin, key)])
    chain.signed[records] = proofs.open_signed(note.encode(), origin,
                                                [key.public_key().public_bytes_raw()])
    wanted = sorted({chain.records[n]["message"] for n in ours})
    bundle, pending = proofs.prove({"bench": chain}, wanted)
    data = orjson.dumps(bundle)
    trusted = [offline.VerifierKey.parse(k) for k in bundle["keys"]]
    start = time.process_time()
    _, failed = offline.check_bundle(orjson.loads(data), trusted)
    check_ms = (time.process_time() - start) * 1000
    assert not failed and not pending and len(bundle["records"]) == about
    return {"records_in_log": records, "records_in_bundle": about, "bundle_bytes": len(data),
            "check_ms": round(check_ms, 1)}


def main() -> int:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(merkle_bench(records))
    print(checkpoint_cost())
    print(subject_bundle())
    return 0


if __name__ == "__main__":
    sys.exit(main())
