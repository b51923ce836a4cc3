"""``sgb send`` and ``sgb inbox``: an agency's messages, sent and received from the command line."""

from __future__ import annotations

import argparse
import contextlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import structlog
from nats.aio.msg import Msg

from broker.cli.common import EXIT_REJECTED, EXIT_TIMEOUT, agency_client, emit, offline_client
from broker.config import Settings
from broker.errors import BrokerError, InvalidEnvelope, TransportError
from broker.transport.errors import nats_failures, quietly
from broker.wire.jws import unverified

if TYPE_CHECKING:
    from adapters.sdk import Delivery

log = structlog.get_logger("sgb.cli")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
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
                client = offline_client(settings, args.as_)
            else:
                client = await stack.enter_async_context(agency_client(settings, args.as_))
            msg_id, data = client.build(typ=args.type, ver=args.version, to=args.to.split(","), payload=payload,
                                        sharing=sharing, re=args.re, thread=args.thread)
            if args.out:
                Path(args.out).write_bytes(data)
                emit({"messageId": msg_id, "written": args.out, "bytes": len(data)})
                return 0
        if args.raw:
            client = await stack.enter_async_context(agency_client(settings, args.as_))
        await client.publish(data, msg_id)
        if not args.wait:
            emit({"messageId": msg_id, "published": f"sg.in.{args.as_}"})
            return 0
        try:
            outcome = await client.wait_outcome(msg_id, timeout=args.timeout)
        except TransportError:
            raise
        except BrokerError:
            emit({"messageId": msg_id, "outcome": "timeout",
                 "reason": f"no outcome within {args.timeout:g}s; is `sgb serve` running?"})
            return EXIT_TIMEOUT
        if outcome.type == "rejection":
            emit({"messageId": msg_id, "outcome": "rejected", **{k: v for k, v in outcome.payload.items()
                                                                if k != "messageId"}})
            return EXIT_REJECTED
        emit({"messageId": msg_id, "outcome": "routed", "deliveredTo": outcome.payload.get("recipients", []),
             "refused": outcome.payload.get("refused", [])})
        return 0
    return 0


def _message_id_of(data: bytes) -> str:
    """Best effort: the ``jti`` of a readable wire message (read with the JWS reader), so --wait
    can match the outcome; else a fresh id (the broker answers unreadable bytes by that id)."""
    try:
        return str(uuid.UUID(str(unverified(data)[1].get("jti"))))
    except (InvalidEnvelope, ValueError):
        return str(uuid.uuid4())


async def cmd_inbox(settings: Settings, args: argparse.Namespace) -> int:
    async with agency_client(settings, args.as_) as client:
        seen = client.seen
        assert seen is not None  # the SDK's client remembers what was handed over
        taken: list[Msg] = []
        async for delivery, msg in client.fetch():
            if delivery is None:
                log.warning("delivery failed verification; left for inspection", seq=msg.metadata.sequence.stream)
                taken.append(msg)
                continue
            if args.ack and await seen.has(delivery.id):
                with nats_failures("acknowledging a delivery"):
                    await msg.ack()  # a duplicate of what the agency already has
                continue
            if args.json:
                emit(delivery.as_json())
            else:
                _print_delivery(delivery)
            if args.ack:
                await seen.add(delivery.id)
                with nats_failures("acknowledging a delivery"):
                    await msg.ack_sync()
            else:
                taken.append(msg)
        for msg in taken:  # back at once for the next reader (else after the consumer's ack wait)
            with quietly():
                await msg.nak()
    return 0


def _print_delivery(d: Delivery) -> None:
    c = d.claims
    origin = c.get("origin", {})
    print(f"{d.type} v{c['ver']}  id={d.id}  from={origin.get('iss', c['iss'])}  re={c.get('re', '-')}")
    print("  sharing: " + orjson.dumps(c["sharing"]).decode())
    print("  payload: " + orjson.dumps(d.payload, option=orjson.OPT_INDENT_2).decode().replace("\n", "\n  "))
