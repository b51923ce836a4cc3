"""``sgb serve --workers N``: N pipeline processes on the one durable consumer, under one supervisor.

The ``sgb serve`` process is worker 0: it also runs the embedded NATS, the HTTP endpoints,
maintenance mode and reloads. :class:`Workers` runs workers 1 to N-1 as child processes, each an
ordinary broker (:func:`~broker.pipeline.service.running_broker`) named ``<instance>-w<i>``, so
each keeps its own audit chain; it starts again a child that exits (after a growing delay) and
stops them all with SIGTERM, then SIGKILL past the drain deadline.

Parent and child talk over one socket pair, the child's end passed as a file descriptor named on
its command line: no file, no port, no signal that could arrive before a handler exists.

- parent to child, a command a line: ``pause``, ``resume``, ``reload``, ``metrics``;
- child to parent, length-prefixed frames: ``ready`` once its broker runs, then the metrics
  exposition in answer to each ``metrics``, in order.

A child reads end-of-file when its parent dies, however it died, and stops by itself (draining
as at SIGTERM): no orphans.

The parent's ``/metrics`` shows every worker's metrics merged (:func:`merged`): counters and
histograms summed by labels (a series' creation time the earliest), the messages in flight and
the deadline-scan lease summed; the gauges of what the workers share (:data:`SHARED_GAUGES`) are
the parent's. A restarted worker starts its counters from zero, as a restarted ``sgb serve`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from broker.errors import ConfigError
from broker.pipeline.service import Broker

log = structlog.get_logger("sgb.workers")

READY: Final = b"ready"
RESTART_FIRST: Final = 1.0   # seconds before a child that exited is started again; doubled each time
RESTART_MAX: Final = 30.0
STEADY: Final = 60.0         # a child that ran this long before exiting starts again after RESTART_FIRST
ASK_TIMEOUT: Final = 2.0     # a child's metrics not given within this are left out of that scrape
MAX_FRAME: Final = 4 * 1024 * 1024
_SIZE: Final = struct.Struct(">I")
SHARED_GAUGES: Final = frozenset({"sgb_consumer_backlog_messages", "sgb_key_expiry_timestamp_seconds",
                                   "sgb_maintenance_mode"})  # one consumer, one registry, one maintenance switch


def default_count() -> int:
    """The cores this process may run on (``os.process_cpu_count`` is Python 3.13+)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_instance(instance: str, index: int) -> str:
    """The instance name (and so the audit chain) of worker ``index`` (0 is the parent's own)."""
    return instance if index == 0 else f"{instance}-w{index}"


