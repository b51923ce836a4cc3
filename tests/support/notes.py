"""Keys and checkpoints the signed-note tests make (tests/test_notes.py, tests/test_notes_refusals.py)."""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.notes import Checkpoint, Cosigner, NoteSigner

# golang/mod fe2ec04, sumdb/note/note_test.go
PETER_VKEY: Final = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
TEXT: Final = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_B64: Final = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="

ORIGIN: Final = "broker.example/audit/test"


def log_and_witness() -> tuple[NoteSigner, Cosigner]:
    log = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    return log, Cosigner("witness.example/w1", Ed25519PrivateKey.generate())


def checkpoint_of(size: int = 42, extensions: tuple[str, ...] = ()) -> Checkpoint:
    return Checkpoint(ORIGIN, size, bytes(range(32)), extensions)
