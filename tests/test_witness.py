"""``sgb witness``: the C2SP tlog-witness protocol over real HTTP (aiohttp's test server, and the
command as a real process), real Ed25519 keys, a log built here with merkle.py and notes.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit import merkle, notes
from broker.witness.client import WitnessConflict, WitnessError, request_cosignature
from broker.witness.protocol import MAX_PROOF_LINES, Refused, encode_request, parse_request
from broker.witness.service import Witness
from broker.witness.state import WitnessState
from tests.support.witness import ORIGIN, Log

pytestmark = pytest.mark.timeout(60)

Client = TestClient  # type: ignore[type-arg]


@contextlib.asynccontextmanager
async def witness_over(path: Path, cosigner: notes.Cosigner, log_signer: notes.NoteSigner,
                       aiohttp_client: Callable[..., Awaitable[Client]]) -> AsyncIterator[tuple[Witness, Client]]:
    async with WitnessState(path) as state:
        witness = Witness(cosigner, {ORIGIN: (log_signer.key,)}, state, max_body=16 * 1024)
        client = await aiohttp_client(witness.make_app())
        try:
            yield witness, client
        finally:
            await client.close()


@pytest.fixture
async def served(tmp_path: Path, cosigner: notes.Cosigner, log_signer: notes.NoteSigner,
                 aiohttp_client: Callable[..., Awaitable[Client]]) -> AsyncIterator[tuple[Witness, Client]]:
    async with witness_over(tmp_path / "witness" / "state.sqlite", cosigner, log_signer, aiohttp_client) as pair:
        yield pair


async def cosign(client: Client, log: Log, old: int, size: int | None = None,
                 proof: list[bytes] | None = None) -> list[str]:
    proof = log.proof(old, size) if proof is None else proof
    return await request_cosignature(client.session, str(client.make_url("/")), log.checkpoint(size), old, proof)


async def post(client: Client, body: bytes) -> tuple[int, str, str]:
    response = await client.post("/add-checkpoint", data=body)
    return response.status, await response.text(errors="replace"), response.content_type


async def forks_metric(client: Client) -> float:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith("sgb_witness_forks_total{") and f'origin="{ORIGIN}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no sgb_witness_forks_total for the log")


async def readyz(client: Client) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    return response.status, await response.json()


# -- the happy path -------------------------------------------------------------------------------


async def test_cosigns_a_growing_log_0_5_12(served: tuple[Witness, Client], log_signer: notes.NoteSigner,
                                           cosigner: notes.Cosigner) -> None:
    _, client = served
    log = Log(log_signer)
    old = 0
    for size in (0, 5, 12):
        log.grow(size)
        lines = await cosign(client, log, old, size)
        assert len(lines) == 1 and lines[0].startswith("\u2014 witness.example.test/w1 ")
        stamp = notes.verify_cosignature(cosigner.key, log.text(size), lines[0])
        assert stamp > 0
        # the log puts the cosignature beside its own and anyone with both keys opens it
        logged = notes.parse_note(log.checkpoint(size)).signatures
        cosigned = notes.sign_note(log.text(size), [], (*logged, notes.Signature.parse_line(lines[0])))
        opened = notes.open_checkpoint(cosigned, origin=ORIGIN, log_keys=[log_signer.key],
                                       witness_keys=[cosigner.key])
        assert [v.key for v in opened.cosignatures] == [cosigner.key] and opened.checkpoint.size == size
        old = size
    # the same checkpoint again: cosigned again (equal size, equal root)
    assert await cosign(client, log, 12, 12)
    # the monitoring API: the latest checkpoint, with the log's signature and the witness's
    origin_hash = hashlib.sha256(ORIGIN.encode()).hexdigest()
    served_note = await (await client.get(f"/{origin_hash}/checkpoint")).read()
    opened = notes.open_checkpoint(served_note, origin=ORIGIN, log_keys=[log_signer.key], witness_keys=[cosigner.key])
    assert opened.checkpoint.size == 12 and len(opened.cosignatures) == 1
    assert (await client.get(f"/{'0' * 64}/checkpoint")).status == 404
    status, body = await readyz(client)
    assert status == 200 and body["checks"]["forks"]["state"] == "ok"
    assert await forks_metric(client) == 0


# -- the spec's refusals -------------------------------------------------------------------------


async def test_409_for_a_stale_old_size_names_the_witness_size(served: tuple[Witness, Client],
                                                              log_signer: notes.NoteSigner) -> None:
    _, client = served
    log = Log(log_signer)
    log.grow(12)
    await cosign(client, log, 0, 5)
    status, text, content_type = await post(client, encode_request(0, [], log.checkpoint(12)))
    assert (status, text, content_type) == (409, "5\n", "text/x.tlog.size")
    with pytest.raises(WitnessConflict) as conflict:
        await cosign(client, log, 3, 12)
    assert conflict.value.size == 5 and conflict.value.status == 409
    assert await cosign(client, log, conflict.value.size, 12)  # the retry the hint is for


async def test_422_for_a_bad_proof_is_not_a_fork(served: tuple[Witness, Client],
                                                 log_signer: notes.NoteSigner) -> None:
    _, client = served
    log = Log(log_signer)
    log.grow(12)
    await cosign(client, log, 0, 6)
    proof = log.proof(6, 12)
    for bad in ([bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]], proof[:-1], [*proof, proof[0]], []):
        status, _, _ = await post(client, encode_request(6, bad, log.checkpoint(12)))
        assert status == 422
    # an equal size needs an empty proof and the same root
    assert (await post(client, encode_request(6, [proof[0]], log.checkpoint(6))))[0] == 422
    assert (await post(client, encode_request(6, [], log.checkpoint(6))))[0] == 200
    assert await forks_metric(client) == 0  # anyone can send a real checkpoint with a bad proof
    assert (await readyz(client))[0] == 200


async def test_422_at_old_size_zero(tmp_path: Path, cosigner: notes.Cosigner, log_signer: notes.NoteSigner,
                                    aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    async with witness_over(tmp_path / "s.sqlite", cosigner, log_signer, aiohttp_client) as (_, client):
        log = Log(log_signer)
        log.grow(3)
        empty_with_root = notes.sign_note(notes.Checkpoint(ORIGIN, 0, log.tree.root()).text(), [log_signer])
        assert (await post(client, encode_request(0, [], empty_with_root.encode())))[0] == 422
        assert (await post(client, encode_request(0, [log.tree.leaf(0)], log.checkpoint(3))))[0] == 422
        assert (await post(client, encode_request(0, [], log.checkpoint(3))))[0] == 200


async def test_403_for_a_checkpoint_not_signed_by_the_log(served: tuple[Witness, Client],
                                                          log_signer: notes.NoteSigner) -> None:
    _, client = served
    impostor = Log(notes.NoteSigner(ORIGIN, Ed25519PrivateKey.generate()))  # same name, another key
    impostor.grow(4)
    assert (await post(client, encode_request(0, [], impostor.checkpoint())))[0] == 403
    stranger = Log(notes.NoteSigner("someone-else", Ed25519PrivateKey.generate()))  # an unknown key only
    stranger.grow(4)
    assert (await post(client, encode_request(0, [], stranger.checkpoint())))[0] == 403
    # a trusted key's line that does not verify: the whole note is refused, even beside a good one
    log = Log(log_signer)
    log.grow(4)
    good = notes.parse_note(log.checkpoint())
    bad = notes.Signature(good.signatures[0].name, good.signatures[0].key_id, bytes(64))
    assert (await post(client, encode_request(0, [], str(notes.Note(good.text, (*good.signatures, bad))).encode())
                       ))[0] == 403
    with pytest.raises(WitnessError) as refused:
        await cosign(client, impostor, 0, 4)
    assert refused.value.status == 403


async def test_404_for_an_unknown_origin(served: tuple[Witness, Client]) -> None:
    _, client = served
    signer = notes.NoteSigner("example.test/other-log", Ed25519PrivateKey.generate())
    text = notes.Checkpoint("example.test/other-log", 0, merkle.EMPTY_ROOT).text()
    assert (await post(client, encode_request(0, [], notes.sign_note(text, [signer]).encode())))[0] == 404


def _malformed_bodies(note: bytes, proof: list[bytes]) -> dict[str, bytes]:
    line = base64.b64encode(proof[0])
    return {
        "empty": b"",
        "no old line": note,
        "old with a leading zero": b"old 05\n\n" + note,
        "negative old": b"old -1\n\n" + note,
        "old with a space": b"old  5\n\n" + note,
        "no empty line": b"old 0\n",
        "old above the checkpoint": b"old 99\n\n" + note,
        "a proof line of 31 bytes": b"old 5\n" + base64.b64encode(proof[0][:31]) + b"\n\n" + note,
        "a proof line not base64": b"old 5\n" + line[:-2] + b"!!\n\n" + note,
        "too many proof lines": b"old 5\n" + (line + b"\n") * (MAX_PROOF_LINES + 1) + b"\n" + note,
        "bad UTF-8 in the note": b"old 5\n\n" + note.replace(b"\n\n", b"\xff\xfe\n\n", 1),
        "a control character": b"old 5\n\n" + note.replace(b"\n", b"\x07\n", 1),
        "no signature": b"old 5\n\n" + note.split(b"\n\n")[0] + b"\n",
        "a checkpoint of two lines": b"old 0\n\n" + note.split(b"\n", 2)[0] + b"\n5\n\n" + note.split(b"\n\n")[1],
        "a size of 2^64": b"old 0\n\n" + note.replace(b"\n12\n", b"\n18446744073709551616\n", 1),
    }


async def test_400_for_malformed_bodies(served: tuple[Witness, Client], log_signer: notes.NoteSigner) -> None:
    witness, client = served
    log = Log(log_signer)
    log.grow(12)
    await cosign(client, log, 0, 5)
    for name, body in _malformed_bodies(log.checkpoint(12), log.proof(5, 12)).items():
        status, text, _ = await post(client, body)
        assert status == 400, name
        assert "record" not in text and ORIGIN not in text, name  # fixed text, no line of the request
    # a body past [witness] max_body: 413 before anything is parsed
    status, _, _ = await post(client, b"old 5\n" + b"A" * (witness.max_body + 1))
    assert status == 413
    # a GET, or another path: not this endpoint
    assert (await client.get("/add-checkpoint")).status == 405
    # none of it moved the witness
    assert await cosign(client, log, 5, 12)


_PIECES = st.sampled_from(["old ", "0", "5", "12", "\n", "\n\n", "\u2014 ", ORIGIN, "AAAA", "=", " ", "+", "\xff",
                            base64.b64encode(bytes(32)).decode(), "\x00"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.lists(_PIECES, max_size=20).map(lambda p: "".join(p).encode("utf-8", "replace")))
def test_any_body_parses_or_is_refused_with_400(body: bytes) -> None:
    try:
        request = parse_request(body)
    except Refused as exc:
        refused = exc
    else:
        refused = None
        assert 0 <= request.old_size <= request.checkpoint.size and len(request.proof) <= MAX_PROOF_LINES
    assert refused is None or (refused.status == 400 and "\n" not in refused.detail)


# -- the fork ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fork_size", "old"), [(12, 12), (20, 12), (12, 5)],
                         ids=["same size", "larger size", "same size, stale old"])
async def test_a_fork_signed_with_the_real_log_key_is_refused_and_alarmed(
        served: tuple[Witness, Client], log_signer: notes.NoteSigner, cosigner: notes.Cosigner,
        fork_size: int, old: int) -> None:
    witness, client = served
    log = Log(log_signer)
    log.grow(12)
    await cosign(client, log, 0, 5)
    await cosign(client, log, 5, 12)
    # the key holder rewrites record 3 and signs the new history with the log's own key
    fork = log.forked(3)
    fork.grow(fork_size)
    assert fork.tree.root(12) != log.tree.root(12)
    with pytest.raises(WitnessError) as refused:
        await cosign(client, fork, old, fork_size, fork.proof(min(old, fork_size), fork_size))
    assert refused.value.status == (409 if old != 12 else 422)
    assert await forks_metric(client) == 1
    status, body = await readyz(client)
    assert status == 503 and body["checks"]["forks"]["state"] == "fail"
    assert ORIGIN in body["checks"]["forks"]["detail"]
    # the same evidence again is one fork, still refused
    with pytest.raises(WitnessError):
        await cosign(client, fork, old, fork_size, fork.proof(min(old, fork_size), fork_size))
    assert await forks_metric(client) == 1
    assert await witness.state.forks() == {ORIGIN: 1}
    # the witness still holds the honest tree, and never cosigned the fork
    origin_hash = hashlib.sha256(ORIGIN.encode()).hexdigest()
    latest = notes.open_checkpoint(await (await client.get(f"/{origin_hash}/checkpoint")).read(), origin=ORIGIN,
                                   log_keys=[log_signer.key], witness_keys=[cosigner.key])
    assert latest.checkpoint.root_hash == log.tree.root(12)


async def test_fork_log_line_names_origin_and_sizes_only(served: tuple[Witness, Client],
                                                         log_signer: notes.NoteSigner) -> None:
    from broker import logs

    out = io.StringIO()
    logs.configure(level="INFO", json=True, stream=out)
    _, client = served
    log = Log(log_signer)
    log.grow(7)
    await cosign(client, log, 0, 7)
    fork = log.forked(3)
    with pytest.raises(WitnessError):
        await cosign(client, fork, 7, 7, [])
    line = next(line for line in out.getvalue().splitlines() if "witness: fork" in line)
    assert '"level":"error"' in line.replace(" ", "") and ORIGIN in line
    root = base64.b64encode(fork.tree.root()).decode()
    assert root not in line and fork.tree.root().hex() not in line and "rewritten" not in line


# -- state: restart, and two requests at once ------------------------------------------------------


async def test_state_survives_a_restart(tmp_path: Path, cosigner: notes.Cosigner, log_signer: notes.NoteSigner,
                                        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    path = tmp_path / "state.sqlite"
    log = Log(log_signer)
    log.grow(12)
    async with witness_over(path, cosigner, log_signer, aiohttp_client) as (_, client):
        await cosign(client, log, 0, 5)
        fork = log.forked(1)
        with pytest.raises(WitnessError):
            await cosign(client, fork, 5, 5, [])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with witness_over(path, cosigner, log_signer, aiohttp_client) as (_, client):
        with pytest.raises(WitnessConflict) as conflict:
            await cosign(client, log, 0, 12)
        assert conflict.value.size == 5
        assert await cosign(client, log, 5, 12)
        status, body = await readyz(client)  # the fork is remembered until an operator acts
        assert status == 503 and body["checks"]["forks"]["state"] == "fail"


async def test_two_requests_from_one_old_size_advance_once(
        tmp_path: Path, cosigner: notes.Cosigner, log_signer: notes.NoteSigner,
        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    """Two witness processes' worth (two state connections) on one file, and requests in parallel."""
    path = tmp_path / "state.sqlite"
    log = Log(log_signer)
    log.grow(16)
    async with witness_over(path, cosigner, log_signer, aiohttp_client) as (_, a), \
            witness_over(path, cosigner, log_signer, aiohttp_client) as (_, b):
        await cosign(a, log, 0, 5)
        for round_ in range(5):
            old = 5 + round_ * 2
            sizes = (old + 1, old + 2)
            results = await asyncio.gather(*(post(c, encode_request(old, log.proof(old, s), log.checkpoint(s)))
                                             for c, s in zip((a, b), sizes, strict=True)))
            statuses = sorted(r[0] for r in results)
            assert statuses == [200, 409], results
            winner = sizes[[r[0] for r in results].index(200)]
            if winner != old + 2:  # move on from the size that won
                assert (await post(a, encode_request(winner, log.proof(winner, old + 2), log.checkpoint(old + 2)))
                        )[0] == 200
        with pytest.raises(WitnessConflict) as conflict:
            await cosign(b, log, 5, 16)
        assert conflict.value.size == 15
