"""``sgb``: the command line for operators and agency integrators.

Exit codes: 0 success; 1 error (printed on stderr, never with personal data); 2 usage;
3 the broker rejected the message (``--wait``); 4 no outcome within the deadline; 5 the audit
log failed verification.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog

from broker import logs
from broker.config import Settings
from broker.errors import BrokerError
from broker.identity.devkeys import init_dev_keys
from broker.identity.keys import load_identity
from broker.pipeline.service import running_broker
from broker.transport.connection import connected, jetstream, nats_location, supervised_nats
from broker.transport.natsserver import EmbeddedServer
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry

log = structlog.get_logger("sgb.cli")
EXIT_REJECTED = 3
EXIT_TIMEOUT = 4
EXIT_TAMPERED = 5


def _print(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


@contextlib.asynccontextmanager
async def agency_client(settings: Settings, agency: str) -> AsyncIterator[Any]:
    from adapters.sdk import AgencyClient, SeenStore
    from broker.transport.topology import ensure_topology
    from broker.wire.registry import addressable

    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    if registry.get(agency) is None:
        raise BrokerError(f"{agency} is not in the trust registry {settings.registry_path}")
    identity = load_identity(settings.home, agency)
    seen = SeenStore(settings.home / "adapters" / agency / "seen.sqlite")
    try:
        async with nats_location(settings) as url:
            if not settings.nats.url:  # our own embedded server: the broker's credentials set it up
                async with connected(settings, url, name="sgb-setup") as setup:
                    await ensure_topology(jetstream(setup, settings), settings.streams, settings.pipeline,
                                          addressable(registry))
            async with connected(settings, url, name=f"sgb-{agency}", party=agency) as nc:
                yield AgencyClient(nc, jetstream(nc, settings), registry, identity, catalogue, seen=seen,
                                   request_timeout=settings.nats.request_timeout)
    finally:
        seen.close()


# -- commands ---------------------------------------------------------------------------


async def cmd_keys_init(settings: Settings, args: argparse.Namespace) -> int:
    created = init_dev_keys(settings.home, settings.registry_path, force=args.force)
    print(f"registry: {settings.registry_path}")
    print(f"private keys (mode 0600): {settings.keys_dir}")
    for party in created:
        print(f"  {party}")
    return 0


async def cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    from broker.errors import ConfigError
    from broker.identity.keys import identity_path
    from broker.identity.rotation import DAY, rotate_keys
    from broker.timestamps import iso

    party = args.agency
    overlap, enc_delay = args.overlap_days * DAY, args.enc_delay_minutes * 60
    if overlap > 0 and not 0 <= enc_delay < overlap:
        raise ConfigError(f"--enc-delay-minutes ({args.enc_delay_minutes:g}) must be at least 0 and shorter than "
                          f"the overlap ({overlap / 60:g} minutes): the new encryption key must come into use "
                          "before the old one ends")
    is_broker = party == Registry.load(settings.registry_path, Catalogue()).broker_id
    done = rotate_keys(settings.home, settings.registry_path, party, overlap=overlap, enc_delay=enc_delay)
    switch = iso(done.enc_from)
    print(f"{party}: new signing key {done.sig_kid}, used from now on")
    if done.enc_kid:
        print(f"{party}: new encryption key {done.enc_kid} ({done.suite}), sealed to from {switch}")
    print(f"{party}: old keys valid until {iso(done.not_after)}, then retired: {', '.join(done.ended) or '-'}")
    print(f"registry: {settings.registry_path}")
    print(f"private keys (mode 0600, old decryption keys kept): {identity_path(settings.home, party)}")
    retention = settings.streams.delivery_retention
    if overlap < retention:
        print(f"note: the overlap is shorter than delivery retention ({retention / DAY:g} days); a delivery "
              "waiting longer than the overlap may need the old keys after it")
    by = (f", before {switch}" if enc_delay else ", at once") if done.enc_kid else ""
    at = f"at {switch}" if enc_delay else f"from now ({switch})"
    print("next:")
    if is_broker:
        print("  1. copy the registry to every adapter and reload them (SIGHUP): they accept the broker's new key")
        print(f"  2. then{by}: copy the registry and this key file to every broker instance; send each SIGHUP")
        if done.enc_kid:
            print(f"  3. {at}: adapters start sealing to the broker's new encryption key (nothing to do; a "
                  "broker instance without this key file by then cannot open what they send)")
    else:
        print("  1. copy the registry to every broker instance and adapter; send each broker SIGHUP "
              "(kill -HUP <pid of sgb serve>): they accept both keys")
        print(f"  2. then{by}: give this key file and registry to {party}'s adapter and reload it (SIGHUP): "
              "it signs with the new key and opens deliveries sealed to either key")
        if done.enc_kid:
            print(f"  3. {at}: brokers start sealing {party}'s deliveries to the new encryption key "
                  "(nothing to do; an adapter without this key file by then cannot open them)")
    print(f"  {4 if done.enc_kid else 3}. after {iso(done.not_after)}: sgb keys retire --agency {party}")
    return 0


async def cmd_keys_retire(settings: Settings, args: argparse.Namespace) -> int:
    from broker.identity.keys import identity_path
    from broker.identity.rotation import plan_retirement, purgeable, retire_keys

    party, now, purge = args.agency, time.time(), args.purge_decryption_keys
    plan = plan_retirement(settings.registry_path, party, now=now)
    purged = purgeable(settings.home, settings.registry_path, party, plan) if purge else ()
    if not plan.removed and not purged:
        print(f"{party}: no key has passed its notAfter; nothing to retire"
              + (f" (kept for the audit log: {', '.join(plan.kept)})" if plan.kept else ""))
        return 0
    if not args.force:
        try:  # with the decryption keys kept, what was sealed to them still opens: only signatures matter
            waiting = await _waiting_on_keys(settings, party, set(plan.sig), set(purged))
        except BrokerError as exc:
            raise BrokerError(f"cannot look for messages still waiting on the old keys ({exc}); "
                              "pass --force to retire them anyway") from exc
        if waiting:
            print(f"sgb: error: {waiting} messages still waiting in NATS were signed or sealed with "
                  f"{party}'s expired keys and could not be accepted or opened without them; let "
                  f"{party}'s adapter collect its deliveries (or let them expire), or pass --force",
                  file=sys.stderr)
            return 1
    if purged:
        print(f"sgb: warning: removing {party}'s old decryption keys from its key file: {', '.join(purged)}. "
              "Anything still stored sealed to them (a school's inbox, dead letters, an uncollected delivery) "
              "can never be opened again.", file=sys.stderr)
    done = retire_keys(settings.home, settings.registry_path, party, now=now, purge=purge)
    if done.removed:
        print(f"{party}: removed from the registry: {', '.join(done.removed)}")
    if done.purged:
        print(f"{party}: decryption keys removed from the key file: {', '.join(done.purged)}")
    elif done.enc:
        print(f"{party}: decryption keys kept in the key file, so what is stored sealed to them still opens "
              f"(remove them with --purge-decryption-keys): {', '.join(done.enc)}")
    if done.kept:
        print(f"{party}: kept in the registry, expired, to verify the audit blocks they signed: "
              f"{', '.join(done.kept)}")
    print(f"registry: {settings.registry_path}")
    print(f"private keys (mode 0600): {identity_path(settings.home, party)}")
    print(f"next: copy the registry to every broker instance and adapter, and the key file to {party}'s "
          "own processes; send each SIGHUP")
    return 0


async def _waiting_on_keys(settings: Settings, party: str, sig: set[str], enc: set[str]) -> int:
    """How many messages still in the streams were signed with one of ``sig`` (ingress from
    ``party``) or sealed to one of ``enc`` (deliveries to it; ingress, for the broker's keys).
    Only the JWS header and envelope are read: the payload stays sealed."""
    from nats.errors import Error as NatsError
    from nats.js.errors import APIError, NotFoundError

    from broker.errors import InvalidEnvelope, TransportError
    from broker.wire.jws import unverified
    from broker.wire.subjects import DELIVERY, INGRESS, delivery_subject, ingress_subject

    is_broker = party == Registry.load(settings.registry_path, Catalogue()).broker_id
    where = [(INGRESS, "sg.in.>" if is_broker else ingress_subject(party))]
    if not is_broker:
        where.append((DELIVERY, delivery_subject(party)))
    count = 0
    try:
        async with nats_location(settings) as url, connected(settings, url, name="sgb-keys-retire") as nc:
            js = jetstream(nc, settings)
            for stream, subject in where:
                try:
                    seq = max((await js.stream_info(stream)).state.first_seq, 1)
                except NotFoundError:
                    continue
                while True:
                    try:
                        msg = await js.get_msg(stream, seq, subject=subject, next=True)
                    except NotFoundError:
                        break
                    seq = int(msg.seq or seq) + 1
                    try:
                        header, claims = unverified(msg.data or b"")
                    except InvalidEnvelope:
                        continue
                    enc_kid = claims.get("enc", {}).get("kid") if isinstance(claims.get("enc"), dict) else None
                    count += header.get("kid") in sig or enc_kid in enc
    except (NatsError, APIError, TimeoutError) as exc:
        raise TransportError(f"NATS: {type(exc).__name__}") from exc
    return count


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run a broker until SIGTERM or SIGINT; the embedded NATS (if any) is supervised. Shutting down
    keeps the drain deadline even when NATS is gone: what is not done by then is left to JetStream
    (unacknowledged messages come back to another instance)."""
    from aiohttp import web

    from broker.web.app import make_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = contextlib.AsyncExitStack()
    server = None
    try:
        server = await stack.enter_async_context(supervised_nats(settings))
        url = server.url if server is not None and server.url else settings.nats.url or ""
        broker = await stack.enter_async_context(running_broker(settings, url))
        loop.add_signal_handler(signal.SIGHUP, broker.reload)  # the registry, the broker's keys, the rulebook
        if args.http:
            from broker.web.app import audit_service

            service = await stack.enter_async_context(audit_service(broker))
            host, _, port = args.http.rpartition(":")
            runner = web.AppRunner(make_app(broker, service, nats_server=server), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
            log.info("http listening", address=args.http)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, broker.task}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if broker.task.done() and broker.task.exception() is not None:
            raise BrokerError(f"pipeline stopped: {broker.task.exception()}")
    finally:
        await _close_within(stack, settings.pipeline.drain_timeout, server)
    return 0


async def _close_within(stack: contextlib.AsyncExitStack, deadline: float, server: EmbeddedServer | None) -> None:
    """Unwind the broker within ``deadline`` seconds; past it, stop the embedded server now and go."""
    closing = asyncio.ensure_future(stack.aclose())
    done, _ = await asyncio.wait({closing}, timeout=deadline)
    if closing in done:
        closing.result()
        return
    log.error("shutdown took longer than the drain deadline; leaving the rest to JetStream", seconds=deadline)
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(closing, 1.0)
    if server is not None:
        await server.stop(adopted_too=True, grace=2.0)


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from broker.cli.demo import run_demo

    return await run_demo(settings)


async def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    async with contextlib.AsyncExitStack() as stack:
        if args.raw:
            data = Path(args.raw).read_bytes()
            msg_id = _message_id_of(data)
            if args.out:
                raise BrokerError("--out and --raw do not go together")
        else:
            if not (args.type and args.to and args.sharing and args.payload):
                raise BrokerError("send needs --type, --to, --sharing and PAYLOAD (or --raw FILE)")
            sharing = orjson.loads(Path(args.sharing).read_bytes())
            payload = orjson.loads(Path(args.payload).read_bytes())
            if args.out:
                client = await _offline_client(settings, args.as_)
            else:
                client = await stack.enter_async_context(agency_client(settings, args.as_))
            msg_id, data = client.build(typ=args.type, ver=args.version, to=args.to.split(","), payload=payload,
                                        sharing=sharing, re=args.re, thread=args.thread)
            if args.out:
                Path(args.out).write_bytes(data)
                _print({"messageId": msg_id, "written": args.out, "bytes": len(data)})
                return 0
        if args.raw:
            client = await stack.enter_async_context(agency_client(settings, args.as_))
        await client.publish(data, msg_id)
        if not args.wait:
            _print({"messageId": msg_id, "published": f"sg.in.{args.as_}"})
            return 0
        try:
            outcome = await client.wait_outcome(msg_id, timeout=args.timeout)
        except BrokerError:
            _print({"messageId": msg_id, "outcome": "timeout",
                    "reason": f"no outcome within {args.timeout:g}s; is `sgb serve` running?"})
            return EXIT_TIMEOUT
        if outcome.type == "rejection":
            _print({"messageId": msg_id, "outcome": "rejected", **{k: v for k, v in outcome.payload.items()
                                                                   if k != "messageId"}})
            return EXIT_REJECTED
        _print({"messageId": msg_id, "outcome": "routed", "deliveredTo": outcome.payload.get("recipients", []),
                "refused": outcome.payload.get("refused", [])})
        return 0
    return 0


def _message_id_of(data: bytes) -> str:
    """Best effort: the jti of a well-formed file, so --wait can match; else a fresh id."""
    import base64
    import uuid

    with contextlib.suppress(Exception):
        body = data.split(b".")[1]
        jti = orjson.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))["jti"]
        return str(uuid.UUID(str(jti)))
    return str(uuid.uuid4())


