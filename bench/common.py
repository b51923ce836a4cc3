"""What the benchmark's parts share: the padded referral, percentiles, a temporary home with an
embedded nats-server (a fresh one for each part), and broker processes started, measured (RSS) and
stopped around a run (``bench.fuzz`` too)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from broker.config import NatsSettings, Settings
from broker.identity.devkeys import init_dev_keys
from broker.transport.natsserver import embedded_nats
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry

PAYLOAD_BYTES = 2048
EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"


def referral_payload() -> dict[str, Any]:
    """The example referral padded to about 2 KiB of JSON."""
    payload: dict[str, Any] = orjson.loads((EXAMPLES / "referral.example.json").read_bytes())
    base = len(orjson.dumps(payload))
    payload["concern"]["details"] += " " + "x" * max(0, PAYLOAD_BYTES - base - 1)
    return payload


def referral_sharing() -> dict[str, Any]:
    return orjson.loads((EXAMPLES / "referral.sharing.example.json").read_bytes())  # type: ignore[no-any-return]


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2), "p99_ms": round(q[98], 2)}


SERVE = (sys.executable, "-m", "broker.cli", "serve", "--log-level", "ERROR")


def serve_commands(workers: int, *args: str) -> list[list[str]]:
    """The command lines that run ``workers`` broker workers on the one durable consumer: one
    ``sgb serve --workers N`` (:func:`broker_rss_mb` counts its child workers too)."""
    return [[*SERVE, "--workers", str(workers), *args]]


async def start_brokers(home: Path, url: str, workers: int, *args: str) -> list[asyncio.subprocess.Process]:
    procs: list[asyncio.subprocess.Process] = []
    for command in serve_commands(workers, *args):
        instance = f"bench-{len(procs)}-{uuid.uuid4().hex[:6]}"
        env = os.environ | {"SGB_NATS_URL": url, "SGB_HOME": str(home), "SGB_INSTANCE": instance}
        procs.append(await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
    return procs


async def stop_brokers(procs: list[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            p.terminate()
    await asyncio.gather(*(asyncio.wait_for(p.wait(), 30) for p in procs))


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a ``--workers`` parent and its workers), from /proc."""
    pids, i = [pid], 0
    while i < len(pids) and len(pids) < 64:
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids.extend(int(c) for c in task.read_text().split())
        i += 1
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds so far of ``pids`` (from /proc/<pid>/stat; 0 for one gone)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def nats_server_pid(home: Path) -> int:
    """The embedded nats-server of a bench home (its url file says ``<url> <pid>``)."""
    return int((home / "nats" / "url").read_text().split()[1])


def broker_pids(procs: list[asyncio.subprocess.Process]) -> list[int]:
    return [pid for proc in procs for pid in _tree(proc.pid)]


def broker_rss_mb(procs: list[asyncio.subprocess.Process]) -> list[float]:
    """VmRSS of every broker process (and child), in MB, from /proc/<pid>/status."""
    out = []
    for proc in procs:
        for pid in _tree(proc.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out.append(round(int(line.split()[1]) / 1024, 1))
    return out


@contextlib.asynccontextmanager
async def environment() -> AsyncIterator[tuple[Path, str, Settings, Registry, Catalogue]]:
    """A temporary home with fresh development keys and its own embedded nats-server, removed after
    (each part of the bench has one; ``bench.fuzz`` too)."""
    with tempfile.TemporaryDirectory(prefix="sgb-bench-") as tmp:
        home, catalogue = Path(tmp), Catalogue()
        init_dev_keys(home, home / "registry.json")
        async with embedded_nats(home / "nats") as url:
            yield home, url, bench_settings(home, url), Registry.load(home / "registry.json", catalogue), catalogue


def bench_settings(home: Path, url: str, instance: str = "bench-load") -> Settings:
    """The settings the bench's own clients use (the load generator's process too)."""
    return Settings(home=home, registry_path=home / "registry.json", instance=instance,
                    nats=NatsSettings(url=url, request_timeout=10))


