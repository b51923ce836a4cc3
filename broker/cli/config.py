"""``sgb config check``: load everything a broker needs to start and say what is wrong."""

from __future__ import annotations

import argparse
import os

from broker.config import Settings
from broker.errors import BrokerError
from broker.identity.keys import load_identity
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", parents=[common], help="settings")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    ccheck = config_sub.add_parser("check", parents=[common], help="load settings, keys, registry and rulebook; "
                                   "report what is wrong in plain words (exit 1)")
    ccheck.set_defaults(func=cmd_config_check)


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
