"""The adapter's operator commands: ``sgb adapter dead-letters list|retry|discard``.

- ``list --as AGENCY [--json]``: each dead letter's key (its delivery id), type, sender, the
  sender's message id, when it was dead-lettered, its code, attempts and the reason in the
  adapter's words (codes and HTTP statuses, never content);
- ``retry --as AGENCY (KEY... | --all)``: once the agency system is back, hand each over again
  with the adapter's own settings (``--config``'s ``[adapter]`` table, or ``--webhook``/
  ``--drop-folder`` as for ``run``). The delivery id is the one the agency system was first sent,
  so a system that stores by it takes each delivery once; the sender, told ``not-delivered``
  before, is told ``delivered``. A letter handed over leaves the folder; one the system still does
  not take stays (exit 1). It may run while ``sgb adapter run`` does: the letters are no longer in
  NATS, and the store of what was handed over is shared;
- ``discard --as AGENCY (KEY... | --all)``: remove letters for good (their sender was told
  ``not-delivered`` when they were dead-lettered). Logged, and kept in ``discarded.jsonl`` beside
  them, with ids, code and who, never content.

Kept apart from :mod:`broker.cli` (which only adds these parsers) and light to import: the
heavy modules load when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.runtime.deadletters import DeadLetters, Letter
    from adapters.runtime.settings import AdapterSettings
    from broker.config import Settings


def add_dead_letter_commands(adapter_sub: Any, common: argparse.ArgumentParser) -> None:
    """``sgb adapter dead-letters ...`` under ``sgb adapter`` (``adapter_sub``: its subparsers)."""
    dead = adapter_sub.add_parser("dead-letters", parents=[common],
                                  help="deliveries the agency system did not take: list, retry, discard")
    dead_sub = dead.add_subparsers(dest="dead_letters_command", required=True)
    listing = dead_sub.add_parser("list", parents=[common], help="ids, type, sender, when and why of each")
    listing.add_argument("--as", dest="agency", required=True, help="the agency id")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.set_defaults(func=cmd_list)
    again = dead_sub.add_parser("retry", parents=[common],
                                help="hand them to the agency system again, under the same delivery ids")
    again.add_argument("--as", dest="agency", required=True, help="the agency id")
    again.add_argument("--webhook", metavar="URL", help="the agency system's inbound URL (default: the config's)")
    again.add_argument("--webhook-secret-file", metavar="FILE", help="the HMAC key shared with the agency system")
    again.add_argument("--drop-folder", metavar="DIR", help="write each delivery here instead")
    _which(again)
    again.set_defaults(func=cmd_retry, log_level_default="INFO")
    drop = dead_sub.add_parser("discard", parents=[common], help="remove them for good (logged, ids kept)")
    drop.add_argument("--as", dest="agency", required=True, help="the agency id")
    _which(drop)
    drop.set_defaults(func=cmd_discard)


def _which(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keys", nargs="*", metavar="KEY", help="dead letters by key (as listed)")
    parser.add_argument("--all", action="store_true", help="every dead letter of the agency")


def _folder(settings: Settings, agency: str) -> DeadLetters | None:
    """The agency's dead-letter folder (None when it has none), once the agency is known."""
    from adapters.runtime.deadletters import DeadLetters
    from broker.errors import BrokerError
    from broker.wire.catalogue import Catalogue
    from broker.wire.registry import Registry

    if Registry.load(settings.registry_path, Catalogue()).get(agency) is None:
        raise BrokerError(f"{agency} is not in the trust registry")
    folder = settings.home / "adapters" / agency / "dead-letters"
    return DeadLetters(folder) if folder.is_dir() else None


def _chosen(dead: DeadLetters, args: argparse.Namespace) -> list[Letter]:
    from broker.errors import BrokerError

    if bool(args.keys) == bool(args.all):
        raise BrokerError("name the dead letters (their keys, as listed) or give --all")
    letters = {letter.key: letter for letter in dead.letters()}
    unknown = [key for key in args.keys if dead.safe(key) not in letters]
    if unknown:
        raise BrokerError(f"no such dead letter: {', '.join(dead.safe(k) for k in unknown)}")
    return list(letters.values()) if args.all else [letters[dead.safe(key)] for key in args.keys]


async def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    dead = _folder(settings, args.agency)
    letters = dead.letters() if dead is not None else []
    if args.json:
        for letter in letters:
            sys.stdout.write(orjson.dumps(letter.as_json()).decode() + "\n")
        return 0
    for letter in letters:
        print(f"{letter.key}  {letter.type or '?'}  from {letter.sender or '?'} (message {letter.message or '?'})  "
              f"dead-lettered {letter.at}  {letter.code}  attempts {letter.attempts}"
              + (f"  operator retries {letter.retried}" if letter.retried else "") + f"\n    {letter.reason}")
    print(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''}")
    return 0


def _adapter_settings(settings: Settings, args: argparse.Namespace) -> AdapterSettings:
    from adapters.runtime.settings import AdapterSettings

    return AdapterSettings.load(settings, args.agency, webhook=args.webhook,
                                webhook_secret_file=args.webhook_secret_file, drop_folder=args.drop_folder)


async def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.runtime.deadletters import retry
    from adapters.runtime.service import handing_over
    from broker.transport.connection import nats_location

    dead = _folder(settings, args.agency)
    if dead is None:
        print("0 dead letters")
        return 0
    chosen = _chosen(dead, args)
    adapter = _adapter_settings(settings, args)
    async with nats_location(settings) as url, handing_over(settings, adapter, url) as out:
        results = await retry(out.deliverer.dead, [letter.key for letter in chosen], out.deliverer.resend)
    for result in results:
        print(f"{result.key}  {result.outcome}" + (f": {result.reason}" if result.reason else ""))
    failed = [r for r in results if r.outcome not in ("delivered", "already-delivered")]
    print(f"{len(results) - len(failed)} handed over, {len(failed)} still dead letters")
    return 1 if failed else 0


async def cmd_discard(settings: Settings, args: argparse.Namespace) -> int:
    dead = _folder(settings, args.agency)
    if dead is None:
        print("0 dead letters")
        return 0
    chosen = _chosen(dead, args)
    for letter in chosen:
        dead.discard(letter)
        print(f"{letter.key}  discarded")
    print(f"{len(chosen)} discarded")
    return 0
