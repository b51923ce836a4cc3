"""A transparency log kept by a test, to put a witness to work: records, their tree, and the
log's signing key (tests/test_witness.py, tests/test_witness_setup.py)."""

from __future__ import annotations

from broker.audit import merkle, notes

ORIGIN = "example.test/audit/broker-1"


class Log:
    """A transparency log kept here: records, their tree, and the log's signing key."""

    def __init__(self, signer: notes.NoteSigner, records: list[bytes] | None = None) -> None:
        self.signer = signer
        self.records: list[bytes] = []
        self.tree = merkle.MerkleTree()
        for record in records or ():
            self.add(record)

    def add(self, record: bytes) -> None:
        self.records.append(record)
        self.tree.append(merkle.leaf_hash(record))

    def grow(self, size: int) -> None:
        while self.tree.size < size:
            self.add(f"record {self.tree.size}".encode())

    def text(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        return notes.Checkpoint(ORIGIN, size, self.tree.root(size)).text()

    def checkpoint(self, size: int | None = None) -> bytes:
        return notes.sign_note(self.text(size), [self.signer]).encode()

    def proof(self, old: int, new: int | None = None) -> list[bytes]:
        return self.tree.consistency_proof(old, new)

    def forked(self, index: int) -> Log:
        """The same log with record ``index`` rewritten, signed with the same (real) key."""
        records = list(self.records)
        records[index] = b"a rewritten record"
        return Log(self.signer, records)
