"""Least privilege on a real nats-server running the authorisation ``sgb keys init`` wrote:
the story works with each party's own nkey, and every step outside a party's part is refused."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig

from adapters.sdk import AgencyClient, SeenStore
from broker.config import Settings
from broker.identity.keys import load_identity
from broker.pipeline import deadlines
from broker.pipeline.service import running_broker
from broker.transport.connection import connected, embedded, jetstream
from broker.transport.topology import ensure_topology
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry, addressable
from broker.wire.subjects import AUDIT, AUDIT_HEADS_BUCKET, DELIVERY, INGRESS, LEASES_BUCKET, tlog_subject
from tests.conftest import make_settings
from tests.helpers import drain, eventually, referral, sharing

pytestmark = pytest.mark.timeout(90)
DENIED = (TimeoutError, nats.errors.Error, nats.js.errors.APIError)


@pytest.fixture
async def secured(home: Path) -> AsyncIterator[Settings]:
    """The home's embedded server with its authorisation, the topology made as the broker."""
    assert (home / "nats" / "authorization.conf").exists()
    settings = make_settings(home, "")
    async with embedded(settings) as url:
        settings = settings.with_nats_url(url)
        registry = Registry.load(settings.registry_path, Catalogue())
        async with connected(settings, url, name="setup") as nc:
            await ensure_topology(jetstream(nc, settings), settings.streams, settings.pipeline, addressable(registry))
        yield settings


@contextlib.asynccontextmanager
async def as_agency(settings: Settings, agency: str, tmp: Path) -> AsyncIterator[tuple[Any, AgencyClient]]:
    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    async with connected(settings, settings.nats.url or "", name=agency, party=agency) as nc:
        seen = SeenStore(tmp / f"{agency}.sqlite")
        try:
            yield nc, AgencyClient(nc, jetstream(nc, settings), registry, load_identity(settings.home, agency),
                                   catalogue, seen=seen, request_timeout=2.0)
        finally:
            seen.close()


