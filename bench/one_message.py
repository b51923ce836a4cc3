"""What one referral costs the broker's own code, in process: ``python -m bench.one_message``.

Not a test and not ``make bench``: it runs the pipeline's real code on one core (intake, policy,
outcomes, the audit writer's block, the loop's metrics and log calls at ERROR, as ``bench``'s
brokers run) with NATS replaced by a stand-in that stores nothing and answers at once, so what is
measured is the broker's CPU per message without the network or the nats client. ``--part
outcomes`` times only :meth:`Outcomes.accepted` (its sealing and signing) on a decided message.
Prints messages per CPU second of this process (CPU time, not wall time, so that other work on
the machine counts less), the median of ``--rounds`` rounds; run the trees to compare in turn
(``PYTHONPATH=<other tree>``), several times, as machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from nats.js.errors import NotFoundError

import broker as broker_package
from adapters.sdk import AgencyClient
from broker import logs
from broker.audit.chain import AuditWriter
from broker.config import AuditSettings, PipelineSettings
from broker.identity.blindindex import load_subject_index
from broker.identity.devkeys import init_dev_keys
from broker.identity.keys import load_identity, load_secret
from broker.pipeline.intake import Intake
from broker.pipeline.loop import Pipeline
from broker.pipeline.outcomes import Ingress, Outcomes
from broker.policy import rulebook as rulebooks
from broker.policy.engine import ReloadablePolicy
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry

EXAMPLES = Path(broker_package.__file__).resolve().parent.parent / "schemas" / "examples"


class _Connection:
    """The core connection under :class:`_Stored`: every publish answered at once as stored."""

    def __init__(self) -> None:
        self.seq = 0
        self._answer: Any = None

    def new_inbox(self) -> str:
        return "_INBOX.perf"

    async def subscribe(self, subject: str, *, cb: Any) -> None:
        self._answer = cb

    async def publish(self, subject: str, payload: bytes, *, reply: str, headers: dict[str, str]) -> None:
        self.seq += 1
        await self._answer(SimpleNamespace(subject=reply, data=b'{"stream":"S","seq":%d}' % self.seq, headers=None))


class _Stored:
    """JetStream as far as the broker's code can tell: every publish stored at once."""

    def __init__(self) -> None:
        self.seq = 0
        self._nc = _Connection()

    async def publish(self, subject: str, payload: bytes, **_: Any) -> Any:
        self.seq += 1
        return SimpleNamespace(seq=self.seq, stream="S", duplicate=False)

    async def publish_async(self, subject: str, payload: bytes, **_: Any) -> asyncio.Future[Any]:
        self.seq += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(seq=self.seq, stream="S", duplicate=False))
        return fut

    async def get_last_msg(self, *_: Any, **__: Any) -> Any:
        raise NotFoundError

    async def key_value(self, _: str) -> Any:
        async def put(*_: Any) -> int:
            return 0
        return SimpleNamespace(put=put)


class _Claimed:
    async def claim_all(self, claims: list[tuple[str, int]]) -> list[None]:
        return [None] * len(claims)


@dataclass
class _Msg:
    subject: str
    data: bytes
    headers: dict[str, str]
    metadata: Any

    async def ack(self) -> None:
        return None

    async def nak(self, delay: float | None = None) -> None:
        raise AssertionError("a message was handed back: the benchmark is broken")


def _referral() -> tuple[dict[str, Any], dict[str, Any]]:
    payload: dict[str, Any] = orjson.loads((EXAMPLES / "referral.example.json").read_bytes())
    payload["concern"]["details"] += " " + "x" * max(0, 2048 - len(orjson.dumps(payload)) - 1)
    return payload, orjson.loads((EXAMPLES / "referral.sharing.example.json").read_bytes())


async def _pipeline_round(pipeline: Pipeline, token: bytes, n: int, in_flight: int) -> float:
    when = dt.datetime.now(dt.UTC)
    msgs = [_Msg("sg.in.police-met", token, {"Nats-Msg-Id": str(uuid.uuid4())},
                 SimpleNamespace(sequence=SimpleNamespace(stream=i + 1), timestamp=when, num_delivered=1))
            for i in range(n)]
    t0 = time.process_time()
    for i in range(0, n, in_flight):
        await pipeline._handle_batch(msgs[i:i + in_flight])  # type: ignore[arg-type]
    return n / (time.process_time() - t0)


async def main(part: str, n: int, rounds: int) -> float:
    logs.configure(level="ERROR", json=True, stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sgb-perf-") as tmp:
        home, catalogue = Path(tmp), Catalogue()
        init_dev_keys(home, home / "registry.json")
        registry = Registry.load(home / "registry.json", catalogue)
        broker = load_identity(home, registry.broker_id)
        police = AgencyClient(None, None, registry, load_identity(home, "police-met"), catalogue)  # type: ignore[arg-type]
        payload, sharing = _referral()
        _, token = police.build(typ="referral", to=["la-camden"], payload=payload, sharing=sharing)
        settings = PipelineSettings()
        intake = Intake(registry, catalogue, broker, settings)
        policy = ReloadablePolicy(rulebooks.DEFAULT_RULEBOOK, catalogue)
        outcomes = Outcomes(registry, broker, load_secret(home, "audit-hmac.key"), "perf", load_subject_index(home))
        rates = []
        if part == "outcomes":
            now = time.time()
            auth = intake.authenticate("police-met", token, now)
            opened = intake.open(auth)
            decision = policy.decide(auth.sender, opened.recipients, opened.mtype, auth.claims["sharing"],
                                     opened.payload, received=now)
            for _ in range(rounds):
                t0 = time.process_time()
                for seq in range(n):
                    outcomes.accepted(Ingress("police-met", seq, now, "m"), opened, decision)
                rates.append(n / (time.process_time() - t0))
            return statistics.median(rates)
        js = _Stored()
        audit_settings = replace(AuditSettings(), checkpoint_interval=1e9)
        async with AuditWriter(js, broker, "perf", audit_settings) as audit:  # type: ignore[arg-type]
            pipeline = Pipeline(js, intake, policy, outcomes, audit, settings, request_timeout=5)  # type: ignore[arg-type]
            pipeline._decider.replay = _Claimed()  # type: ignore[assignment]
            await _pipeline_round(pipeline, token, min(n, 200), 64)  # warm up
            for _ in range(rounds):
                rates.append(await _pipeline_round(pipeline, token, n, 64))
            assert pipeline.counters.internal == 0 and not pipeline.counters.rejected, pipeline.counters
        return statistics.median(rates)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("pipeline", "outcomes"), default="pipeline")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.part} {asyncio.run(main(args.part, args.n, args.rounds)):.0f} msg per CPU second")
