"""``sgb serve --workers 2`` run as an operator runs it (issue 15): one supervisor process (worker
0, with the embedded NATS and the HTTP endpoints) and a child worker on the same consumer.

- Both take work; each keeps its own audit chain and both chains verify; ``/metrics`` counts
  what both received; SIGTERM stops the whole tree within the drain deadline.
- SIGHUP and maintenance mode reach the child (a SIGHUP that changes the triage, the review
  queue too); a child killed with SIGKILL is started again and ``/readyz`` says so meanwhile;
  when the supervisor itself is killed, the child stops by itself.
- How many: ``--workers``, else ``[pipeline] workers`` or ``SGB_WORKERS``, else the cores; how
  ``/metrics`` merges the workers' metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.sdk import AgencyClient
from broker.cli.main import build_parser
from broker.config import Settings
from broker.errors import ConfigError
from broker.identity.devkeys import init_dev_keys
from broker.identity.keys import load_identity
from broker.pipeline.metrics import Metrics
from broker.pipeline.workers import merged
from broker.policy.rulebook import DEFAULT_RULEBOOK
from broker.transport.connection import connected, jetstream
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from tests.helpers import drain, eventually, referral, sharing
from tests.support.casesystem import free_port
from tests.support.cli import serving, sgb
from tests.support.web import auth

pytestmark = pytest.mark.timeout(120)
INSTANCE = "t-workers"
DRAIN = 5.0


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "h"
    init_dev_keys(home, home / "registry.json")
    # small fetches, so that both workers take a share of a burst
    (home / "rulebook.yaml").write_text(DEFAULT_RULEBOOK.read_text())  # a copy the SIGHUP test changes
    (home / "broker.toml").write_text(f"rulebook = \"{home / 'rulebook.yaml'}\"\n[pipeline]\nfetch_batch = 2\n"
                                      f"max_in_flight = 4\ndrain_timeout = {DRAIN}\n")
    yield home
    with contextlib.suppress(OSError, ValueError):  # the embedded nats-server, when a test left it running
        os.kill(int((home / "nats" / "url").read_text().split()[1]), signal.SIGKILL)


def _serve(home: Path, port: int) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """``sgb serve --workers 2 --http``, its log (both workers') in the home."""
    return serving(home, "--workers", "2", "--http", f"127.0.0.1:{port}", "--config", str(home / "broker.toml"),
                   env={"SGB_INSTANCE": INSTANCE})


def _settings(home: Path) -> Settings:
    return Settings(home=home, registry_path=home / "registry.json", instance="t-client")


def _children(pid: int) -> list[int]:
    """The child workers of ``pid`` (not its nats-server), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in map(int, task.read_text().split()):
                with contextlib.suppress(OSError):
                    if b"--worker-channel" in Path(f"/proc/{child}/cmdline").read_bytes():
                        found.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped, as an orphan may be in a container, has stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _get(port: int, path: str) -> tuple[int, str] | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
            return r.status, await r.text()
    except aiohttp.ClientError:
        return None


async def _until_ready(port: int, ready: bool, what: str) -> None:
    async def probe() -> bool:
        got = await _get(port, "/readyz")
        return got is not None and (got[0] == 200) == ready
    await eventually(probe, what=what, timeout=30, every=0.1)


def _logged(home: Path, event: str) -> int:
    return (home / "serve.log").read_text().count(f'"event": "{event}"')


async def test_two_workers_share_the_work_each_with_its_own_chain_and_stop_together(home: Path) -> None:
    port = free_port()
    async with _serve(home, port) as serve:
        await _until_ready(port, True, "both workers to be ready")
        (child,) = _children(serve.pid)
        url = (home / "nats" / "url").read_text().split()[0]
        settings, catalogue = _settings(home), Catalogue()
        registry = Registry.load(settings.registry_path, catalogue)
        async with connected(settings, url, name="police", party="police-met") as nc:
            police = AgencyClient(nc, jetstream(nc, settings), registry, load_identity(home, "police-met"), catalogue)
            total = 40
            await asyncio.gather(*(police.send(typ="referral", to=["la-camden"], payload=referral(),
                                               sharing=sharing()) for _ in range(total)))
            receipts = await drain(police, want=total, timeout=60)
        assert {r.payload["status"] for r in receipts} == {"routed"}

        async def received() -> float | None:
            got = await _get(port, "/metrics")
            assert got is not None and got[0] == 200
            values = {s.name: s.value for f in text_string_to_metric_families(got[1]) for s in f.samples
                      if not s.labels}
            return values["sgb_messages_received_total"] if values["sgb_messages_received_total"] >= total else None
        assert await eventually(received, what="/metrics to count every message", timeout=20) == total

        rc, out, err = await sgb("audit", "verify", "--json", home=home, url=url)
        assert rc == 0, err
        chains = orjson.loads(out)["chains"]
        assert {INSTANCE, f"{INSTANCE}-w1"} <= set(chains)
        assert chains[INSTANCE]["records"] > 0 and chains[f"{INSTANCE}-w1"]["records"] > 0  # both took work

        serve.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serve.wait(), DRAIN + 5) == 0  # the drain deadline, and the interpreter
        assert not _alive(child)


async def test_a_killed_worker_comes_back_and_a_killed_supervisor_leaves_no_orphan(home: Path) -> None:
    port = free_port()
    async with _serve(home, port) as serve:
        await _until_ready(port, True, "both workers to be ready")
        (child,) = _children(serve.pid)

        # a rulebook whose triage changed: SIGHUP reloads it in both, and the pages derive the queue again
        text, advice = DEFAULT_RULEBOOK.read_text(), "    advice-sought:\n      priority: medium\n"
        assert advice in text
        (home / "rulebook.yaml").write_text(text.replace(advice, advice.replace("medium", "high")))
        serve.send_signal(signal.SIGHUP)  # reloaded by both
        await eventually(lambda: _logged(home, "rulebook reloaded") == 2, what="both workers to reload")
        await eventually(lambda: _logged(home, "review queue derived with the triage settings in force") == 2,
                         what="the review queue derived again under the reloaded triage (once at start)")
        headers = auth(_settings(home), "operator")
        async with aiohttp.ClientSession() as http:
            for on, event in ((True, "maintenance mode on: taking no new work"),
                              (False, "maintenance mode off: taking work again")):
                async with http.put(f"http://127.0.0.1:{port}/api/v1/maintenance", json={"on": on},
                                    headers=headers) as r:
                    assert r.status == 200, await r.text()
                await eventually(lambda e=event: _logged(home, e) == 2, what=f"both workers: {event}")

        os.kill(child, signal.SIGKILL)
        await _until_ready(port, False, "/readyz to say a worker is down")
        got = await _get(port, "/readyz")
        assert got is not None and orjson.loads(got[1])["checks"]["workers"]["state"] == "fail"
        await _until_ready(port, True, "the worker to be started again")
        (again,) = _children(serve.pid)
        assert again != child

        serve.send_signal(signal.SIGKILL)
        await serve.wait()
        await eventually(lambda: not _alive(again), what="the orphaned worker to stop by itself", timeout=DRAIN + 10)


def test_the_number_of_workers_is_given_configured_or_the_cores(tmp_path: Path) -> None:
    conf = tmp_path / "sgb.toml"
    conf.write_text("[pipeline]\nworkers = 3\n")
    assert Settings.from_env({}, home=tmp_path).pipeline.workers is None  # `sgb serve` counts the cores
    assert Settings.from_env({"SGB_CONFIG": str(conf)}, home=tmp_path).pipeline.workers == 3
    assert Settings.from_env({"SGB_CONFIG": str(conf), "SGB_WORKERS": "2"}, home=tmp_path).pipeline.workers == 2
    with pytest.raises(ConfigError, match=r"workers \(SGB_WORKERS\) must be 1 or more"):
        Settings.from_env({"SGB_WORKERS": "0"}, home=tmp_path)
    assert build_parser().parse_args(["serve", "--workers", "4"]).workers == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", "0"])


def _values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_metrics_merge_sums_the_work_and_keeps_the_shared_gauges_of_the_parent() -> None:
    parent, child = Metrics(), Metrics()
    parent.received.inc(3)
    child.received.inc(4)
    child.rejected_by["stale"].inc()  # a series only the child has
    parent.stage["total"].observe(0.01)
    child.stage["total"].observe(0.3)
    parent.in_flight.set(2)
    child.in_flight.set(5)
    parent.backlog.set(10)  # one consumer: both see it
    child.backlog.set(9)
    value = _values(merged(parent.registry, [generate_latest(child.registry)]))
    assert value[("sgb_messages_received_total", ())] == 7
    assert value[("sgb_messages_rejected_total", (("code", "stale"),))] == 1
    assert value[("sgb_pipeline_stage_seconds_count", (("stage", "total"),))] == 2
    assert value[("sgb_pipeline_stage_seconds_bucket", (("le", "0.25"), ("stage", "total")))] == 1
    assert value[("sgb_messages_in_flight", ())] == 7
    assert value[("sgb_consumer_backlog_messages", ())] == 10
    created = _values(generate_latest(parent.registry))[("sgb_messages_received_created", ())]
    assert value[("sgb_messages_received_created", ())] == min(
        created, _values(generate_latest(child.registry))[("sgb_messages_received_created", ())])
    assert _values(merged(parent.registry, [])) == _values(generate_latest(parent.registry))