async def test_the_story_works_with_least_privilege(secured: Settings, tmp_path: Path) -> None:
    async with running_broker(secured, secured.nats.url or ""), \
            as_agency(secured, "police-met", tmp_path) as (_, police), \
            as_agency(secured, "la-camden", tmp_path) as (_, la):
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        assert (await police.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
        (delivery,) = await drain(la, want=1)
        assert delivery.claims["origin"]["jti"] == jti


async def test_the_broker_holds_the_deadline_lease_and_an_agency_cannot_touch_it(secured: Settings,
                                                                                  tmp_path: Path) -> None:
    """An agency that could write the lease could stop every instance scanning the deadlines."""
    async with running_broker(secured, secured.nats.url or "") as broker, \
            as_agency(secured, "police-met", tmp_path) as (nc, _):
        await eventually(lambda: broker.metrics.registry.get_sample_value("sgb_deadline_scanner_leader") == 1.0,
                         what="the broker to take the deadline lease under its own nkey")
        js = nc.jetstream(timeout=0.5)
        with pytest.raises(DENIED):
            await js.publish(f"$KV.{LEASES_BUCKET}.{deadlines.LEASE}", b'{"holder": "police-met", "expires": 9e9}')
        with pytest.raises(DENIED):
            await js.get_last_msg(f"KV_{LEASES_BUCKET}", f"$KV.{LEASES_BUCKET}.{deadlines.LEASE}")
        with pytest.raises(DENIED):
            await js.purge_stream(f"KV_{LEASES_BUCKET}")


async def test_an_agency_is_refused_everything_else(secured: Settings, tmp_path: Path) -> None:
    async with running_broker(secured, secured.nats.url or ""), \
            as_agency(secured, "police-met", tmp_path) as (nc, police), \
            as_agency(secured, "la-camden", tmp_path) as (_, la):
        first = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        await police.wait_outcome(first, timeout=10)  # so la-camden's queue and the audit log hold something
        js = nc.jetstream(timeout=0.5)
        with pytest.raises(DENIED):  # speaking as another agency
            await js.publish("sg.in.la-camden", b"x")
        sub = await js.pull_subscribe_bind("la-camden", DELIVERY)  # binding alone asks nothing of the server
        with pytest.raises(DENIED):  # reading another agency's deliveries
            await sub.fetch(1, timeout=0.5)
        with pytest.raises(DENIED):
            await js.add_stream(StreamConfig(name="MINE", subjects=["mine.>"]))
        with pytest.raises(DENIED):
            await js.add_consumer(DELIVERY, durable_name="sneaky", filter_subject="sg.out.la-camden")
        with pytest.raises(DENIED):
            await js.update_stream(StreamConfig(name=INGRESS, subjects=["sg.in.*"], max_msgs=1))
        with pytest.raises(DENIED):
            await js.purge_stream(DELIVERY)
        with pytest.raises(DENIED):
            await js.delete_stream(AUDIT)
        with pytest.raises(DENIED):
            await js.get_last_msg(AUDIT, "sg.audit.test-1")
        with pytest.raises(DENIED):  # nor its transparency checkpoints
            await js.get_last_msg(AUDIT, tlog_subject("test-1"))
        with pytest.raises(DENIED):
            await js.consumer_info(DELIVERY, "la-camden")
        # a raw subscription outside its inbox is refused by the server
        errors: list[str] = []

        async def note(exc: Exception) -> None:
            errors.append(str(exc))

        raw = await nats.connect(secured.nats.url or "", nkeys_seed=str(secured.home / "keys" / "nats" /
                                                                       "police-met.nk"),
                                 error_cb=note, allow_reconnect=False)
        await raw.subscribe("sg.out.la-camden")
        await raw.flush(timeout=2)
        try:
            await eventually(lambda: any("permissions violation" in e.lower() for e in errors),
                             what=f"the server to refuse the subscription (errors: {errors})", timeout=2)
        finally:
            await raw.close()
        # and its own part still works: nothing above broke the connection
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        assert (await police.wait_outcome(jti, timeout=10)).type == "receipt"
        got = await drain(la, want=2)  # the first one too: police's attempt to take it did not
        assert {d.claims["origin"]["jti"] for d in got} == {first, jti}


async def test_nobody_deletes_or_purges_the_audit_log(secured: Settings) -> None:
    async with running_broker(secured, secured.nats.url or ""), \
            connected(secured, secured.nats.url or "", name="broker-admin") as nc:
        js = nc.jetstream(timeout=0.5)
        for attempt in (js.delete_stream(AUDIT), js.purge_stream(AUDIT), js.delete_msg(AUDIT, 1),
                        js.delete_stream(f"KV_{AUDIT_HEADS_BUCKET}"), js.purge_stream(f"KV_{AUDIT_HEADS_BUCKET}")):
            with pytest.raises(DENIED):
                await attempt
        with pytest.raises(DENIED):  # the broker never speaks as an agency
            await js.publish("sg.in.police-met", b"x")
        assert (await js.stream_info(AUDIT)).config.deny_delete


async def test_strangers_cannot_connect(secured: Settings, tmp_path: Path) -> None:
    secured = replace(secured, nats=replace(secured.nats, connect_timeout=0.5))
    anonymous = replace(secured, home=tmp_path / "anonymous")  # no credentials at all
    with pytest.raises(Exception, match="cannot connect"):
        async with connected(anonymous, secured.nats.url or "", name="anonymous"):
            pass
    other = replace(secured, home=tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "keys" / "nats").mkdir(parents=True)
    from broker.identity import natsauth

    natsauth.create_seed(other.home, "sg-broker")  # a key the server does not know
    with pytest.raises(Exception, match="cannot connect"):
        async with connected(other, secured.nats.url or "", name="stranger"):
            pass


def _write_tls(tls: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 (made with cryptography's x509)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key: Any, issuer: str, signer: Any, *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "ca.pem").write_bytes(cert("test CA", ca_key, "test CA", ca_key, ca=True).public_bytes(
        serialization.Encoding.PEM))
    (tls / "server.pem").write_bytes(cert("127.0.0.1", server_key, "test CA", ca_key, ca=False).public_bytes(
        serialization.Encoding.PEM))
    (tls / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


async def test_embedded_server_uses_tls_when_certificates_are_there(home: Path, tmp_path: Path) -> None:
    _write_tls(home / "nats" / "tls")
    settings = make_settings(home, "")
    async with embedded(settings) as url:
        settings = settings.with_nats_url(url)
        async with connected(settings, url, name="tls") as nc:
            assert nc._server_info.get("tls_required")
            await ensure_topology(jetstream(nc, settings), settings.streams, settings.pipeline, [])
        plain = replace(settings, home=tmp_path / "plain", nats=replace(settings.nats, connect_timeout=0.5,
                                                                           nkey_seed=home / "keys" / "nats" /
                                                                           "sg-broker.nk"))
        with pytest.raises(Exception, match="cannot connect"):  # no CA: the server's certificate is not trusted
            async with connected(plain, url, name="plain"):
                pass


@pytest.mark.parametrize("node", ["compose-node.conf", "node1.conf"])
def test_deploy_cluster_configs_are_valid_for_nats_server(node: str, home: Path, tmp_path: Path) -> None:
    """nats-server itself checks the shipped configurations, with the authorisation keys init wrote
    (TLS files and store paths pointed at throwaway ones)."""
    import subprocess

    from broker.transport.natsserver import nats_server_binary

    deploy = Path(__file__).resolve().parent.parent / "deploy" / "nats"
    text = (deploy / node).read_text().replace("/var/lib/nats/jetstream", str(tmp_path / "js")).replace(
        "/data", str(tmp_path / "js"))
    _write_tls(tmp_path / "tls")
    for name, source in (("node1.pem", "server.pem"), ("node1.key", "server.key"), ("ca.pem", "ca.pem")):
        text = text.replace(f"/etc/nats/tls/{name}", str(tmp_path / "tls" / source))
    (tmp_path / "node.conf").write_text(text)
    (tmp_path / "authorization.conf").write_text((home / "nats" / "authorization.conf").read_text())
    done = subprocess.run([nats_server_binary(), "-t", "-c", str(tmp_path / "node.conf")], capture_output=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
