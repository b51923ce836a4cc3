"""Key rotation without downtime, through a real broker on a real nats-server: new keys
published next to the old ones, messages signed or sealed with the old keys still accepted and
opened during the overlap, the old keys retired after it; the broker reloads in place (the
in-process equivalent of SIGHUP) and never stops serving."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from adapters.sdk import AgencyClient
from broker.audit.chain import is_checkpoint, is_tlog
from broker.audit.export import verify_store
from broker.config import Settings
from broker.errors import ConfigError, InvalidEnvelope
from broker.identity.keys import identity_path, load_identity
from broker.identity.rotation import plan_retirement, retire_keys, rotate_keys
from broker.pipeline.service import Broker
from broker.wire import _crypto, hpke, jws
from broker.wire.catalogue import Catalogue
from broker.wire.jws import unverified
from broker.wire.registry import Registry
from broker.wire.subjects import AUDIT
from tests.conftest import ClientFactory
from tests.helpers import counted, drain, eventually, referral, sharing

SGB = Path(sys.executable).parent / "sgb"


def _reload(client: AgencyClient, registry: Registry, settings: Settings, catalogue: Catalogue) -> None:
    """What an adapter does on SIGHUP."""
    registry.replace_with(Registry.load(settings.registry_path, catalogue))
    client.reload(registry, load_identity(settings.home, client.agency))


def _referral(client: AgencyClient) -> tuple[str, bytes]:
    return client.build(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())


async def _outcome(client: AgencyClient, jti: str, data: bytes | None = None) -> tuple[str, dict[str, object]]:
    if data is not None:
        await client.publish(data, jti)
    outcome = await client.wait_outcome(jti, timeout=10)
    return outcome.type, outcome.payload


def _doc(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


async def _audit_signed_with(js: JetStreamContext, kid: str, *, timeout: float = 10.0) -> None:
    """Wait until ``SG_AUDIT`` holds an audit block and a checkpoint signed with ``kid`` (bounded)."""
    found: set[bool] = set()  # is_checkpoint() of the messages signed with kid
    seq = 1

    async def both() -> bool:
        nonlocal seq
        while True:  # read on from where the last look stopped
            try:
                msg = await js.get_msg(AUDIT, seq, subject="sg.audit.>", next=True)
            except NotFoundError:
                return found == {True, False}
            seq = int(msg.seq or seq) + 1
            if not is_tlog(msg.subject or "") and unverified(msg.data or b"")[0].get("kid") == kid:
                found.add(is_checkpoint(msg.subject or ""))

    await eventually(both, what=f"an audit block and a checkpoint signed with {kid}", timeout=timeout)


async def test_waiting_delivery_opens_after_rotation_and_new_ones_use_the_new_key(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    old_kid = registry.recipient_key("la-camden", time.time())[0]
    waiting, data = _referral(police)
    typ, body = await _outcome(police, waiting, data)
    assert typ == "receipt" and body["recipients"] == ["la-camden"]  # the delivery waits, sealed to the old key
    task = broker.task

    done = rotate_keys(settings.home, settings.registry_path, "la-camden", overlap=3600)
    assert old_kid in done.ended and done.enc_kid not in (None, old_kid)
    assert broker.reload()  # SIGHUP
    old_identity = la.identity
    _reload(la, registry, settings, catalogue)
    assert set(la.identity.kem) == {old_kid, done.enc_kid}

    fresh, data = _referral(police)
    typ, body = await _outcome(police, fresh, data)
    assert typ == "receipt" and body["status"] == "routed"
    got = {d.origin[1]: d for d in await drain(la, want=2)}
    assert set(got) == {waiting, fresh}
    assert got[waiting].claims["enc"]["kid"] == old_kid and got[waiting].payload == referral()
    assert got[fresh].claims["enc"]["kid"] == done.enc_kid and got[fresh].payload == referral()
    with pytest.raises(InvalidEnvelope):  # only the new key opens it: the broker really sealed to it
        AgencyClient(None, None, registry, old_identity, catalogue).open(got[fresh].raw)  # type: ignore[arg-type]
    assert broker.task is task and not task.done()
    await counted(broker, 2)
    assert broker.pipeline.counters.rejected == {}


async def test_old_signing_key_accepted_during_overlap(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    old_sig = police.identity.sig_kid
    before, before_data = _referral(police)  # signed with the old key, published after the rotation

    done = rotate_keys(settings.home, settings.registry_path, "police-met", overlap=3600)
    assert old_sig in done.ended
    assert broker.reload()
    _reload(police, registry, settings, catalogue)
    assert police.identity.sig_kid == done.sig_kid != old_sig

    assert jws.read_header(before_data)["kid"] == old_sig
    typ, body = await _outcome(police, before, before_data)
    assert typ == "receipt" and body["status"] == "routed"  # the receipt is sealed to police's new key
    after, after_data = _referral(police)
    assert jws.read_header(after_data)["kid"] == done.sig_kid
    typ, body = await _outcome(police, after, after_data)
    assert typ == "receipt" and body["status"] == "routed"
    assert {d.origin[1] for d in await drain(la, want=2)} == {before, after}
    await counted(broker, 2)
    assert broker.pipeline.counters.rejected == {}


async def test_retired_keys_are_gone_and_rejected(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    key_file = identity_path(settings.home, "police-met")
    old = _doc(key_file)
    old_kids = {old["sig"]["kid"], *(e["kid"] for e in old["enc"])}
    old_enc = {e["kid"] for e in old["enc"]}
    old_signing, old_decryption = old["sig"]["d"], [e["x"] for e in old["enc"]]
    stale = [_referral(police) for _ in range(3)]  # signed with the old key
    task = broker.task

    done = rotate_keys(settings.home, settings.registry_path, "police-met", overlap=1.5)
    assert broker.reload()
    _reload(police, registry, settings, catalogue)
    typ, _ = await _outcome(police, *stale[0])  # during the overlap
    assert typ == "receipt"
    assert plan_retirement(settings.registry_path, "police-met", now=time.time()).removed == ()
    await asyncio.sleep(max(done.not_after - time.time(), 0) + 0.2)

    typ, body = await _outcome(police, *stale[1])  # after it, before retirement: expired
    assert typ == "rejection" and body["code"] == "unknown-key" and "validity" in str(body["reason"])

    gone = retire_keys(settings.home, settings.registry_path, "police-met", now=time.time())
    assert set(gone.removed) == old_kids and gone.kept == () and gone.purged == ()
    listed = {k["kid"] for a in _doc(settings.registry_path)["agencies"] for k in a["keys"]}
    assert not listed & old_kids and {done.sig_kid, done.enc_kid} <= listed
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    text = key_file.read_text()
    assert old_signing not in text  # the old signing key is gone: it reads nothing
    assert all(x in text for x in old_decryption)  # the old decryption key stays: what is kept sealed to it opens
    assert set(load_identity(settings.home, "police-met").kem) == old_enc | {done.enc_kid}
    assert broker.reload()
    _reload(police, registry, settings, catalogue)

    typ, body = await _outcome(police, *stale[2])
    assert typ == "rejection" and body["code"] == "unknown-key" and "not in the trust registry" in str(body["reason"])
    fresh, data = _referral(police)
    typ, body = await _outcome(police, fresh, data)
    assert typ == "receipt" and body["status"] == "routed"
    # served throughout, by the same pipeline: every message got its outcome, none lost
    assert broker.task is task and not task.done()
    await counted(broker, 4)
    assert broker.pipeline.counters.rejected == {"unknown-key": 2}
    assert {d.origin[1] for d in await drain(la, want=2)} == {stale[0][0], fresh}

    # removing the old decryption keys too is a separate, explicit step
    purged = retire_keys(settings.home, settings.registry_path, "police-met", now=time.time(), purge=True)
    assert purged.removed == () and set(purged.purged) == old_enc
    text = key_file.read_text()
    assert not any(x in text for x in [old_signing, *old_decryption]) and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert set(load_identity(settings.home, "police-met").kem) == {done.enc_kid}
    assert retire_keys(settings.home, settings.registry_path, "police-met", now=time.time(), purge=True).purged == ()


async def test_broker_rotation_reload_refuses_a_registry_without_its_key_file(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    key_file = identity_path(settings.home, "sg-broker")
    old_key_file = key_file.read_bytes()
    old_sig = broker.identity.sig_kid
    done = rotate_keys(settings.home, settings.registry_path, "sg-broker", overlap=3600)
    new_key_file = key_file.read_bytes()

    key_file.write_bytes(old_key_file)  # the registry was copied, the key file not
    assert not broker.reload()
    assert broker.identity.sig_kid == old_sig and registry.get("sg-broker") is not None
    key_file.write_bytes(new_key_file)
    _reload(police, registry, settings, catalogue)  # adapters first: they accept the broker's new key
    _reload(la, registry, settings, catalogue)
    assert broker.reload()
    assert broker.identity.sig_kid == done.sig_kid and set(broker.identity.kem) >= {done.enc_kid}

    jti, data = _referral(police)
    assert police.registry.recipient_key("sg-broker", time.time())[0] == done.enc_kid  # sealed to the new key
    typ, _ = await _outcome(police, jti, data)
    assert typ == "receipt"
    (delivery,) = await drain(la, want=1)
    assert jws.read_header(delivery.raw)["kid"] == done.sig_kid
    await _audit_signed_with(broker.js, done.sig_kid)
    report = await verify_store(broker.js, Registry.load(settings.registry_path, catalogue))
    assert report.ok, report.problems
    # the broker's old signing key is never retired: old audit blocks are verified with it
    plan = plan_retirement(settings.registry_path, "sg-broker", now=done.not_after + 1)
    assert old_sig in plan.kept and old_sig not in plan.removed


async def test_a_message_sealed_to_a_retired_broker_key_is_undecryptable(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue) -> None:
    """Retirement keeps the broker's old decryption key in its key file (stored data stays
    readable), but intake no longer opens new messages sealed to a key the registry dropped."""
    police = await agency("police-met")
    jti, data = _referral(police)  # sealed to the broker's current encryption key
    done = rotate_keys(settings.home, settings.registry_path, "sg-broker", overlap=1.0)
    _reload(police, registry, settings, catalogue)
    assert broker.reload()
    await eventually(lambda: bool(plan_retirement(settings.registry_path, "sg-broker", now=time.time()).enc),
                 what="the end of the overlap")
    retired = retire_keys(settings.home, settings.registry_path, "sg-broker", now=time.time())
    assert retired.enc and set(retired.enc) <= set(load_identity(settings.home, "sg-broker").kem)  # kept
    _reload(police, registry, settings, catalogue)
    assert broker.reload() and done.enc_kid in broker.identity.kem
    typ, payload = await _outcome(police, jti, data)
    assert (typ, payload["code"]) == ("rejection", "undecryptable")


def test_hybrid_agency_keeps_its_suite_and_retire_refuses_to_leave_no_key(home: Path, catalogue: Catalogue) -> None:
    registry_path = home / "registry.json"
    done = rotate_keys(home, registry_path, "health-camden", overlap=60, enc_delay=30, now=1_000_000.0)
    assert done.suite == _crypto.HYBRID_SUITE and done.enc_from == 1_000_030.0
    registry = Registry.load(registry_path, catalogue)
    key = next(k for k in registry.get("health-camden").keys if k.kid == done.enc_kid)  # type: ignore[union-attr]
    assert key.alg == "MLKEM768X25519" and key.pq is not None and key.not_before == 1_000_030.0
    assert registry.recipient_key("health-camden", 1_000_010.0)[0] != done.enc_kid  # not yet in use
    kid, suite, public = registry.recipient_key("health-camden", 1_000_031.0)
    assert kid == done.enc_kid and suite == _crypto.HYBRID_SUITE
    sealed = hpke.seal_payload(b'{"a":1}', jti="j", iss="sg-broker", typ="referral", ver=1, recipient="health-camden",
                               kid=kid, suite=suite, public_key=public)
    claims = {"jti": "j", "iss": "sg-broker", "typ": "referral", "ver": 1, "payload": sealed.payload,
              "enc": {"suite": suite, "kid": kid}}
    kem = load_identity(home, "health-camden").kem_key(kid)
    assert kem is not None and hpke.open_payload(claims, "health-camden", kem) == b'{"a":1}'

    # school-hillside's only keys expire without a rotation: retiring them would leave none
    doc = _doc(registry_path)
    for entry in doc["agencies"]:
        if entry["id"] == "school-hillside":
            for k in entry["keys"]:
                k["notAfter"] = "2001-01-01T00:00:00Z"
    registry_path.write_bytes(orjson.dumps(doc))
    before = registry_path.read_bytes(), identity_path(home, "school-hillside").read_bytes()
    with pytest.raises(ConfigError, match="rotate"):
        retire_keys(home, registry_path, "school-hillside", now=time.time())
    assert (registry_path.read_bytes(), identity_path(home, "school-hillside").read_bytes()) == before
    with pytest.raises(ConfigError):
        rotate_keys(home, registry_path, "police-met", overlap=10, enc_delay=10)


async def _sgb(*args: str, home: Path, url: str | None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")} | {"SGB_HOME": str(home)}
    if url:
        env["SGB_NATS_URL"] = url
    proc = await asyncio.create_subprocess_exec(str(SGB), *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(120)
async def test_cli_rotate_and_retire_waits_for_queued_deliveries(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue) -> None:
    home, url = settings.home, settings.nats.url
    police, la = await agency("police-met"), await agency("la-camden")
    waiting, data = _referral(police)
    assert (await _outcome(police, waiting, data))[0] == "receipt"
    old_kids = {k.kid for k in Registry.load(settings.registry_path, Catalogue()).get("la-camden").keys}  # type: ignore[union-attr]
    old_enc = {e["kid"] for e in _doc(identity_path(home, "la-camden"))["enc"]}

    rc, out, err = await _sgb("keys", "rotate", "--agency", "la-camden", "--overlap-days", "0.00001",
                              "--enc-delay-minutes", "0", "--home", str(home), home=home, url=url)
    assert rc == 0, err
    assert "new signing key la-camden-sig-" in out and "new encryption key la-camden-enc-" in out
    assert "SIGHUP" in out and "sgb keys retire --agency la-camden" in out and "from now (" in out
    entry = next(a for a in _doc(settings.registry_path)["agencies"] if a["id"] == "la-camden")
    assert len(entry["keys"]) == 4 and all("notAfter" in k for k in entry["keys"] if k["kid"] in old_kids)
    assert stat.S_IMODE(identity_path(home, "la-camden").stat().st_mode) == 0o600
    await eventually(lambda: plan_retirement(settings.registry_path, "la-camden", now=time.time()).removed != (),
                 what="the end of the overlap (0.864 s)")

    # purging the old decryption key would strand the delivery still waiting sealed to it: refused
    rc, out, err = await _sgb("keys", "retire", "--agency", "la-camden", "--purge-decryption-keys", home=home, url=url)
    assert rc == 1 and "1 messages still waiting" in err, out + err
    assert {k["kid"] for k in entry["keys"]} <= {k["kid"] for a in _doc(settings.registry_path)["agencies"]
                                                 for k in a["keys"]}
    # a plain retirement keeps the decryption key, so the delivery waiting sealed to it still opens
    rc, out, err = await _sgb("keys", "retire", "--agency", "la-camden", home=home, url=url)
    assert rc == 0, err
    assert all(kid in out for kid in old_kids) and "SIGHUP" in out and "kept in the key file" in out
    listed = {k["kid"] for a in _doc(settings.registry_path)["agencies"] for k in a["keys"]}
    assert not listed & old_kids
    _reload(la, registry, settings, catalogue)  # la's adapter loads the retired registry and key file
    (delivery,) = await drain(la, want=1)
    assert delivery.origin[1] == waiting and delivery.claims["enc"]["kid"] in old_enc

    rc, out, err = await _sgb("keys", "retire", "--agency", "la-camden", "--purge-decryption-keys", home=home, url=url)
    assert rc == 0, err
    assert "warning" in err and "never be opened again" in err and all(kid in out for kid in old_enc)
    assert not old_enc & set(load_identity(home, "la-camden").kem)
    rc, out, _ = await _sgb("keys", "retire", "--agency", "la-camden", "--purge-decryption-keys", home=home, url=url)
    assert rc == 0 and "nothing to retire" in out


async def test_cli_rotate_seals_to_the_new_key_an_hour_later_by_default(home: Path) -> None:
    """Without ``--enc-delay-minutes``, nothing is sealed to an agency's new key (nor, by the
    adapters, to the broker's) for an hour: time for its processes to load the new key file."""
    registry_path = home / "registry.json"
    for party, who in (("la-camden", "brokers start sealing la-camden's deliveries"),
                       ("sg-broker", "adapters start sealing to the broker's new encryption key")):
        before = time.time()
        rc, out, err = await _sgb("keys", "rotate", "--agency", party, home=home, url=None)
        after = time.time()
        assert rc == 0, err
        new_enc = next(k for a in _doc(registry_path)["agencies"] if a["id"] == party for k in a["keys"]
                       if k["use"] == "enc" and "notBefore" in k)
        # (the command may take seconds to start on a loaded machine: look from after it)
        not_before = Registry.load(registry_path, Catalogue()).get(party).enc_key(after + 3601).not_before  # type: ignore[union-attr]
        assert not_before is not None and before + 3600 <= not_before <= after + 3600
        (step,) = [line for line in out.splitlines() if who in line]
        assert step.strip().startswith(f"3. at {new_enc['notBefore']}:"), out
        assert f"sealed to from {new_enc['notBefore']}" in out and f"before {new_enc['notBefore']}" in out
        assert Registry.load(registry_path, Catalogue()).recipient_key(party, time.time())[0] != new_enc["kid"]

    # an overlap shorter than the default delay is refused, naming the option
    rc, _, err = await _sgb("keys", "rotate", "--agency", "police-met", "--overlap-days", "0.01", home=home, url=None)
    assert rc == 1 and "--enc-delay-minutes (60)" in err


def test_api_tokens_from_a_rotated_issuer_are_accepted_after_reload(home: Path, catalogue: Catalogue) -> None:
    """The API's verifier reads the shared registry at each check: a reload is enough."""
    from broker.config import ApiSettings
    from broker.http.tokens import AuthError, TokenVerifier, mint

    api = ApiSettings()
    registry = Registry.load(home / "registry.json", catalogue)
    verifier = TokenVerifier(registry, api)
    rotate_keys(home, home / "registry.json", api.issuer, overlap=3600)
    token = mint(load_identity(home, api.issuer), sub="ig-1", roles=["ig-officer"], settings=api)
    with pytest.raises(AuthError):
        verifier.verify(token)  # the running service has not reloaded yet
    registry.replace_with(Registry.load(home / "registry.json", catalogue))
    assert verifier.verify(token).sub == "ig-1"
