"""``sgb policy``: the information-sharing rulebook checked, traced to the guidance, and explained."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson

from broker.cli.common import EXIT_REJECTED, emit
from broker.config import Settings
from broker.errors import BrokerError
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
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
    types = pol_sub.add_parser("message-types", parents=[common],
                               help="the catalogue of message types (docs/message-types.md)")
    types.add_argument("--rulebook", metavar="FILE", help="default: the rulebook in force")
    types.set_defaults(func=cmd_policy_message_types)
    explain = pol_sub.add_parser("explain", parents=[common],
                                 help="print the decision for each recipient, without sending")
    explain.add_argument("--as", dest="as_", required=True, metavar="AGENCY")
    explain.add_argument("--type", required=True)
    explain.add_argument("--version", type=int, default=1)
    explain.add_argument("--to", required=True, metavar="AGENCY[,AGENCY]")
    explain.add_argument("--sharing", required=True, metavar="SHARING.json")
    explain.add_argument("payload", metavar="PAYLOAD.json")
    explain.set_defaults(func=cmd_policy_explain)


async def cmd_policy_check(settings: Settings, args: argparse.Namespace) -> int:
    from broker.policy import rulebook as rulebooks

    path = Path(args.file) if args.file else (settings.rulebook_path or rulebooks.DEFAULT_RULEBOOK)
    book = rulebooks.load(path, Catalogue())  # ConfigError names each problem; exit 1
    print(f"{path}: valid — edition {book.edition}, {len(book.rules)} rules, {len(book.general)} general rules")
    return 0


async def cmd_policy_message_types(settings: Settings, args: argparse.Namespace) -> int:
    """Who sends each message type, who receives it, its clocks and its legal source, as Markdown."""
    from broker.policy import messagetypes
    from broker.policy import rulebook as rulebooks

    catalogue = Catalogue()
    path = Path(args.rulebook) if args.rulebook else (settings.rulebook_path or rulebooks.DEFAULT_RULEBOOK)
    print(messagetypes.render(rulebooks.load(path, catalogue), catalogue), end="")
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
        emit({"rows": [r.as_json() for r in report.rows],
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
        emit({"decision": "refuse", "code": exc.code, "reason": exc.reason, "field": exc.field, "rule": exc.rule,
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
        emit({"recipient": rd.recipient, "decision": "share" if rd.share else "refuse", "code": rd.code,
             "deadline": due if rd.share else None,
             "fields": sorted(payload) if rd.fields is None else list(rd.fields), "withheld": list(rd.withheld),
             "rules": [{"id": r, "cite": list(book.citation(r))} for r in rd.rules],
             "flags": list(decision.flags), "notes": list(decision.notes)})
    return 0