async def _offline_client(settings: Settings, agency: str) -> Any:
    from adapters.sdk import AgencyClient

    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    return AgencyClient(None, None, registry, load_identity(settings.home, agency), catalogue)  # type: ignore[arg-type]


async def cmd_inbox(settings: Settings, args: argparse.Namespace) -> int:
    async with agency_client(settings, args.as_) as client:
        taken: list[Any] = []
        async for delivery, msg in client.fetch():
            if delivery is None:
                log.warning("delivery failed verification; left for inspection", seq=msg.metadata.sequence.stream)
                taken.append((msg, False))
                continue
            if args.ack and delivery.id in client.seen:
                await msg.ack()  # a duplicate of what the agency already has
                continue
            if args.json:
                _print(delivery.as_json())
            else:
                _print_delivery(delivery)
            if args.ack:
                client.seen.add(delivery.id)
                await msg.ack_sync()
            else:
                taken.append((msg, True))
        for msg, _ in taken:
            await msg.nak()
    return 0


def _print_delivery(d: Any) -> None:
    c = d.claims
    origin = c.get("origin", {})
    print(f"{d.type} v{c['ver']}  id={d.id}  from={origin.get('iss', c['iss'])}  re={c.get('re', '-')}")
    print("  sharing: " + orjson.dumps(c["sharing"]).decode())
    print("  payload: " + orjson.dumps(d.payload, option=orjson.OPT_INDENT_2).decode().replace("\n", "\n  "))


