"""Proof bundles, their offline check and consistency proofs (issue 16), against a real broker on a
real nats-server: ``sgb audit prove`` writes the bundle of a message's records, ``sgb audit check``
and the verifier an auditor gets (``sgb-verify.pyz``), run isolated, verify it with a trusted key only; tampering
is named, and ``sgb audit consistency`` holds along a growing chain and fails on a forked checkpoint."""

from __future__ import annotations

import ast
import base64
import copy
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from nats.js.errors import NotFoundError

from broker.audit import notes, offline
from broker.audit.chain import AuditWriter
from broker.audit.checkpoints import build_tlog_checkpoint, tlog_origin
from broker.config import AuditSettings, Settings
from broker.identity.keys import load_identity
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT, tlog_subject
from tests.conftest import ClientFactory
from tests.helpers import eventually, referral, sharing
from tests.support.cli import sgb

pytestmark = pytest.mark.timeout(120)


def _vkey(settings: Settings, registry: Registry, instance: str) -> str:
    origin = tlog_origin(settings.audit, instance)
    return str(next(notes.VerifierKey(origin, notes.ED25519, k.x) for k in registry.broker.keys if k.use == "sig"))


async def _checkpointed(broker: Broker, settings: Settings, registry: Registry) -> int:
    """The size of the transparency checkpoint that covers the whole chain, once there is one."""
    instance = settings.instance
    key = notes.VerifierKey.parse(_vkey(settings, registry, instance))

    async def whole() -> int | None:
        try:
            msg = await broker.js.get_last_msg(AUDIT, tlog_subject(instance))
        except NotFoundError:
            return None
        cp = notes.open_checkpoint(msg.data or b"", origin=key.name, log_keys=[key]).checkpoint
        return cp.size if cp.size == broker.audit.head.count else None

    return await eventually(whole, what="a transparency checkpoint of the whole chain", timeout=15)


