"""``sgb token``: a development API token, signed with the development issuer's key."""

from __future__ import annotations

import argparse

from broker.config import Settings
from broker.http.tokens import ROLES
from broker.identity.keys import load_identity


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    token = sub.add_parser("token", parents=[common], help="mint a development API token (dev issuer key)")
    token.add_argument("--role", action="append", required=True,
                       choices=ROLES,
                       help="a role (repeat for more); dsl: a school's designated safeguarding lead; dpo: the "
                            "Data Protection Officer (escalated reviews, the monthly report)")
    token.add_argument("--audience", metavar="AUD",
                       help="the service that accepts it (default: the API's audience); a school's Operation "
                            "Encompass inbox takes sgb-inbox-<school id> (with --role dsl)")
    token.add_argument("--sub", default="dev-user", help="who the token is for (default dev-user)")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds (default 3600)")
    token.set_defaults(func=cmd_token)


async def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from broker.http.tokens import mint

    identity = load_identity(settings.home, settings.api.issuer)
    api = replace(settings.api, audience=args.audience) if args.audience else settings.api
    print(mint(identity, sub=args.sub, roles=args.role, settings=api, ttl=args.ttl))
    return 0
