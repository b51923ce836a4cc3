"""The bench's own code, run small (``make bench`` is the real run): the crypto floor, a backlog
drained by two broker workers, one latency point from the open-loop generator, the plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import SERVE, serve_commands
from bench.latency import latency_point, plot
from bench.merkle import checkpoint_cost, merkle_bench, subject_bundle, writer_share
from bench.throughput import crypto_floor, full_pipeline


def test_one_place_for_the_broker_command_line() -> None:
    assert serve_commands(2, "--http", "127.0.0.1:1") == [[*SERVE, "--workers", "2", "--http", "127.0.0.1:1"]]


async def test_crypto_floor_is_timed() -> None:
    floor = await crypto_floor(seconds=0.2, max_n=200)
    assert floor["n"] > 0 and floor["msgs_per_s"] > 0 and floor["p50_ms"] <= floor["p99_ms"]


@pytest.mark.timeout(90)
async def test_two_workers_drain_a_backlog_and_one_point_of_the_curve(tmp_path: Path) -> None:
    two = await full_pipeline(2, 60)
    assert two["n"] == 60 and two["msgs_per_s"] > 0
    assert len(two["rss_mb"]) == 2 and all(20 < mb < 1000 for mb in two["rss_mb"])
    point = await latency_point(100, 100)
    assert point["n"] == 100 and point["publish_failed"] == 0
    assert 0 < point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
    point["fraction_of_one_broker"] = 0.5
    assert plot([point], 200, tmp_path / "latency.png")
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_the_transparency_log_part_is_measured() -> None:
    tree = merkle_bench(3000, seconds=0.02)
    assert tree["records"] == 3000
    assert tree["inclusion_proofs_per_s"] > 0 and tree["consistency_verifications_per_s"] > 0
    assert tree["inclusion_proof_bytes"]["max"] == 32 * 12  # ceil(log2(3000)) hashes
    writer = checkpoint_cost(2000, every=500)
    assert writer["per_record_us"] > 0
    assert writer_share(writer, {"cpu": {"brokers_ms_per_msg": 1.0}}) == round(2 * writer["per_record_us"] / 10, 2)
    bundle = subject_bundle(2000, about=20)
    assert bundle["records_in_bundle"] == 20 and bundle["bundle_bytes"] > 20 * 500
