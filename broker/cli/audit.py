"""``sgb audit``: the audit log listed, verified, exported and its local index rebuilt."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from broker.cli.common import EXIT_TAMPERED, emit
from broker.config import Settings
from broker.errors import BrokerError
from broker.identity.keys import load_identity
from broker.transport.connection import connected, jetstream, nats_location
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
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


async def cmd_audit_list(settings: Settings, args: argparse.Namespace) -> int:
    from broker.audit.reading import read_audit

    async with nats_location(settings) as url, connected(settings, url, name="sgb-audit") as nc:
        async for record in read_audit(jetstream(nc, settings)):
            if args.json:
                emit(record)
            else:
                print(format_audit(record))
    return 0


async def cmd_audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    from broker.audit.export import verify_export, verify_store

    registry = Registry.load(settings.registry_path, Catalogue())
    if args.export:
        report = verify_export(Path(args.export), registry, tlog_origin=settings.audit.tlog_origin)
    else:
        witnesses = [line.encode("ascii") for line in Path(args.witness).read_text().split()] if args.witness else []
        async with nats_location(settings) as url, connected(settings, url, name="sgb-audit-verify") as nc:
            report = await verify_store(jetstream(nc, settings), registry, witnesses=witnesses,
                                          tlog_origin=settings.audit.tlog_origin)
        if args.save_witness and report.ok:
            tokens = [c.checkpoint_token for c in report.chains.values() if c.checkpoint_token is not None]
            Path(args.save_witness).write_bytes(b"".join(t + b"\n" for t in tokens))
    if args.json:
        emit(report.summary())
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