def _offline(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The verifier an auditor gets (``sgb audit verifier``: one file) run isolated (-I) from a
    folder of its own."""
    folder = tmp_path / "auditor"
    folder.mkdir(exist_ok=True)
    if not (folder / "sgb-verify.pyz").exists():
        offline.build_verifier(folder / "sgb-verify.pyz")
    return subprocess.run([sys.executable, "-I", "sgb-verify.pyz", *args], cwd=folder, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_verifier_needs_nothing_of_the_broker_but_its_two_modules() -> None:
    """What sgb-verify.pyz packs imports only the standard library, ``cryptography`` and each other."""
    packed = {"broker.audit.offline", "broker.audit.signednote"}
    for name in packed:
        tree = ast.parse(Path(importlib.import_module(name).__file__ or "").read_text())
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names | {"cryptography"}}
        assert outside <= packed, (name, outside - packed)


async def test_prove_and_check_a_message_end_to_end(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, tmp_path: Path) -> None:
    police = await agency("police-met")
    jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(jti, timeout=10)
    other = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(other, timeout=10)
    await _checkpointed(broker, settings, registry)
    vkey = _vkey(settings, registry, settings.instance)

    path = tmp_path / "bundle.json"
    rc, _, err = await sgb("audit", "prove", jti, "--out", str(path), home=settings.home, url=settings.nats.url)
    assert rc == 0, err
    bundle = json.loads(path.read_bytes())
    assert bundle["format"] == "sgb-audit-proof/1" and bundle["query"] == jti and bundle["keys"] == [vkey]
    assert len(bundle["records"]) >= 2 and {r["message"] for r in bundle["records"]} == {jti}
    assert all(json.loads(base64.b64decode(r["record"]))["message"] == jti for r in bundle["records"])
    assert notes.parse_note(bundle["checkpoints"][0]["note"])  # the note as stored

    rc, out, _ = await sgb("audit", "vkey", settings.instance, home=settings.home)
    assert rc == 0 and out.split() == [vkey]  # to publish: the trust an auditor checks against
    rc, out, _ = await sgb("audit", "check", str(path), "--key", vkey, home=settings.home)
    assert rc == 0 and f"verified: {len(bundle['records'])} proofs hold" in out, out
    run = _offline(tmp_path, str(path), "--key", vkey)
    assert run.returncode == 0 and "verified:" in run.stdout, run.stdout + run.stderr

    # one record by its id
    rid = bundle["records"][0]["id"]
    rc, out, _ = await sgb("audit", "prove", rid, home=settings.home, url=settings.nats.url)
    assert rc == 0 and [r["id"] for r in json.loads(out)["records"]] == [rid]
    rc, _, err = await sgb("audit", "prove", "no-such-id", home=settings.home, url=settings.nats.url)
    assert rc != 0 and "no audit record" in err

    # tampered bundles, each named, none echoing a record
    def tampered(change: Any) -> dict[str, Any]:
        copied = copy.deepcopy(bundle)
        change(copied)
        return copied

    def flip(b64: str) -> str:
        raw = bytearray(base64.b64decode(b64))
        raw[len(raw) // 2] ^= 1
        return base64.b64encode(bytes(raw)).decode()

    def record_byte(b: dict[str, Any]) -> None:
        b["records"][0]["record"] = flip(b["records"][0]["record"])

    def proof_hash(b: dict[str, Any]) -> None:
        b["records"][0]["proof"][0] = flip(b["records"][0]["proof"][0])

    def checkpoint_root(b: dict[str, Any]) -> None:
        text, sigs = b["checkpoints"][0]["note"].split("\n\n", 1)
        origin, size, root = text.split("\n")
        b["checkpoints"][0]["note"] = f"{origin}\n{size}\n{flip(root)}\n\n{sigs}"

    stranger = load_identity(settings.home, "police-met")
    cp = notes.Checkpoint.parse(notes.parse_note(bundle["checkpoints"][0]["note"]).text)

    def other_key(b: dict[str, Any]) -> None:
        b["checkpoints"][0]["note"] = build_tlog_checkpoint(cp.origin, cp.size, cp.root_hash, stranger).decode()

    trusted = [notes.VerifierKey.parse(vkey)]
    for change, expected in ((record_byte, "record 0: "), (proof_hash, "inclusion proof does not lead"),
                             (checkpoint_root, "checkpoint 0: the signature by"),
                             (other_key, "checkpoint 0: the note has no signature by a trusted key")):
        _, failed = offline.check_bundle(tampered(change), trusted)
        assert any(expected in line for line in failed), (change.__name__, failed)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tampered(record_byte)))
    run = _offline(tmp_path, str(bad), "--key", vkey)
    assert run.returncode == 1 and "FAILED record 0" in run.stdout
    assert "referral" not in run.stdout and jti not in run.stdout

    # the bundle's own key is no trust: no --key fails, and so does a bundle signed by the key it carries
    run = _offline(tmp_path, str(path))
    assert run.returncode == 2 and "no trusted key given" in run.stderr
    forged = tampered(other_key)
    forged["keys"] = [str(notes.VerifierKey(cp.origin, notes.ED25519, stranger.signing_key.public_key()
                                            .public_bytes_raw()))]
    bad.write_text(json.dumps(forged))
    run = _offline(tmp_path, str(bad), "--key", vkey)
    assert run.returncode == 1 and "no signature by a trusted key" in run.stdout


async def test_consistency_along_a_growing_chain_and_a_fork(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, tmp_path: Path) -> None:
    police = await agency("police-met")
    sizes = []
    for _ in range(2):
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        await police.wait_outcome(jti, timeout=10)
        sizes.append(await _checkpointed(broker, settings, registry))
    instance, vkey = settings.instance, _vkey(settings, registry, settings.instance)
    old, new = (f"{instance}:{size}" for size in sizes)
    out_path = tmp_path / "consistency.json"
    rc, out, err = await sgb("audit", "consistency", old, new, "--out", str(out_path), home=settings.home,
                             url=settings.nats.url)
    assert rc == 0 and f"extends the tree of size {sizes[0]}" in out, out + err
    run = _offline(tmp_path, str(out_path), "--key", vkey)
    assert run.returncode == 0 and "extends" in run.stdout, run.stdout + run.stderr

    # the key holder's other history at the later size: signed by the broker's own key, and refused
    identity = load_identity(settings.home, registry.broker_id)
    forged = tmp_path / "forged.note"
    forged.write_bytes(build_tlog_checkpoint(tlog_origin(settings.audit, instance), sizes[1], b"\x07" * 32, identity))
    rc, out, _ = await sgb("audit", "consistency", old, str(forged), "--out", str(out_path), home=settings.home,
                           url=settings.nats.url)
    assert rc == 5 and f"FAILED the tree of size {sizes[1]} does NOT extend" in out and "forked" in out, out
    run = _offline(tmp_path, str(out_path), "--key", vkey)
    assert run.returncode == 1 and "forked history" in run.stdout


async def test_records_of_one_message_on_two_chains_and_one_not_yet_checkpointed(
        settings: Settings, registry: Registry, topology: None, tmp_path: Path) -> None:
    identity = load_identity(settings.home, registry.broker_id)
    quiet = AuditSettings(checkpoint_interval=3600, publish_deadline=2.0, tlog_checkpoint_records=10_000)

    def records(prefix: str, count: int) -> list[dict[str, Any]]:
        return [{"id": f"{prefix}{i}", "event": "shared", "decision": "share", "message": "m-both" if i == 1 else
                 f"m-{prefix}{i}"} for i in range(count)]

    async with connected(settings, settings.nats.url or "", name="proofs-test") as nc:
        js = jetstream(nc, settings)
        async with AuditWriter(js, identity, "a", quiet) as writer:
            await writer.append(records("a", 5))
        async with AuditWriter(js, identity, "b", quiet) as writer:  # its checkpoint comes when it closes
            await writer.append(records("b", 3))
            rc, _, err = await sgb("audit", "prove", "m-both", home=settings.home, url=settings.nats.url)
            assert rc == 1 and "not yet covered by a transparency checkpoint: record b#1" in err, err
        path = tmp_path / "both.json"
        rc, _, err = await sgb("audit", "prove", "m-both", "--out", str(path), home=settings.home,
                               url=settings.nats.url)
    assert rc == 0, err
    bundle = json.loads(path.read_bytes())
    assert [(r["instance"], r["index"], r["id"]) for r in bundle["records"]] == [("a", 1, "a1"), ("b", 1, "b1")]
    assert [c["instance"] for c in bundle["checkpoints"]] == ["a", "b"]
    keys = [_vkey(settings, registry, instance) for instance in ("a", "b")]
    assert bundle["keys"] == sorted(keys)
    run = _offline(tmp_path, str(path), "--key", keys[0])  # a key of one chain does not vouch for the other's
    assert run.returncode == 1 and "checkpoint 1: the note has no signature by a trusted key" in run.stdout
    run = _offline(tmp_path, str(path), "--key", keys[0], "--key", keys[1])
    assert run.returncode == 0 and "verified: 2 proofs hold" in run.stdout, run.stdout


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3), max_leaves=12)

@hsettings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"format": st.sampled_from(["sgb-audit-proof/1", "sgb-audit-consistency/1"]),
                              "query": _json, "records": st.lists(st.dictionaries(st.sampled_from(
                                  ["id", "message", "instance", "index", "record", "checkpoint", "proof"]), _json)),
                              "checkpoints": _json, "old": _json, "new": _json, "proof": _json}))
def test_any_document_gives_failures_never_an_exception(doc: dict[str, Any]) -> None:
    key = notes.VerifierKey("sgb.invalid/audit/x", notes.ED25519, bytes(range(32)))
    witness = offline.CosignatureKey("witness.example.test/w1", notes.COSIGNATURE_V1, bytes(range(1, 33)))
    for check in (offline.check_bundle, offline.check_consistency):
        for witnesses in (offline.Witnesses(), offline.Witnesses((witness,), 1)):
            held, failed = check(doc, [key], witnesses)
            assert failed and not held
