"""Proof bundles carrying the witnesses' cosignatures (issue 16): a real broker on a real nats-server
asks a real ``sgb witness`` served in-process; ``prove`` and ``sgb audit consistency`` put the cosigned
note in what they write, and the verifier an auditor gets (``sgb-verify.pyz``, run isolated) checks
that each checkpoint carries the quorum of trusted witnesses' cosignatures (``--witness``, ``--quorum``)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from broker.audit import notes, offline
from broker.audit.checkpoints import tlog_origin
from broker.audit.proofs import prove, read_chains
from broker.audit.verify import broker_public_keys
from broker.config import Settings
from broker.pipeline.service import Broker
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT, cosigned_subject, tlog_subject
from tests.helpers import eventually
from tests.support.cli import sgb
from tests.test_audit_proofs import _offline, _vkey
from tests.test_witnessing import _cosigned, _log_keys, _records, served_witness, witnessed_broker

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cosigner() -> notes.Cosigner:
    return notes.Cosigner("witness.example.test/w1", Ed25519PrivateKey.generate())


@contextlib.asynccontextmanager
async def _cosigning(settings: Settings, registry: Registry, tmp_path: Path, cosigner: notes.Cosigner,
                     *sizes: int) -> AsyncIterator[Broker]:
    """A broker whose served witness has cosigned a checkpoint at each of ``sizes`` (records w0, w1, ...)."""
    origin = tlog_origin(settings.audit, settings.instance)
    async with served_witness(tmp_path / "w.sqlite", cosigner, origin, _log_keys(registry, origin)) as (
            _, url), witnessed_broker(settings, url, cosigner) as broker:
        for start, size in zip((0, *sizes), sizes, strict=False):
            await broker.audit.append(_records(start, size - start))
            await broker.audit.checkpoint_now()
            await eventually(lambda size=size: _cosigned(broker, size), what=f"the cosigned checkpoint of size {size}")
        yield broker


async def _bundle(broker: Broker, registry: Registry, query: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """The bundle ``prove`` gives of ``query``, and the file it was written to."""
    chains = await read_chains(broker.js, broker.settings.audit.tlog_origin, broker_public_keys(registry)())
    bundle, pending = prove(chains, query)
    assert bundle["records"] and not pending
    path = tmp_path / f"{query}.json"
    path.write_text(json.dumps(bundle))
    return bundle, str(path)


def _cosigned_by(key: notes.VerifierKey, note: str, origin: str, registry: Registry) -> str:
    """How the verifier names one cosignature of ``note``: the witness's key and the time it states."""
    opened = notes.open_checkpoint(note, origin=origin, log_keys=_log_keys(registry, origin), witness_keys=[key])
    (cosignature,) = opened.cosignatures
    when = datetime.fromtimestamp(cosignature.timestamp or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{key.name}+{key.key_id:08x} at {when}"


async def test_a_bundle_carries_the_witness_cosignature_and_the_verifier_needs_the_quorum(
        settings: Settings, topology: None, registry: Registry, tmp_path: Path, cosigner: notes.Cosigner) -> None:
    origin = tlog_origin(settings.audit, settings.instance)
    async with _cosigning(settings, registry, tmp_path, cosigner, 5) as broker:
        bundle, path = await _bundle(broker, registry, "wm2", tmp_path)
    note = bundle["checkpoints"][0]["note"]
    assert [s.name for s in notes.parse_note(note).signatures] == [origin, cosigner.key.name]
    assert bundle["format"] == "sgb-audit-proof/1" and bundle["keys"] == [_vkey(settings, registry, settings.instance)]
    vkey, witness = bundle["keys"][0], str(cosigner.key)

    run = _offline(tmp_path, path, "--key", vkey, "--witness", witness)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (f"ok checkpoint 0, size 5 of {origin}: cosigned by 1 of the 1 trusted witnesses (quorum 1): "
            f"{_cosigned_by(cosigner.key, note, origin, registry)}\n") in run.stdout
    assert "ok record w2: leaf 2" in run.stdout and "not checked" not in run.stdout
    keys = tmp_path / "witnesses.txt"  # a file of witness keys, like --key
    other = notes.Cosigner("witness.example.test/w2", Ed25519PrivateKey.generate())
    keys.write_text(f"{witness}\n{other.key}\n")
    run = _offline(tmp_path, path, "--key", vkey, "--witness", str(keys))
    assert run.returncode == 0 and "cosigned by 1 of the 2 trusted witnesses (quorum 1)" in run.stdout, run.stdout
    rc, out, err = await sgb("audit", "check", path, "--key", vkey, "--witness", witness, home=settings.home)
    assert rc == 0 and "cosigned by 1 of the 1 trusted witnesses" in out, out + err
    run = _offline(tmp_path, path, "--key", vkey)  # as before, and it says what it did not check
    assert run.returncode == 0 and "witness cosignatures were not checked" in run.stdout

    # another witness's key: the checkpoint is not cosigned by a trusted witness, nor its record proved
    run = _offline(tmp_path, path, "--key", vkey, "--witness", str(other.key))
    assert run.returncode == 1
    assert (f"FAILED checkpoint 0: size 5 of {origin}: cosigned by 0 of the 1 trusted witnesses, fewer than the "
            "quorum of 1") in run.stdout
    assert "FAILED record 0: its checkpoint is missing or does not verify" in run.stdout
    run = _offline(tmp_path, path, "--key", vkey, "--witness", witness, "--witness", str(other.key), "--quorum", "2")
    assert run.returncode == 1 and "cosigned by 1 of the 2 trusted witnesses, fewer than the quorum of 2" in run.stdout

    # what cannot be checked: a quorum above the witnesses given, a log's key as a witness
    run = _offline(tmp_path, path, "--key", vkey, "--witness", witness, "--quorum", "2")
    assert run.returncode == 2 and "--quorum 2 is not between 1 and the number of --witness keys (1)" in run.stderr
    run = _offline(tmp_path, path, "--key", vkey, "--witness", vkey)
    assert run.returncode == 2 and f"--witness {origin} is not a witness's cosignature key" in run.stderr
    assert not run.stdout
    # one witness's key under a second name is not a second witness (a cosignature does not sign the name)
    alias = str(notes.VerifierKey("witness.example.test/alias", notes.COSIGNATURE_V1, cosigner.key.public_key))
    run = _offline(tmp_path, path, "--key", vkey, "--witness", witness, "--witness", alias, "--quorum", "2")
    assert run.returncode == 2 and "one public key under two names" in run.stderr


async def test_a_consistency_proof_between_two_cosigned_checkpoints(
        settings: Settings, topology: None, registry: Registry, tmp_path: Path, cosigner: notes.Cosigner) -> None:
    instance = settings.instance
    origin = tlog_origin(settings.audit, instance)
    async with _cosigning(settings, registry, tmp_path, cosigner, 5, 12):
        path = tmp_path / "consistency.json"
        rc, out, err = await sgb("audit", "consistency", f"{instance}:5", f"{instance}:12", "--out", str(path),
                                 home=settings.home, url=settings.nats.url)
    assert rc == 0 and "extends the tree of size 5" in out, out + err
    doc = json.loads(path.read_bytes())
    for side in ("old", "new"):
        assert [s.name for s in notes.parse_note(doc[side]["note"]).signatures] == [origin, cosigner.key.name]
    vkey, witness = _vkey(settings, registry, instance), str(cosigner.key)
    run = _offline(tmp_path, str(path), "--key", vkey, "--witness", witness)
    assert run.returncode == 0, run.stdout + run.stderr
    for side, size in (("old", 5), ("new", 12)):
        assert (f"ok the {side} checkpoint, size {size} of {origin}: cosigned by 1 of the 1 trusted witnesses "
                f"(quorum 1): {_cosigned_by(cosigner.key, doc[side]['note'], origin, registry)}") in run.stdout
    assert f"ok the tree of size 12 of {origin} extends the tree of size 5" in run.stdout
    other = notes.Cosigner("witness.example.test/w2", Ed25519PrivateKey.generate())
    run = _offline(tmp_path, str(path), "--key", vkey, "--witness", str(other.key))
    assert run.returncode == 1 and "extends" not in run.stdout
    for side, size in (("old", 5), ("new", 12)):
        assert (f"FAILED the {side} checkpoint: size {size} of {origin}: cosigned by 0 of the 1 trusted witnesses, "
                "fewer than the quorum of 1") in run.stdout


async def test_a_checkpoint_never_cosigned_fails_with_a_witness_and_passes_without(
        broker: Broker, settings: Settings, registry: Registry, tmp_path: Path, cosigner: notes.Cosigner) -> None:
    assert not broker.witnesses.enabled  # no witness configured
    origin = tlog_origin(settings.audit, settings.instance)
    await broker.audit.append(_records(0, 3))
    await broker.audit.checkpoint_now()
    bundle, path = await _bundle(broker, registry, "wm1", tmp_path)
    assert [s.name for s in notes.parse_note(bundle["checkpoints"][0]["note"]).signatures] == [origin]
    vkey = _vkey(settings, registry, settings.instance)
    run = _offline(tmp_path, path, "--key", vkey, "--witness", str(cosigner.key))
    assert run.returncode == 1
    assert "cosigned by 0 of the 1 trusted witnesses, fewer than the quorum of 1" in run.stdout
    rc, out, _ = await sgb("audit", "check", path, "--key", vkey, "--witness", str(cosigner.key), home=settings.home)
    assert rc == 1 and "fewer than the quorum of 1" in out
    run = _offline(tmp_path, path, "--key", vkey)
    assert run.returncode == 0 and "verified: 1 proofs hold" in run.stdout
    assert "the checkpoints' witness cosignatures were not checked" in run.stdout


async def test_a_record_is_proved_against_the_latest_cosigned_checkpoint_that_covers_it(
        broker: Broker, settings: Settings, registry: Registry, tmp_path: Path, cosigner: notes.Cosigner) -> None:
    """The latest checkpoint may not be cosigned yet (a subject access forces one just before it
    reads): a record an earlier cosigned checkpoint covers is proved against that one."""
    instance, vkey, witness = settings.instance, _vkey(settings, registry, settings.instance), str(cosigner.key)
    await broker.audit.append(_records(0, 3))
    await broker.audit.checkpoint_now()
    note = notes.parse_note((await broker.js.get_last_msg(AUDIT, tlog_subject(instance))).data or b"")
    cosigned = notes.sign_note(note.text, [], (*note.signatures, cosigner.sign(note.text)))  # as witnessing.py
    await broker.js.publish(cosigned_subject(instance), cosigned.encode())
    await broker.audit.append(_records(3, 2))
    await broker.audit.checkpoint_now()  # size 5, not cosigned
    early, early_path = await _bundle(broker, registry, "wm1", tmp_path)
    late, late_path = await _bundle(broker, registry, "wm4", tmp_path)
    assert early["checkpoints"][0]["note"] == cosigned
    assert notes.Checkpoint.parse(notes.parse_note(late["checkpoints"][0]["note"]).text).size == 5
    run = _offline(tmp_path, early_path, "--key", vkey, "--witness", witness)
    assert run.returncode == 0 and "ok record w1: leaf 1 of" in run.stdout and "tree of size 3" in run.stdout
    run = _offline(tmp_path, late_path, "--key", vkey, "--witness", witness)
    assert run.returncode == 1 and "size 5 of" in run.stdout and "fewer than the quorum of 1" in run.stdout


async def test_cosignatures_of_one_checkpoint_stored_in_two_rounds_make_one_quorum(
        broker: Broker, settings: Settings, registry: Registry, tmp_path: Path, cosigner: notes.Cosigner) -> None:
    """Each round of asking the witnesses stores that round's lines only: a quorum may span rounds."""
    instance, vkey = settings.instance, _vkey(settings, registry, settings.instance)
    other = notes.Cosigner("witness.example.test/w2", Ed25519PrivateKey.generate())
    await broker.audit.append(_records(0, 3))
    await broker.audit.checkpoint_now()
    note = notes.parse_note((await broker.js.get_last_msg(AUDIT, tlog_subject(instance))).data or b"")
    for witness in (cosigner, other, cosigner):  # a round each; the first witness answers twice
        cosigned = notes.sign_note(note.text, [], (*note.signatures, witness.sign(note.text)))
        await broker.js.publish(cosigned_subject(instance), cosigned.encode())
    bundle, path = await _bundle(broker, registry, "wm1", tmp_path)
    # the log's line and one a witness (the first round's of the witness that answered twice)
    assert [s.name for s in notes.parse_note(bundle["checkpoints"][0]["note"]).signatures] == [
        f"sgb.invalid/audit/{instance}", "witness.example.test/w1", "witness.example.test/w2"]
    run = _offline(tmp_path, path, "--key", vkey, "--witness", str(cosigner.key), "--witness", str(other.key),
                   "--quorum", "2")
    assert run.returncode == 0, run.stdout
    assert "witness.example.test/w1" in run.stdout and "witness.example.test/w2" in run.stdout


_LOG = notes.NoteSigner("sgb.invalid/audit/x", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
_WITNESS = notes.Cosigner("witness.example.test/w1", Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
_RECORD = json.dumps({"id": "r", "message": "m", "n": 0}).encode()


def _one_record_bundle(note: str) -> dict[str, Any]:
    """A bundle of one record, the whole tree of size 1 (its root is its leaf hash, its proof empty)."""
    return {"format": "sgb-audit-proof/1", "query": "m",
            "records": [{"id": "r", "message": "m", "instance": "x", "index": 0, "checkpoint": 0, "proof": [],
                         "record": base64.b64encode(_RECORD).decode()}],
            "checkpoints": [{"instance": "x", "note": note}]}


@hsettings(max_examples=200, deadline=None)
@given(when=st.integers(0, notes.MAX_TIMESTAMP), at=st.integers(0, 10_000), insert=st.text(max_size=6),
       cut=st.booleans(), quorum=st.integers(1, 2))
def test_a_cosigned_bundle_changed_anyhow_gives_failures_never_an_exception(
        when: int, at: int, insert: str, cut: bool, quorum: int) -> None:
    """Any cosignature time (past the calendar's years too) and any change to the note: a result, never
    an exception; the note as signed holds."""
    text = notes.Checkpoint("sgb.invalid/audit/x", 1, offline.leaf_hash(_RECORD)).text()
    note = notes.sign_note(text, [_LOG], [_WITNESS.sign(text, when)])
    other = offline.CosignatureKey("witness.example.test/w2", notes.COSIGNATURE_V1, bytes(32 * [7]))
    witnesses = offline.Witnesses((offline.CosignatureKey.parse(str(_WITNESS.key)), other), quorum)
    trusted = [offline.VerifierKey.parse(str(_LOG.key))]
    held, failed = offline.check_bundle(_one_record_bundle(note), trusted, witnesses)
    assert (held and not failed) if quorum == 1 else (failed and not held)
    i = at % (len(note) + 1)
    changed = note[:i] + insert + note[i + (1 if cut else 0):]
    held, failed = offline.check_bundle(_one_record_bundle(changed), trusted, witnesses)
    assert held or failed


def test_a_witness_counts_once_however_many_names_its_key_goes_by() -> None:
    """A cosignature does not sign its key's name: one key trusted under two names would let a copied
    line count twice toward the quorum, so Witnesses refuses it (the CLI's refusal is tested above)."""
    key = offline.CosignatureKey.parse(str(_WITNESS.key))
    alias = offline.CosignatureKey("witness.example.test/alias", notes.COSIGNATURE_V1, key.public_key)
    with pytest.raises(ValueError, match="distinct"):
        offline.Witnesses((key, alias), 2)
    with pytest.raises(ValueError, match="distinct"):
        offline.Witnesses((key, alias), 1)