async def cmd_audit_list(settings: Settings, args: argparse.Namespace) -> int:
    from broker.audit.reading import read_audit

    async with nats_location(settings) as url, connected(settings, url, name="sgb-audit") as nc:
        async for record in read_audit(jetstream(nc, settings)):
            if args.json:
                _print(record)
            else:
                print(format_audit(record))
    return 0


async def cmd_audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    from broker.audit.export import verify_export, verify_store

    registry = Registry.load(settings.registry_path, Catalogue())
    if args.export:
        report = verify_export(Path(args.export), registry)
    else:
        witnesses = [line.encode("ascii") for line in Path(args.witness).read_text().split()] if args.witness else []
        async with nats_location(settings) as url, connected(settings, url, name="sgb-audit-verify") as nc:
            report = await verify_store(jetstream(nc, settings), registry, witnesses=witnesses)
        if args.save_witness and report.ok:
            tokens = [c.checkpoint_token for c in report.chains.values() if c.checkpoint_token is not None]
            Path(args.save_witness).write_bytes(b"".join(t + b"\n" for t in tokens))
    if args.json:
        _print(report.summary())
    else:
        what = f"export {args.export}" if args.export else "audit stream"
        print(f"{what}: {report.blocks} blocks, {report.records} records, {report.checkpoints} checkpoints, "
              f"{len(report.chains)} chains")
        for problem in report.problems:
            print(f"  TAMPERED {problem}")
        print("verified: every signature and link holds" if report.ok else
              f"FAILED: {len(report.problems)} problems")
    return 0 if report.ok else EXIT_TAMPERED


