"""Scale-out on a real three-node NATS cluster on loopback, with replicated streams and two
broker instances: 2,000 referrals while the ingress stream's leader node and one broker are
killed. Every message reaches the agency system once (through the SDK's idempotent hand-over,
as an adapter uses it) and is audited; none lost, none twice.

Marked ``slow`` (about a minute); ``make test`` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from adapters.sdk import AgencyClient, SeenStore
from broker.audit.export import verify_store
from broker.audit.reading import read_audit
from broker.config import Settings
from broker.errors import PublishTimeout, TransportError
from broker.identity.keys import load_identity
from broker.transport.connection import connected, jetstream
from broker.transport.errors import NATS_FAILURES
from broker.transport.natsserver import nats_server_binary
from broker.transport.topology import ensure_topology
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry, addressable
from broker.wire.subjects import AUDIT, DELIVERY, INGRESS
from tests.conftest import make_settings
from tests.helpers import eventually, referral, sharing
from tests.support.casesystem import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
MESSAGES = 2000
TRANSPORT = (TransportError, *NATS_FAILURES)  # what a dying node raises; anything else fails the test
DELIVERY_ACK_WAIT = 10.0  # a delivery whose fetch died with its node comes back this soon (60 s by default)


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


class Node:
    def __init__(self, index: int, root: Path, client: int, route: int, routes: list[int]) -> None:
        self.name, self.client = f"n{index}", client
        self.dir = root / self.name
        self.dir.mkdir(parents=True)
        self.conf = self.dir / "nats.conf"
        self.conf.write_text(
            f'server_name: {self.name}\nlisten: 127.0.0.1:{client}\n'
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}\n'
            f'cluster {{ name: sgbtest\n listen: 127.0.0.1:{route}\n'
            f' routes: [{", ".join(f"nats-route://127.0.0.1:{r}" for r in routes)}] }}\n')
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client}"

    async def start(self) -> None:
        with (self.dir / "server.log").open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = await asyncio.create_subprocess_exec(nats_server_binary(), "-c", str(self.conf),
                                                             stdout=log, stderr=log)

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def cluster(root: Path) -> AsyncIterator[list[Node]]:
    clients, routes = _free_ports(3), _free_ports(3)
    nodes = [Node(i + 1, root, clients[i], routes[i], routes) for i in range(3)]
    try:
        for node in nodes:
            await node.start()
        yield nodes
    finally:
        for node in nodes:
            await node.kill()


async def _broker_process(home: Path, url: str, instance: str, *, replicas: int) -> asyncio.subprocess.Process:
    config = home / f"{instance}.toml"
    config.write_text(f"[streams]\nreplicas = {replicas}\n[nats]\nrequest_timeout = 5.0\n"
                      f"[pipeline]\ndelivery_ack_wait = {DELIVERY_ACK_WAIT}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")} | {
        "SGB_HOME": str(home), "SGB_NATS_URL": url, "SGB_INSTANCE": instance, "SGB_ACK_WAIT": "5",
        "SGB_CONFIG": str(config)}
    with (home / f"{instance}.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker.cli", "serve", "--workers", "1", env=env, stdout=asyncio.subprocess.DEVNULL,
            stderr=log)


async def _running(proc: asyncio.subprocess.Process, log: Path) -> None:
    def started() -> bool:
        assert proc.returncode is None, f"the broker exited: {log.read_text()[-1000:]}"
        return "broker running" in log.read_text()

    await eventually(started, what=f"the broker to start (see {log})", timeout=30, every=0.1)


async def test_two_brokers_on_a_cluster_survive_a_leader_and_a_broker_dying(home: Path, tmp_path: Path) -> None:
    async with cluster(tmp_path / "cluster") as nodes:
        url = ",".join(n.url for n in nodes)
        settings = make_settings(home, url)
        settings = replace(settings, streams=replace(settings.streams, replicas=3),
                           nats=replace(settings.nats, request_timeout=5.0),
                           pipeline=replace(settings.pipeline, delivery_ack_wait=DELIVERY_ACK_WAIT))
        registry = Registry.load(settings.registry_path, Catalogue())
        async def topology() -> bool:  # once the cluster has elected its meta leader
            try:
                async with connected(settings, url, name="setup") as nc:
                    await ensure_topology(jetstream(nc, settings), settings.streams, settings.pipeline,
                                          addressable(registry))
            except TRANSPORT as exc:
                failures.append(repr(exc))
                return False
            return True

        failures: list[str] = []
        await eventually(topology, what=f"the streams on the cluster (failures: {failures[-3:]})", timeout=30,
                         every=0.5)
        a = await _broker_process(home, url, "broker-a", replicas=3)
        b = await _broker_process(home, url, "broker-b", replicas=1)  # misconfigured: must not lower replication
        for proc, name in ((a, "broker-a"), (b, "broker-b")):
            await _running(proc, home / f"{name}.log")
        try:
            await _run(settings, url, registry, nodes, a)
        finally:
            for proc in (a, b):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), 30)
                    if proc.returncode is None:
                        proc.kill()


async def _published(police: AgencyClient, data: bytes, jti: str) -> bool:
    """Publish once (the SDK retries within its own deadline); False while no node stores it."""
    try:
        await police.publish(data, jti)
    except PublishTimeout:
        return False
    return True


async def _run(settings: Settings, url: str, registry: Registry, nodes: list[Node],
               broker_a: asyncio.subprocess.Process) -> None:
    catalogue = Catalogue()
    async with connected(settings, url, name="police", party="police-met") as pnc, \
            connected(settings, url, name="la", party="la-camden") as lnc:
        police = AgencyClient(pnc, jetstream(pnc, settings), registry, load_identity(settings.home, "police-met"),
                              catalogue, seen=SeenStore(settings.home / "p.sqlite"), request_timeout=2.0)
        la = AgencyClient(lnc, jetstream(lnc, settings), registry, load_identity(settings.home, "la-camden"),
                          catalogue, seen=SeenStore(settings.home / "l.sqlite"), request_timeout=10.0)
        sent: list[str] = []
        received: dict[str, int] = {}
        wire_duplicates: list[str] = []
        seen = la.seen
        assert seen is not None

        async def collect() -> None:
            while len(received) < MESSAGES:
                try:
                    async for delivery, msg in la.fetch(batch=256, idle=2.0):
                        assert delivery is not None
                        if await seen.has(delivery.id):  # as an adapter does: hand over once per delivery id
                            wire_duplicates.append(delivery.id)
                        else:
                            await seen.add(delivery.id)
                            origin = delivery.claims["origin"]["jti"]
                            received[origin] = received.get(origin, 0) + 1
                        await msg.ack_sync(timeout=10)
                except TRANSPORT:  # a node died under the fetch or the ack: fetch again (an assertion fails the test)
                    await asyncio.sleep(0.2)

        collector = asyncio.create_task(collect())
        started = asyncio.get_running_loop().time()
        leader = (await jetstream(pnc, settings).stream_info(INGRESS)).cluster
        assert leader is not None and leader.leader
        for i in range(MESSAGES):
            if i == MESSAGES // 3:
                await next(n for n in nodes if n.name == leader.leader).kill()  # the ingress leader dies
            if i == MESSAGES // 2:
                broker_a.kill()  # and one broker instance, mid-stream
            jti, data = police.build(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            await eventually(lambda data=data, jti=jti: _published(police, data, jti),
                             what=f"JetStream to store message {i}", timeout=60, every=0.25)
            sent.append(jti)
        published = asyncio.get_running_loop().time()
        await asyncio.wait_for(collector, 180)
        # a delivery whose fetch died with its node comes back after the agency durable's ack_wait
        handed = asyncio.get_running_loop().time() - published
        print(f"published in {published - started:.1f} s; all handed over {handed:.1f} s later")
        assert set(received) == set(sent)  # none lost
        assert [k for k, n in received.items() if n > 1] == []  # none twice to the agency system
        # A redelivery on the wire is possible when a broker dies between storing a delivery and
        # acking its ingress message and the delivery stream's leader changes in between (the new
        # leader's duplicate window no longer holds the id of a delivery already acked and removed);
        # the adapter's idempotent hand-over absorbs it. Reported, not hidden:
        print(f"wire duplicates absorbed by the hand-over: {len(wire_duplicates)}")
        # every message audited: received and shared, under whichever instance handled it
        js = jetstream(pnc, settings)
    async with connected(settings, url, name="auditor") as anc:
        js = jetstream(anc, settings)
        shared = {r["message"] async for r in read_audit(js) if r.get("event") == "shared"}
        assert shared >= set(sent)
        report = await verify_store(js, registry)
        assert report.ok, [str(p) for p in report.problems]
        for stream in (INGRESS, DELIVERY, AUDIT):
            assert (await js.stream_info(stream)).config.num_replicas == 3, stream