def merged(own: CollectorRegistry, others: Iterable[bytes]) -> bytes:
    """The exposition of ``own`` with the expositions ``others`` (of the other workers) merged in,
    as the module says."""
    families: dict[str, Metric] = {}
    series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for i, text in enumerate((generate_latest(own), *others)):
        for family in text_string_to_metric_families(text.decode()):
            if i and family.name in SHARED_GAUGES:
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                series[family.name] = {}
            samples = series[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = samples.get(key)
                if seen is None:
                    samples[key] = sample
                else:
                    pick = min if sample.name.endswith("_created") else sum
                    samples[key] = seen._replace(value=pick((seen.value, sample.value)))
    for name, family in families.items():
        family.samples = list(series[name].values())

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            return iter(families.values())

    return generate_latest(_Merged())


def _frame(body: bytes) -> bytes:
    return _SIZE.pack(len(body)) + body


class _Child:
    """One child worker: its process, the parent's end of its channel, and the replies it owes."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self._writer: asyncio.StreamWriter | None = None
        self._replies: deque[asyncio.Future[bytes | None]] = deque()

    def send(self, command: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(command + b"\n")

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def metrics(self) -> bytes | None:
        """Its metrics exposition; None when it is not running or does not answer in time."""
        if not self.ready or self._writer is None or self._replies:
            return None  # a child still owing its last answer is not asked again: nothing piles up
        reply: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._replies.append(reply)  # answered in order; a late answer is read and dropped
        self.send(b"metrics")
        try:
            return await asyncio.wait_for(asyncio.shield(reply), ASK_TIMEOUT)
        except TimeoutError:
            return None

    async def run(self, sock: socket.socket, paused: bool) -> int:
        """Follow the child (:attr:`proc`, just started) until it exits; its exit code."""
        assert self.proc is not None
        reader, self._writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        if paused:
            self.send(b"pause")
        reading = asyncio.create_task(self._read(reader), name=f"sgb-worker-{self.index}-channel")
        try:
            return await self.proc.wait()
        finally:
            self._writer.close()
            self._writer = None
            await asyncio.wait({reading}, timeout=1.0)
            reading.cancel()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = _SIZE.unpack(await reader.readexactly(_SIZE.size))
                if size > MAX_FRAME:
                    log.error("a worker sent a frame over the limit; no longer reading it", worker=self.index)
                    return
                body = await reader.readexactly(size)
                if not self.ready:
                    self.ready = body == READY
                elif self._replies:
                    reply = self._replies.popleft()
                    if not reply.done():
                        reply.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the child is gone
        finally:
            self.ready = False
            while self._replies:
                reply = self._replies.popleft()
                if not reply.done():
                    reply.set_result(None)  # the worker is gone


class Workers:
    """Workers 1 to ``count - 1`` as child processes, for as long as the context is open: each runs
    ``command(fd)`` (an ``sgb serve`` command line naming its end of the channel) with ``env``,
    and is given at most ``stop_within`` seconds to stop once asked (:meth:`stop`, or leaving the
    context)."""

    def __init__(self, command: Callable[[int], Sequence[str]], env: Mapping[str, str], instance: str,
                 count: int, *, stop_within: float) -> None:
        if not 1 <= count <= 999:
            raise ConfigError("workers must be between 1 and 999")
        if len(worker_instance(instance, count - 1)) > 64:
            raise ConfigError(f"the instance name is too long to name {count} workers ('-w<n>' is added; "
                              "at most 64 characters in all)")
        self._command = command
        self._env = dict(env)
        self._instance = instance
        self._stop_within = stop_within
        self._children = [_Child(i) for i in range(1, count)]
        self._stopping = asyncio.Event()
        self._keepers: list[asyncio.Task[None]] = []
        self.paused = False

    @property
    def count(self) -> int:
        """All the workers, the parent's own included."""
        return len(self._children) + 1

    def down(self) -> list[int]:
        """The child workers not running now (being started, or started again)."""
        return [c.index for c in self._children if not c.ready]

    def pause(self, on: bool) -> None:
        """Maintenance mode on every child (and on a child started later, while it lasts)."""
        self.paused = on
        for child in self._children:
            child.send(b"pause" if on else b"resume")

    def reload(self) -> None:
        """SIGHUP, passed on: every child reloads the registry, its keys and the rulebook."""
        for child in self._children:
            child.send(b"reload")

    async def exposition(self, own: CollectorRegistry) -> bytes:
        """``/metrics`` of all the workers: ``own`` (the parent's) with every running child's, merged
        (:func:`merged`)."""
        texts = await asyncio.gather(*(child.metrics() for child in self._children))
        return merged(own, [text for text in texts if text is not None])

    def stop(self) -> None:
        """Start stopping: no child is started again, and each gets SIGTERM (it drains)."""
        self._stopping.set()
        for child in self._children:
            child.signal(signal.SIGTERM)

    async def __aenter__(self) -> Workers:
        self._keepers = [asyncio.create_task(self._keep(child), name=f"sgb-worker-{child.index}")
                         for child in self._children]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        late: set[asyncio.Task[None]] = set()
        try:
            if self._keepers:
                _, late = await asyncio.wait(self._keepers, timeout=self._stop_within)
        finally:  # also when cancelled past the deadline: no child outlives the supervisor
            for child in self._children:
                if child.proc is not None and child.proc.returncode is None:
                    log.error("worker did not stop within the drain deadline; killed", worker=child.index)
                    child.signal(signal.SIGKILL)
        if late:
            _, stuck = await asyncio.wait(late, timeout=2.0)
            for keeper in stuck:
                keeper.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    async def _keep(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_FIRST
        while not self._stopping.is_set():
            started = loop.time()
            code = await self._run(child)
            if self._stopping.is_set():
                return
            if loop.time() - started >= STEADY:
                delay = RESTART_FIRST
            log.error("worker exited; starting it again", worker=child.index, code=code, seconds=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _run(self, child: _Child) -> int | None:
        """Start ``child``'s process and follow it until it exits; None if it could not start."""
        mine, theirs = socket.socketpair()
        try:
            fd = theirs.fileno()
            proc = await asyncio.create_subprocess_exec(
                *self._command(fd), pass_fds=(fd,), stdin=asyncio.subprocess.DEVNULL,
                env=self._env | {"SGB_INSTANCE": worker_instance(self._instance, child.index)})
        except OSError as exc:
            log.error("worker could not be started", worker=child.index, error=type(exc).__name__)
            mine.close()
            return None
        finally:
            theirs.close()  # the child holds it now; the parent keeps only its own end
        child.proc = proc
        if self._stopping.is_set():  # asked to stop while it was starting
            child.signal(signal.SIGTERM)
        log.info("worker started", worker=child.index, pid=proc.pid)
        return await child.run(mine, self.paused)


async def answer_supervisor(broker: Broker, fd: int) -> None:
    """A child worker's side of the channel: say ready, then carry out the supervisor's commands
    until it is gone (end-of-file: the caller then stops the broker)."""
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    try:
        writer.write(_frame(READY))
        while line := await reader.readline():
            command = line.strip()
            if command == b"metrics":
                writer.write(_frame(generate_latest(broker.metrics.registry)))
            elif command in (b"pause", b"resume"):
                broker.pipeline.pause(command == b"pause")
            elif command == b"reload":
                broker.reload()
            else:
                log.warning("unknown command from the supervisor; ignored")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
    log.warning("the supervisor is gone; stopping")
