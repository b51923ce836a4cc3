"""Signed notes, checkpoints and cosignatures refused (broker/audit/notes.py and the offline
checker): tampered or foreign signatures, wrong origins, malformed lines and texts. The published
vectors and the round trips are tests/test_notes.py (``PETER_VKEY`` and ``TEXT``: golang/mod
fe2ec04, ``sumdb/note/note_test.go``)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import offline
from broker.audit.notes import (
    ED25519,
    BadSignature,
    Checkpoint,
    Cosigner,
    MalformedCheckpoint,
    MalformedKey,
    MalformedNote,
    NoteError,
    NoteSigner,
    Signature,
    UnverifiedNote,
    VerifierKey,
    WrongOrigin,
    cosignature_message,
    open_checkpoint,
    open_note,
    sign_note,
    verify_cosignature,
)
from tests.support.notes import ORIGIN, PETER_B64, PETER_VKEY, TEXT, checkpoint_of, log_and_witness

# --- refusals -----------------------------------------------------------------------------------


def test_tampered_text_is_refused() -> None:
    log, _ = log_and_witness()
    signed = sign_note(checkpoint_of(42).text(), [log])
    with pytest.raises(BadSignature):
        open_note(signed.replace("\n42\n", "\n43\n"), [log.key])


def test_wrong_key_is_not_trusted() -> None:
    log, _ = log_and_witness()
    impostor = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())  # same name, other key: other ID
    signed = sign_note(checkpoint_of().text(), [impostor])
    with pytest.raises(UnverifiedNote):
        open_checkpoint(signed, origin=ORIGIN, log_keys=[log.key])


def test_unknown_signer_is_ignored() -> None:
    log, _ = log_and_witness()
    stranger = NoteSigner("stranger.example", Ed25519PrivateKey.generate())
    signed = sign_note(checkpoint_of().text(), [stranger, log])
    result = open_checkpoint(signed, origin=ORIGIN, log_keys=[log.key])
    assert [s.name for s in result.note.unverified] == ["stranger.example"]


def test_wrong_origin_is_refused_without_echoing_it() -> None:
    log, _ = log_and_witness()
    signed = sign_note(checkpoint_of().text(), [log])
    with pytest.raises(WrongOrigin) as refused:
        open_checkpoint(signed, origin="broker.example/audit/other", log_keys=[log.key])
    assert ORIGIN not in str(refused.value)


def test_cosignature_over_another_checkpoint_or_time_is_refused() -> None:
    log, witness = log_and_witness()
    text, other = checkpoint_of(42).text(), checkpoint_of(43).text()
    line = witness.sign(text, 1_700_000_000).line()
    assert verify_cosignature(witness.key, text, line) == 1_700_000_000
    with pytest.raises(BadSignature):
        verify_cosignature(witness.key, other, line)
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[4:12] = (1_700_000_001).to_bytes(8, "big")
    moved = f"— {witness.key.name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(BadSignature):
        verify_cosignature(witness.key, text, moved)
    note = sign_note(text, [log]) + moved  # inside a note too, the whole note is refused
    with pytest.raises(BadSignature):
        open_checkpoint(note, origin=ORIGIN, log_keys=[log.key], witness_keys=[witness.key])
    with pytest.raises(UnverifiedNote):  # a line of another witness is not the one asked for
        verify_cosignature(Cosigner("witness.example/w2", Ed25519PrivateKey.generate()).key, text, line)


def test_cosignature_needs_the_cosignature_key_type() -> None:
    """A cosignature does not verify under the same public key as a type 0x01 key, and a
    witness key of type 0x01 is refused (formats' TestVKeyToCosignatureV1 does the first)."""
    log, witness = log_and_witness()
    text = checkpoint_of().text()
    plain = VerifierKey(witness.key.name, ED25519, witness.key.public_key)
    with pytest.raises(UnverifiedNote):
        open_note(sign_note(text, [witness]), [plain])
    with pytest.raises(MalformedKey):
        open_checkpoint(sign_note(text, [log]), origin=ORIGIN, log_keys=[log.key], witness_keys=[plain])
    with pytest.raises(MalformedCheckpoint):  # type 0x04 signs checkpoints only
        witness.sign(TEXT)
    with pytest.raises(NoteError):
        witness.sign(text, 2**63)


def test_the_offline_checker_takes_only_log_keys() -> None:
    """offline.py checks bundles against the log's keys (type 0x01): a witness's key (0x04) given
    as ``--key`` is refused there, and only notes.py, which verifies cosignatures, takes it."""
    witness = Cosigner("witness.example/w1", Ed25519PrivateKey.generate())
    with pytest.raises(MalformedKey, match="unsupported signature type"):
        offline.VerifierKey.parse(str(witness.key))
    assert VerifierKey.parse(str(witness.key)) == witness.key


def test_cosignature_timestamp_beyond_2_63_is_refused() -> None:
    """tlog-cosignature.md: the timestamp MUST NOT exceed 2^63 - 1, even when the signature over
    it is good (made here by hand, since Cosigner refuses to)."""
    private = Ed25519PrivateKey.generate()
    key = Cosigner("witness.example/w1", private).key
    text, when = checkpoint_of().text(), 2**63
    raw = when.to_bytes(8, "big") + private.sign(cosignature_message(text.encode(), when))
    line = Signature(key.name, key.key_id, raw).line()
    with pytest.raises(BadSignature):
        verify_cosignature(key, text, line)


@pytest.mark.parametrize(
    "line",
    [
        f"- PeterNeumann {PETER_B64}",
        f"– PeterNeumann {PETER_B64}",
        f"—  PeterNeumann {PETER_B64}",
        f"— Peter+Neumann {PETER_B64}",
        f"— Peter\u00a0Neumann {PETER_B64}",
        "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM",
        "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAN=",
        "— PeterNeumann x08g",
        "— PeterNeumann",
        "— PeterNeumann ",
    ],
)
def test_malformed_signature_lines(line: str) -> None:
    with pytest.raises(MalformedNote) as refused:
        open_note(TEXT + "\n" + line + "\n", [VerifierKey.parse(PETER_VKEY)])
    assert "x08go" not in str(refused.value) and "Peter" not in str(refused.value)


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n42\n",
        f"{ORIGIN}\n042\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n-1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n+1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n\u0664\u0662\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n{2**64}\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\n",
        f"{ORIGIN}\n42\nnot base64!\n",
        f"{ORIGIN}\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\nextension after an empty line\n",
        "\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ],
)
def test_malformed_checkpoints(text: str) -> None:
    with pytest.raises(MalformedCheckpoint):
        Checkpoint.parse(text)


def test_note_text_rules_when_signing() -> None:
    log, _ = log_and_witness()
    for text in ("no final newline", "tab\there\n", "\ud800\n"):
        with pytest.raises(MalformedNote):
            sign_note(text, [log])
    for name in ("", "a b", "a+b", "a\u2003b"):
        with pytest.raises(MalformedKey):
            NoteSigner(name, Ed25519PrivateKey.generate())
