"""broker/audit/notes.py against the published test vectors of C2SP signed notes, checkpoints and
cosignatures, then round trips and refusals. No mocks, no NATS: only keys, text and signatures.

Vector sources (each copied from the file named, at the commit named):

- github.com/golang/mod fe2ec04, ``sumdb/note/note_test.go``: the PeterNeumann and EnochRoot keys,
  note text and signature lines, and the malformed notes of ``TestOpen``;
- github.com/C2SP/C2SP 5ba5ee8: the examples in ``signed-note.md`` (example.com/foo),
  ``tlog-checkpoint.md`` and ``tlog-cosignature.md``;
- github.com/transparency-dev/formats 0b850f1, ``note/note_cosigv1_test.go``: vkeys of types 0x01
  and 0x04 and the timestamp of a cosignature line;
- github.com/transparency-dev/witness 54dbcdd, ``witness/witness_test.go`` (the monkeys log) and
  ``internal/client/sumdb_test.go`` (a checkpoint of sum.golang.org and its key);
- github.com/transparency-dev/distributor c3e02e9: witnessed checkpoints of two real logs in
  ``README.md``, the log keys in ``config/logs.yaml``, the Armored Witness keys in
  ``config/witnesses-prod.yaml`` (published as type 0x01 vkeys; the cosignatures verify under the
  same public keys as type 0x04, as formats' ``NewVerifierForCosignatureV1`` converts them).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
from typing import Final

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.notes import (
    COSIGNATURE_V1,
    ED25519,
    MAX_SIGNATURES,
    BadSignature,
    Checkpoint,
    MalformedKey,
    MalformedNote,
    NoteError,
    NoteSigner,
    Signature,
    UnverifiedNote,
    VerifierKey,
    cosignature_message,
    cosignature_timestamp,
    open_checkpoint,
    open_note,
    parse_note,
    sign_note,
    verify_cosignature,
)
from tests.support.notes import ORIGIN, PETER_B64, PETER_VKEY, TEXT, checkpoint_of, log_and_witness

# golang/mod sumdb/note/note_test.go
PETER_SKEY: Final = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY: Final = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
PETER_SIG: Final = f"— PeterNeumann {PETER_B64}\n"
ENOCH_SIG: Final = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# transparency-dev/witness witness/witness_test.go
MONKEYS_VKEY: Final = "monkeys+db4d9f7e+AULaJMvTtDLHPUcUrjdDad9vDlh/PTfC2VV60JUtCfWT"
MONKEYS_SKEY: Final = "PRIVATE+KEY+monkeys+db4d9f7e+ATWIAF3yVBG+Hv1rZFQoNt/BaURkLPtOFMAM2HrEeIr6"
MONKEYS_INIT: Final = (
    "monkeys\n5\n41smjBUiAU70EtKlT6lIOIYtRTYxYXsDB+XHfcvu/BE=\n\n"
    "— monkeys 202fftzGl3LVoqjXfwCFZZXs8I+5G22+Ek2K0AOyBuSJ/8/CZawNF+6fNlTKOCd622pbzJNkkJFWuw9DbicZCkEx9AY=\n"
)
MONKEYS_NEXT: Final = (
    "monkeys\n8\nV8K9aklZ4EPB+RMOk1/8VsJUdFZR77GDtZUQq84vSbo=\n\n"
    "— monkeys 202ffoUEboiQYpHzICeaFmoy3RNviHTpAxYrq/eO4QQVQMvu9UebKBMX2MJC76NLthZaKsnKbCA8GxrjePZhvDCH7Ag=\n"
)

# transparency-dev/distributor README.md, config/logs.yaml, config/witnesses-prod.yaml
FTLOG_CI3: Final = (
    "transparency.dev/armored-witness/firmware_transparency/ci/3\n59\nkOFMkeamIdrYFLx5zbWFhflak6dlEEDOU++fxYEZMBw=\n\n"
    "— transparency.dev-aw-ftlog-ci-3 "
    "P2iVIt3Jsaha3E2i0MHdKZ6fgYJTgXO86nUsxKPVq6uTwRSclTSh/ELnDGbNL+XDyD3EkWIdL2AGGNmbN7IN2rB/7gE=\n"
    "— ArmoredWitness-weathered-rain "
    "CnjfIAAAAABnGRrHjQi7IZQqVea4YnU/ADsv844r1ezGjvubUy1MMJm4as9bRiT70xNWQ67RCA76LMy7SdX4qJNIzL3eSS1BGFWqCw==\n"
    "— ArmoredWitness-floral-sky "
    "x88LbQAAAABnGRrDEq4Tfy7IIVPqkdXbcufUkCzRRbE3fABZ/jvtg5aFHVMuMR8cV6dVqECDBiH1zRxhNaCQOXSwNLSeJs+NzWt1BA==\n"
)
FTLOG_CI3_VKEY: Final = "transparency.dev-aw-ftlog-ci-3+3f689522+Aa1Eifq6rRC8qiK+bya07yV1fXyP156pEMsX7CFBC6gg"
PIXEL: Final = (
    "developers.google.com/android/binary_transparency/0\n611\n2GZ1zmS5VkfUZmn2ZyR4KZXwHLD+xnwBIWzql/cD50w=\n\n"
    "— pixel_transparency_log "
    "csh42zBFAiAd3Y1FwqNTt5RglY0uG7heC6Yu1gEbXXPYmZ7LdOILMAIhAIt68PnR/3TADAaC7hvrSHbpziV7TmpIwOUydLmcjyTQ\n"
    "— ArmoredWitness-small-breeze "
    "nRq5UQAAAABnoqrsRIofXn68vTohcAm2KG4ACGyRPNePUk02BSWD0WKV5ElejTk5Z+Tm3GmJ5j/etA+fkL9XuaQsnTyZbr437sF4AQ==\n"
    "— ArmoredWitness-autumn-wood "
    "qZb5XQAAAABnoqrl57G9CblEl3lwwuqzbaJvVMqNiZCbYZseYT1YZHYmls3CmT1wxZ1fNgM4RxHuUxjAwcI2ghTx6R5aCg+L0DGPBA==\n"
)
ARMORED_WITNESSES: Final = {
    "ArmoredWitness-weathered-rain+ea3d386d+AWLblKp5JuiyrgRh6ev2nNJ5XAd+sc/mM2D2HW/b4d5S",
    "ArmoredWitness-floral-sky+504ec40f+AekCmTmKTTnQMNqIigkj7PFnhogawSJD23PJ8M8qLYDm",
    "ArmoredWitness-small-breeze+7b3ada3a+AQAWYpUjfGGPQiWOgt6sLWap0P9rVOe+Ofu2uNZbO4FD",
    "ArmoredWitness-autumn-wood+863571a5+AesIVCbad7gbU07JnA6YfZD0qg4B1c8xF4ISdnt9vjip",
}


def _private(skey: str) -> Ed25519PrivateKey:
    """A Go signer key ``PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)`` as a cryptography key."""
    material = base64.b64decode(skey.split("+", 4)[4])
    assert material[0] == ED25519
    return Ed25519PrivateKey.from_private_bytes(material[1:])


def _as_cosigner(vkey: str) -> VerifierKey:
    key = VerifierKey.parse(vkey)
    return VerifierKey(key.name, COSIGNATURE_V1, key.public_key)


def _witnesses() -> list[VerifierKey]:
    return [_as_cosigner(v) for v in sorted(ARMORED_WITNESSES)]


def _utc(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text).timestamp())


# --- published vectors --------------------------------------------------------------------------


def test_go_sumdb_note_sign_and_vkey() -> None:
    signer = NoteSigner("PeterNeumann", _private(PETER_SKEY))
    assert str(signer.key) == PETER_VKEY
    assert signer.key.key_id == 0xC74F20A3
    assert sign_note(TEXT, [signer]) == TEXT + "\n" + PETER_SIG
    # Go's Sign replaces an earlier signature by the same key rather than repeating it.
    stale = Signature("PeterNeumann", 0xC74F20A3, b"stale")
    assert sign_note(TEXT, [signer], [stale]) == TEXT + "\n" + PETER_SIG


def test_go_sumdb_note_open() -> None:
    peter, enoch = VerifierKey.parse(PETER_VKEY), VerifierKey.parse(ENOCH_VKEY)
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    one = open_note(note, [peter])
    assert one.text == TEXT
    assert [v.key for v in one.verified] == [peter] and one.verified[0].timestamp is None
    assert [s.name for s in one.unverified] == ["EnochRoot"]
    both = open_note(note.encode(), [peter, enoch, enoch])  # the same key twice is one key
    assert [v.key for v in both.verified] == [peter, enoch] and not both.unverified
    repeated = open_note(TEXT + "\n" + PETER_SIG * 2 + ENOCH_SIG * 2, [peter])  # repeats count once
    assert len(repeated.verified) == 1 and len(repeated.unverified) == 1
    with pytest.raises(UnverifiedNote):
        open_note(note, [])
    with pytest.raises(BadSignature, match=r"PeterNeumann\+c74f20a3"):
        open_note(TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], [peter])
    with pytest.raises(MalformedNote):
        open_note(TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1), [peter])


@pytest.mark.parametrize(
    "message",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name")[:-1],
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    ],
)
def test_go_sumdb_note_malformed(message: str) -> None:
    with pytest.raises(MalformedNote):
        open_note(message, [VerifierKey.parse(PETER_VKEY)])


def test_go_sumdb_note_invalid_utf8() -> None:
    with pytest.raises(MalformedNote, match="UTF-8"):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), [VerifierKey.parse(PETER_VKEY)])


def test_go_sumdb_note_vkey_manglings() -> None:
    """TestNewVerifier: every proper substring and every one-byte change of the vkey is refused,
    as are a key of the wrong length and an unknown algorithm (each with its key ID adjusted)."""
    assert str(VerifierKey.parse(PETER_VKEY)) == PETER_VKEY
    manglings = {PETER_VKEY[i:j] for i in range(len(PETER_VKEY)) for j in range(i + 1, len(PETER_VKEY) + 1)}
    manglings |= {PETER_VKEY[:i] + chr(ord(c) + 1) + PETER_VKEY[i + 1 :] for i, c in enumerate(PETER_VKEY)}
    manglings -= {PETER_VKEY}
    manglings |= {
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    }
    for mangled in manglings:
        with pytest.raises(MalformedKey):
            VerifierKey.parse(mangled)


def test_c2sp_signed_note_example() -> None:
    key = VerifierKey.parse("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
    note = (
        "This is an example message.\n\n— example.com/foo "
        "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
    )
    assert open_note(note, [key]).text == "This is an example message.\n"
    assert key.public_key.hex() == "e932791ae6e7a840a46164c904786426d5e7821dd8b29a00d61cae72afdd4da4"


def test_c2sp_checkpoint_and_cosignature_examples() -> None:
    """The examples of tlog-checkpoint.md and tlog-cosignature.md. Their keys are not published,
    so only the format is checked: the checkpoint text, and that the example witness line's
    timestamp is the one of the spec's example signed message."""
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    note = parse_note(
        text + "\n— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/"
        "Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/"
        "zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
    )
    checkpoint = Checkpoint.parse(note.text, "example.com/behind-the-sofa")
    assert (checkpoint.origin, checkpoint.size, checkpoint.extensions) == ("example.com/behind-the-sofa", 20852163, ())
    assert checkpoint.text() == text
    assert cosignature_timestamp(note.signatures[1].signature) == 1679315147
    assert cosignature_message(text.encode(), 1679315147) == (
        b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
        b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    with pytest.raises(UnverifiedNote):
        open_note(str(note), [])


def test_transparency_dev_formats_vkeys_and_timestamp() -> None:
    remora = VerifierKey.parse("remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")
    assert remora.sig_type == COSIGNATURE_V1 and remora.key_id == 0xDA77ADE7
    plus = VerifierKey.parse("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")  # '+' in base64
    assert plus.sig_type == ED25519 and plus.name == "TEST"
    for bad in ("bananas.sigstore.dev+12344556", "rekor.sigstore.dev+12345678+THIS_IS_NOT_BASE64!",
                "rekor.sigstore.dev+12345678+AwEB"):
        with pytest.raises(MalformedKey):
            VerifierKey.parse(bad)
    line = ("— x ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJ"
            "XORmnFBOBA==")
    assert cosignature_timestamp(Signature.parse_line(line).signature) == 1727964367
    plain = "— x eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xkNQY="
    assert cosignature_timestamp(Signature.parse_line(plain).signature) is None


def test_transparency_dev_witness_checkpoints() -> None:
    monkeys = VerifierKey.parse(MONKEYS_VKEY)
    for note, size in ((MONKEYS_INIT, 5), (MONKEYS_NEXT, 8)):
        signed = open_checkpoint(note, origin="monkeys", log_keys=[monkeys])
        assert signed.checkpoint.size == size and not signed.cosignatures
    # Ed25519 is deterministic: the published signer key gives the published line again.
    text = MONKEYS_INIT.split("\n\n")[0] + "\n"
    assert sign_note(text, [NoteSigner("monkeys", _private(MONKEYS_SKEY))]) == MONKEYS_INIT
    sumdb = VerifierKey.parse("sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8")
    go_sum = (
        "go.sum database tree\n1514086\nkn9DgqDhXzoZMM8828SQsbuovr/WRn7QfFd5Qe1rpwA=\n\n— sum.golang.org "
        "Az3grunuggF5mKymPJeK/l9Pq71lOg/rAVkQVCzGkWRJcnS3ZFunzveHr9PAH8LFsuhpcCWzGDNrn9FFDyXm/66tBg8=\n"
    )
    assert open_checkpoint(go_sum, origin="go.sum database tree", log_keys=[sumdb]).checkpoint.size == 1514086


def test_distributor_witnessed_checkpoint() -> None:
    """A real log checkpoint with two real Armored Witness cosignatures, at the times the README
    shows (2024-10-23T16:48:23+01:00 and 16:48:19+01:00)."""
    log_key = VerifierKey.parse(FTLOG_CI3_VKEY)
    signed = open_checkpoint(FTLOG_CI3, origin="transparency.dev/armored-witness/firmware_transparency/ci/3",
                             log_keys=[log_key], witness_keys=_witnesses())
    assert signed.checkpoint.size == 59
    assert {(v.key.name, v.timestamp) for v in signed.cosignatures} == {
        ("ArmoredWitness-weathered-rain", _utc("2024-10-23T16:48:23+01:00")),
        ("ArmoredWitness-floral-sky", _utc("2024-10-23T16:48:19+01:00")),
    }
    text = FTLOG_CI3.split("\n\n")[0] + "\n"
    rain = next(k for k in _witnesses() if k.name == "ArmoredWitness-weathered-rain")
    assert verify_cosignature(rain, text, FTLOG_CI3.splitlines()[-2]) == _utc("2024-10-23T16:48:23+01:00")
    # The published type 0x01 keys do not verify cosignatures: their key IDs differ (type byte).
    with pytest.raises(UnverifiedNote):
        open_note(FTLOG_CI3, [VerifierKey.parse(v) for v in ARMORED_WITNESSES])


def test_distributor_unknown_signature_type_ignored() -> None:
    """The pixel log signs with ECDSA (type 0x02), which we do not implement: its line is ignored
    like an unknown key's, and the two cosignatures verify."""
    opened = open_note(PIXEL, _witnesses())
    assert [s.name for s in opened.unverified] == ["pixel_transparency_log"]
    assert {(v.key.name, v.timestamp) for v in opened.verified} == {
        ("ArmoredWitness-small-breeze", _utc("2025-02-05T00:03:56+00:00")),
        ("ArmoredWitness-autumn-wood", _utc("2025-02-05T00:03:49+00:00")),
    }
    with pytest.raises(UnverifiedNote, match="log's key"):  # cosignatures alone are not the log's
        open_checkpoint(PIXEL, origin="developers.google.com/android/binary_transparency/0",
                        log_keys=[VerifierKey.parse(FTLOG_CI3_VKEY)], witness_keys=_witnesses())


# --- round trips --------------------------------------------------------------------------------

def test_round_trip_log_then_witness() -> None:
    log, witness = log_and_witness()
    text = checkpoint_of().text()
    signed = sign_note(text, [log])
    cosigned = sign_note(text, [witness], parse_note(signed).signatures)
    assert cosigned.startswith(signed)
    result = open_checkpoint(cosigned, origin=ORIGIN, log_keys=[VerifierKey.parse(str(log.key))],
                             witness_keys=[VerifierKey.parse(str(witness.key))])
    assert result.checkpoint == checkpoint_of()
    assert [v.key for v in result.cosignatures] == [witness.key]
    assert result.cosignatures[0].timestamp is not None


def test_round_trip_checkpoint_text() -> None:
    for checkpoint in (checkpoint_of(0), checkpoint_of(2**64 - 1), checkpoint_of(7, ("ext one", "two"))):
        assert Checkpoint.parse(checkpoint.text(), ORIGIN) == checkpoint


def test_note_text_may_hold_empty_lines() -> None:
    """signed-note.md: the text MAY contain empty lines; the last empty line separates."""
    log, _ = log_and_witness()
    text = "first\n\nthird\n\n"
    assert open_note(sign_note(text, [log]), [log.key]).text == text


def test_sixteen_signatures_are_accepted() -> None:
    """signed-note.md: verifiers MUST accept at least 16 signatures."""
    signers = [NoteSigner(f"k{i}", Ed25519PrivateKey.generate()) for i in range(16)]
    opened = open_note(sign_note(TEXT, signers), [s.key for s in signers])
    assert len(opened.verified) == 16


_PIECES: Final = st.sampled_from([TEXT, "\n", "\n\n", "— ", "—", " ", "PeterNeumann", "+", "=", "x08go/ZJ",
                                   "AAAA", "\x00", "\t", "\u00a0", "é", PETER_SIG, ENOCH_SIG])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.lists(_PIECES, max_size=12).map(lambda p: "".join(p).encode()))
def test_any_bytes_are_a_note_or_a_note_error(data: bytes) -> None:
    """Whatever arrives, the outcome is a note or a NoteError, never another exception."""
    with contextlib.suppress(NoteError):
        open_note(data, [VerifierKey.parse(PETER_VKEY)])