async def cmd_audit_reindex(settings: Settings, args: argparse.Namespace) -> int:
    from broker.audit.index import AuditIndex, Indexer
    from broker.audit.verify import broker_keys
    from broker.wire.subjects import AUDIT

    registry = Registry.load(settings.registry_path, Catalogue())
    path = settings.index_path
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    index = AuditIndex(path)
    try:
        async with nats_location(settings) as url, connected(settings, url, name="sgb-audit-reindex") as nc:
            js = jetstream(nc, settings)
            await index.open(stream_created=str((await js.stream_info(AUDIT)).created))
            indexer = Indexer(js, index, broker_keys(registry))
            started = time.monotonic()
            last = await indexer.catch_up()
            counts = await index.counts()
    finally:
        index.close()
    print(f"rebuilt {path}: {counts['records']} records to stream seq {last} in {time.monotonic() - started:.1f} s; "
          f"{indexer.rejected_blocks} blocks failed verification and were left out")
    return 0 if not indexer.rejected_blocks else EXIT_TAMPERED


async def cmd_config_check(settings: Settings, args: argparse.Namespace) -> int:
    """Load everything a broker needs to start and say, in plain words, what is wrong."""
    from broker.identity.blindindex import load_subject_index
    from broker.identity.keys import load_secret
    from broker.policy import rulebook as rulebooks

    problems: list[str] = []
    registry = None
    try:
        registry = Registry.load(settings.registry_path, Catalogue())
    except BrokerError as exc:
        problems.append(f"trust registry: {exc}")
    if registry is not None:
        for what, load in (("broker private key", lambda: load_identity(settings.home, registry.broker_id)),
                           ("audit digest key", lambda: load_secret(settings.home, "audit-hmac.key")),
                           ("subject index keyring", lambda: load_subject_index(settings.home))):
            try:
                load()
            except BrokerError as exc:
                problems.append(f"{what}: {exc}")
        if registry.get(settings.api.issuer) is None:
            problems.append(f"API token issuer {settings.api.issuer!r} is not in the trust registry")
    try:
        rulebooks.load(settings.rulebook_path or rulebooks.DEFAULT_RULEBOOK, Catalogue())
    except BrokerError as exc:
        problems.append(f"rulebook: {exc}")
    if not os.access(settings.home if settings.home.exists() else settings.home.parent, os.W_OK):
        problems.append(f"the data directory {settings.home} is not writable")
    print(f"home            {settings.home}")
    print(f"instance        {settings.instance}")
    print(f"registry        {settings.registry_path}")
    print(f"rulebook        {settings.rulebook_path or 'broker/policy/rulebook.yaml (default)'}")
    print(f"nats            {settings.nats.url or 'embedded, under the home'}"
          f"{'; user ' + settings.nats.user if settings.nats.user else ''}"
          f"{'; password set' if settings.nats.password else ''}")
    print(f"retention       deliveries {settings.streams.delivery_retention / 86400:g} days; audit reported after "
          f"{settings.streams.audit_retention / (365 * 86400):g} years")
    print(f"api             issuer {settings.api.issuer}, audience {settings.api.audience}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("configuration is usable" if not problems else f"{len(problems)} problems")
    return 0 if not problems else 1


async def cmd_adapter_run(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from adapters.runtime.service import AdapterSettings, make_app, reload_keys, running_adapter
    from broker.config import read_toml

    file = args.config or os.environ.get("SGB_CONFIG")
    section = read_toml(Path(file)).get("adapter", {}) if file else {}
    if not isinstance(section, dict):
        raise BrokerError("[adapter] in the settings file must be a table")
    adapter = AdapterSettings.from_sources(
        args.agency, section, webhook=args.webhook, webhook_secret_file=args.webhook_secret_file,
        drop_folder=args.drop_folder, inbound_secret_file=args.inbound_secret_file,
        inbound_folder=args.inbound_folder, local_authority=args.local_authority)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with nats_location(settings) as url, running_adapter(settings, adapter, url) as running:
        def reload() -> None:
            try:
                reload_keys(running, settings)
            except (BrokerError, OSError) as exc:
                log.error("key reload refused; the old keys stay in use", error=str(exc))

        loop.add_signal_handler(signal.SIGHUP, reload)
        runner: web.AppRunner | None = None
        if args.http:
            host, _, port = args.http.rpartition(":")
            runner = web.AppRunner(make_app(running), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
        try:
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({stopped, *running.tasks}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        finally:
            if runner is not None:
                await runner.cleanup()
    if not stop.is_set():  # a loop ended by itself: exit non-zero so the service manager restarts us
        print("sgb: error: an adapter loop stopped unexpectedly", file=sys.stderr)
        return 1
    return 0


async def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from broker.http.tokens import mint

    identity = load_identity(settings.home, settings.api.issuer)
    api = replace(settings.api, audience=args.audience) if args.audience else settings.api
    print(mint(identity, sub=args.sub, roles=args.role, settings=api, ttl=args.ttl))
    return 0


async def cmd_keys_rotate_subject(settings: Settings, args: argparse.Namespace) -> int:
    from broker.identity.blindindex import rotate_subject_key

    kid = rotate_subject_key(settings.home)
    print(f"subject index key {kid} is now current; earlier keys stay for searching older records")
    print("copy the keyring to every broker instance, then restart them one at a time")
    return 0


async def cmd_audit_export(settings: Settings, args: argparse.Namespace) -> int:
    from broker.audit.export import export
    from broker.timestamps import parse_when

    registry = Registry.load(settings.registry_path, Catalogue())
    identity = load_identity(settings.home, registry.broker_id)
    since, until = parse_when(args.since), parse_when(args.until)
    if until <= since:
        raise BrokerError("--until must be after --since")
    target = Path(args.file)
    tmp = target.with_suffix(target.suffix + ".part")
    async with nats_location(settings) as url, connected(settings, url, name="sgb-audit-export") as nc:
        with tmp.open("wb") as out:
            lines = await export(jetstream(nc, settings), identity, out, since=since, until=until)
    tmp.replace(target)
    print(f"wrote {target}: {lines - 1} blocks and checkpoints, signed")
    return 0


def format_audit(r: dict[str, Any]) -> str:
    target = f" -> {r['recipient']}" if "recipient" in r else ""
    extra = f" code={r['code']}" if "code" in r else ""
    basis = r.get("sharing", {}).get("lawfulBasis") or r.get("sharing", {}).get("lawEnforcementBasis") or "-"
    return (f"{r['at']}  {r['event']:<9} {r.get('type', '?'):<21} {r.get('sender', '?')}{target}"
            f"  basis={basis}{extra}  msg={r['message']}")


async def cmd_policy_check(settings: Settings, args: argparse.Namespace) -> int:
    from broker.policy import rulebook as rulebooks

    path = Path(args.file) if args.file else (settings.rulebook_path or rulebooks.DEFAULT_RULEBOOK)
    book = rulebooks.load(path, Catalogue())  # ConfigError names each problem; exit 1
    print(f"{path}: valid — edition {book.edition}, {len(book.rules)} rules, {len(book.general)} general rules")
    return 0


async def cmd_policy_coverage(settings: Settings, args: argparse.Namespace) -> int:
    """The traceability table: golden rules, clocks and lawful-basis codes against rules and scenarios."""
    from broker.policy import coverage, scenarios
    from broker.policy import rulebook as rulebooks

    catalogue = Catalogue()
    path = Path(args.rulebook) if args.rulebook else (settings.rulebook_path or rulebooks.DEFAULT_RULEBOOK)
    book = rulebooks.load(path, catalogue)
    report = coverage.report(book, scenarios.load(Path(args.scenarios) if args.scenarios
                                                  else scenarios.default_path(path)), catalogue)
    if args.json:
        _print({"rows": [r.as_json() for r in report.rows],
                "failing": [{"scenario": n, "problems": list(p)} for n, p in report.failing]})
    else:
        print(coverage.table(report, width=args.width))
    return 1 if report.failing or (args.strict and report.gaps) else 0


async def cmd_policy_explain(settings: Settings, args: argparse.Namespace) -> int:
    from broker.errors import RejectedMessage
    from broker.policy import rulebook as rulebooks
    from broker.policy.engine import RulebookPolicy

    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    book = rulebooks.load(settings.rulebook_path or rulebooks.DEFAULT_RULEBOOK, catalogue)
    sender = registry.get(args.as_)
    mtype = catalogue.message_type(args.type, args.version)
    if sender is None or mtype is None:
        raise BrokerError("unknown agency or message type")
    recipients = []
    for rid in args.to.split(","):
        agency = registry.get(rid)
        if agency is None:
            raise BrokerError(f"{rid} is not in the trust registry")
        recipients.append(agency)
    payload = orjson.loads(Path(args.payload).read_bytes())
    sharing = orjson.loads(Path(args.sharing).read_bytes())
    catalogue.check_payload(mtype, payload)
    try:
        decision = RulebookPolicy(book).decide(sender, tuple(recipients), mtype, sharing, payload)
    except RejectedMessage as exc:
        _print({"decision": "refuse", "code": exc.code, "reason": exc.reason, "field": exc.field, "rule": exc.rule,
                "cite": list(book.citation(exc.rule or ""))})
        return EXIT_REJECTED
    due = None
    if decision.deadline is not None:
        from broker.timestamps import iso

        when = decision.deadline.due(time.time(), payload)
        due = {"due": iso(when) if when else None, "expect": list(decision.deadline.expect),
               "from": decision.deadline.expect_from, "says": decision.deadline.says}
        if decision.deadline.receipt_status:
            due["receiptStatus"] = list(decision.deadline.receipt_status)
    for rd in decision.recipients:
        _print({"recipient": rd.recipient, "decision": "share" if rd.share else "refuse", "code": rd.code,
                "deadline": due if rd.share else None,
                "fields": sorted(payload) if rd.fields is None else list(rd.fields), "withheld": list(rd.withheld),
                "rules": [{"id": r, "cite": list(book.citation(r))} for r in rd.rules],
                "flags": list(decision.flags), "notes": list(decision.notes)})
    return 0


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="data directory (default: $SGB_HOME, else ./.sgb)")
    common.add_argument("--config", metavar="FILE", help="a TOML settings file (default: $SGB_CONFIG); "
                        "SGB_* variables override it")
    common.add_argument("--log-level", default="WARNING", help="log level on stderr (default WARNING)")

    parser = argparse.ArgumentParser(prog="sgb", description="Safeguarding Broker", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="trust registry and keys", parents=[common])
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser("init", parents=[common],
                               help="create a development registry and private keys for the demo agencies")
    init.add_argument("--force", action="store_true", help="replace existing development keys")
    init.set_defaults(func=cmd_keys_init)
    rotate = keys_sub.add_parser("rotate-subject-key", parents=[common],
                                 help="add a new key for the audit log's blind index of children")
    rotate.set_defaults(func=cmd_keys_rotate_subject)
    krotate = keys_sub.add_parser("rotate", parents=[common],
                                  help="new signing and encryption keys for a party; the old ones stay valid "
                                  "for an overlap")
    krotate.add_argument("--agency", required=True, metavar="ID", help="the agency (or the broker) whose keys rotate")
    krotate.add_argument("--overlap-days", type=float, default=30.0, metavar="N",
                         help="how long the old keys stay valid (default 30, the delivery retention)")
    krotate.add_argument("--enc-delay-minutes", type=float, default=60.0, metavar="M",
                         help="seal to the new encryption key only M minutes from now, time to give the new "
                         "key file to the processes that open with it (default 60)")
    krotate.set_defaults(func=cmd_keys_rotate)
    kretire = keys_sub.add_parser("retire", parents=[common],
                                  help="remove a party's keys whose overlap has ended from the registry")
    kretire.add_argument("--agency", required=True, metavar="ID", help="the agency (or the broker)")
    kretire.add_argument("--force", action="store_true",
                         help="retire even if messages signed or sealed with the old keys still wait in NATS")
    kretire.add_argument("--purge-decryption-keys", action="store_true",
                         help="also remove the retired decryption private keys from the key file (kept by "
                         "default): anything still stored sealed to them can never be opened again")
    kretire.set_defaults(func=cmd_keys_retire)

    config = sub.add_parser("config", parents=[common], help="settings")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    ccheck = config_sub.add_parser("check", parents=[common], help="load settings, keys, registry and rulebook; "
                                   "report what is wrong in plain words (exit 1)")
    ccheck.set_defaults(func=cmd_config_check)

    adapter = sub.add_parser("adapter", parents=[common], help="an agency's adapter service")
    adapter_sub = adapter.add_subparsers(dest="adapter_command", required=True)
    arun = adapter_sub.add_parser("run", parents=[common], help="hand deliveries to the agency system until SIGTERM")
    arun.add_argument("--as", dest="agency", required=True, help="the agency id")
    arun.add_argument("--http", metavar="HOST:PORT", help="serve /healthz, /readyz and /metrics here")
    arun.add_argument("--webhook", metavar="URL", help="the agency system's inbound URL")
    arun.add_argument("--webhook-secret-file", metavar="FILE", help="the HMAC key shared with the agency system")
    arun.add_argument("--drop-folder", metavar="DIR", help="write each delivery here atomically instead")
    arun.add_argument("--inbound-secret-file", metavar="FILE",
                      help="take the agency system's records at POST /records/FORMAT, signed with this HMAC key")
    arun.add_argument("--inbound-folder", metavar="DIR", help="take the agency system's exports from DIR/FORMAT/")
    arun.add_argument("--local-authority", metavar="AGENCY", help="police: the local authority that receives referrals")
    arun.set_defaults(func=cmd_adapter_run, log_level_default="INFO")
    from adapters.runtime.commands import add_dead_letter_commands  # light: its commands import what they need

    add_dead_letter_commands(adapter_sub, common)

    token = sub.add_parser("token", parents=[common], help="mint a development API token (dev issuer key)")
    token.add_argument("--role", action="append", required=True,
                       choices=["ig-officer", "auditor", "operator", "dsl"],
                       help="a role (repeat for more); dsl: a school's designated safeguarding lead")
    token.add_argument("--audience", metavar="AUD",
                       help="the service that accepts it (default: the API's audience); a school's Operation "
                            "Encompass inbox takes sgb-inbox-<school id> (with --role dsl)")
    token.add_argument("--sub", default="dev-user", help="who the token is for (default dev-user)")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds (default 3600)")
    token.set_defaults(func=cmd_token)

    serve = sub.add_parser("serve", parents=[common], help="run a broker instance until SIGINT/SIGTERM")
    serve.add_argument("--http", metavar="HOST:PORT",
                       help="serve the probes, the audit API (/api/v1) and the IG pages (/ig/) on this address")
    serve.set_defaults(func=cmd_serve, log_level_default="INFO")

    demo = sub.add_parser("demo", parents=[common], help="play the demo story on an embedded NATS")
    demo.set_defaults(func=cmd_demo)

    send = sub.add_parser("send", parents=[common], help="sign, seal and publish a message as an agency")
    send.add_argument("--as", dest="as_", required=True, metavar="AGENCY", help="sending agency id")
    send.add_argument("--type", help="message type, e.g. referral")
    send.add_argument("--version", type=int, default=1, help="schema version (default 1)")
    send.add_argument("--to", metavar="AGENCY[,AGENCY]", help="recipient agency ids")
    send.add_argument("--sharing", metavar="SHARING.json", help="the lawful-basis sharing block")
    send.add_argument("--re", help="id of the message this one answers")
    send.add_argument("--thread", help="case/thread id (no personal data)")
    send.add_argument("--raw", metavar="FILE", help="publish the file's bytes unchanged")
    send.add_argument("--out", metavar="FILE", help="write the wire message here instead of publishing")
    send.add_argument("--wait", action="store_true", help="wait for the outcome and print it")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds --wait waits (default 30)")
    send.add_argument("payload", nargs="?", metavar="PAYLOAD.json")
    send.set_defaults(func=cmd_send)

    inbox = sub.add_parser("inbox", parents=[common], help="verify, open and print deliveries to an agency")
    inbox.add_argument("--as", dest="as_", required=True, metavar="AGENCY")
    inbox.add_argument("--json", action="store_true", help="one JSON object a line")
    inbox.add_argument("--ack", action="store_true", help="acknowledge what was printed")
    inbox.set_defaults(func=cmd_inbox)

    audit = sub.add_parser("audit", parents=[common], help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    alist = audit_sub.add_parser("list", parents=[common], help="print the audit records so far")
    alist.add_argument("--json", action="store_true", help="one JSON object a line")
    alist.set_defaults(func=cmd_audit_list)
    averify = audit_sub.add_parser("verify", parents=[common],
                                   help="check every chain, signature and checkpoint (exit 5 if tampered)")
    averify.add_argument("--export", metavar="FILE", help="check an export file offline instead of the stream")
    averify.add_argument("--witness", metavar="FILE", help="checkpoints saved earlier (--save-witness)")
    averify.add_argument("--save-witness", metavar="FILE", help="save the latest checkpoints, to keep elsewhere")
    averify.add_argument("--json", action="store_true", help="the report as JSON")
    averify.set_defaults(func=cmd_audit_verify)
    areindex = audit_sub.add_parser("reindex", parents=[common],
                                    help="rebuild the local SQLite index from the audit stream")
    areindex.set_defaults(func=cmd_audit_reindex)
    aexport = audit_sub.add_parser("export", parents=[common], help="write a signed export of a time range")
    aexport.add_argument("--since", required=True, help="YYYY-MM-DD or ISO 8601 time (UTC), inclusive")
    aexport.add_argument("--until", required=True, help="YYYY-MM-DD or ISO 8601 time (UTC), exclusive")
    aexport.add_argument("file", metavar="FILE")
    aexport.set_defaults(func=cmd_audit_export)
    pol = sub.add_parser("policy", help="the information-sharing rulebook", parents=[common])
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    check = pol_sub.add_parser("check", parents=[common], help="validate a rulebook (default: the one in force)")
    check.add_argument("file", nargs="?", metavar="FILE")
    check.set_defaults(func=cmd_policy_check)
    cov = pol_sub.add_parser("coverage", parents=[common],
                             help="golden rules, clocks and lawful-basis codes against the rules and scenarios")
    cov.add_argument("--rulebook", metavar="FILE", help="default: the rulebook in force")
    cov.add_argument("--scenarios", metavar="FILE", help="default: <rulebook>.scenarios.yaml beside it")
    cov.add_argument("--json", action="store_true", help="print the table as JSON")
    cov.add_argument("--width", type=int, default=3, help="scenarios named per item (default 3)")
    cov.add_argument("--strict", action="store_true", help="exit 1 on any gap too (always on a failing scenario)")
    cov.set_defaults(func=cmd_policy_coverage)
    explain = pol_sub.add_parser("explain", parents=[common],
                                 help="print the decision for each recipient, without sending")
    explain.add_argument("--as", dest="as_", required=True, metavar="AGENCY")
    explain.add_argument("--type", required=True)
    explain.add_argument("--version", type=int, default=1)
    explain.add_argument("--to", required=True, metavar="AGENCY[,AGENCY]")
    explain.add_argument("--sharing", required=True, metavar="SHARING.json")
    explain.add_argument("payload", metavar="PAYLOAD.json")
    explain.set_defaults(func=cmd_policy_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level
    if level == "WARNING" and getattr(args, "log_level_default", None):
        level = args.log_level_default
    logs.configure(level=level)
    try:
        settings = Settings.from_env(home=args.home, config_file=args.config)
        code: int = asyncio.run(args.func(settings, args))
        return code
    except BrokerError as exc:
        print(f"sgb: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
