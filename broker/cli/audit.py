"""``sgb audit``: the audit log listed, verified, exported and its local index rebuilt."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from broker.audit import offline
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
    aprove = audit_sub.add_parser("prove", parents=[common],
                                  help="write a proof bundle of the records of a message or record id")
    aprove.add_argument("query", metavar="MESSAGE-ID|RECORD-ID")
    aprove.add_argument("--out", metavar="FILE", help="write the bundle here (default: standard output)")
    aprove.set_defaults(func=cmd_audit_prove)
    acheck = audit_sub.add_parser("check", parents=[common],
                                  help="check a proof bundle or consistency proof offline against trusted keys")
    offline.add_arguments(acheck)
    acheck.set_defaults(func=cmd_audit_check)
    acons = audit_sub.add_parser("consistency", parents=[common],
                                 help="prove a later transparency checkpoint extends an earlier (exit 5 if not)")
    acons.add_argument("old", metavar="OLD", help="a file holding a checkpoint note, or INSTANCE:SIZE from the stream")
    acons.add_argument("new", metavar="NEW", help="likewise, the later checkpoint")
    acons.add_argument("--out", metavar="FILE", help="write the consistency proof here")
    acons.set_defaults(func=cmd_audit_consistency)
    averifier = audit_sub.add_parser("verifier", parents=[common],
                                     help="write the offline verifier (one file) for an auditor: sgb-verify.pyz")
    averifier.add_argument("--out", metavar="FILE", default="sgb-verify.pyz", help="where (default: %(default)s)")
    averifier.set_defaults(func=cmd_audit_verifier)
    avkey = audit_sub.add_parser("vkey", parents=[common],
                                 help="print the verifier keys of a chain's transparency checkpoints, to publish")
    avkey.add_argument("instance", nargs="?", metavar="INSTANCE", help="the instance chain (default: this one)")
    avkey.set_defaults(func=cmd_audit_vkey)


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
    from broker.policy import rulebook as rulebooks
    from broker.web.app import triage_for
    from broker.wire.subjects import AUDIT

    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    book = rulebooks.load(settings.rulebook_path or rulebooks.DEFAULT_RULEBOOK, catalogue)
    path = settings.index_path
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    index = AuditIndex(path, triage=triage_for(book, registry))  # the queue the broker would derive
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


async def _chains(settings: Settings, name: str) -> tuple[dict[str, Any], list[bytes]]:
    from broker.audit.proofs import read_chains
    from broker.audit.verify import broker_public_keys

    keys = broker_public_keys(Registry.load(settings.registry_path, Catalogue()))()
    async with nats_location(settings) as url, connected(settings, url, name=name) as nc:
        return await read_chains(jetstream(nc, settings), settings.audit.tlog_origin, keys), keys


async def cmd_audit_prove(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from broker.audit.proofs import prove

    chains, _ = await _chains(settings, "sgb-audit-prove")
    bundle, pending = prove(chains, args.query)
    if not bundle["records"] and not pending:
        raise BrokerError("no audit record has that record id or message id")
    for where in pending:
        print(f"not yet covered by a transparency checkpoint: record {where}; wait for the next checkpoint "
              "([audit] tlog_checkpoint_records or checkpoint_interval) and prove again", file=sys.stderr)
    data = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
    if args.out:
        Path(args.out).write_bytes(data)
        print(f"wrote {args.out}: {len(bundle['records'])} records, {len(bundle['checkpoints'])} checkpoints",
              file=sys.stderr)
    else:
        sys.stdout.write(data.decode())
    return 0 if not pending else 1


async def cmd_audit_check(settings: Settings, args: argparse.Namespace) -> int:
    return offline.check_file(args.file, args.key, args.witness, args.quorum)


async def cmd_audit_verifier(settings: Settings, args: argparse.Namespace) -> int:
    offline.build_verifier(Path(args.out))
    print(f"wrote {args.out}: run it as  python {args.out} BUNDLE --key VKEY [--witness VKEY]")
    return 0


async def cmd_audit_consistency(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from broker.audit import notes
    from broker.audit.checkpoints import broker_note_keys
    from broker.audit.proofs import consistency, open_signed

    chains, keys = await _chains(settings, "sgb-audit-consistency")
    base = settings.audit.tlog_origin
    named = []
    for value in (args.old, args.new):
        if Path(value).is_file():
            data = Path(value).read_bytes()
            try:
                origin = notes.Checkpoint.parse(notes.parse_note(data).text).origin
                named.append((origin.removeprefix(base + "/"), open_signed(data, origin, keys)))
            except notes.NoteError as exc:
                raise BrokerError(f"{value}: {exc}") from None
        else:
            instance, _, size = value.rpartition(":")
            signed = chains[instance].signed.get(int(size)) if instance in chains and size.isdigit() else None
            if signed is None:
                raise BrokerError(f"{value} is neither a file nor INSTANCE:SIZE of a stored transparency checkpoint")
            named.append((instance, signed))
    (instance, old), (other, new) = named
    if instance != other or instance not in chains:
        raise BrokerError("the two checkpoints are not of one instance chain of this deployment")
    doc = consistency(chains[instance], instance, old, new)
    if args.out:
        Path(args.out).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    failed = offline.report(*offline.check_consistency(doc, broker_note_keys(f"{base}/{instance}", keys)))
    return EXIT_TAMPERED if failed else 0


async def cmd_audit_vkey(settings: Settings, args: argparse.Namespace) -> int:
    from broker.audit.checkpoints import broker_note_keys, tlog_origin
    from broker.audit.verify import broker_public_keys

    keys = broker_public_keys(Registry.load(settings.registry_path, Catalogue()))()
    for key in broker_note_keys(tlog_origin(settings.audit, args.instance or settings.instance), keys):
        print(key)
    return 0
