"""An agency system using the SDK as a library: send a referral, hear the broker's outcome, then
read what has been delivered to this agency (each delivery handed over once).

    SGB_HOME=./.sgb python docs/examples/agency_system.py police-met la-camden

It needs the agency's private key under ``$SGB_HOME/keys`` and the trust registry; NATS is
``$SGB_NATS_URL`` (or the embedded server ``sgb serve`` started for that home).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from adapters.sdk import agency_client
from broker.config import Settings
from broker.errors import BrokerError
from broker.transport.natsserver import running_url

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


async def main(agency: str, local_authority: str) -> int:
    settings = Settings.from_env()
    url = settings.nats.url or running_url(settings.nats_dir)
    if url is None:
        print("no NATS: set SGB_NATS_URL or start `sgb serve` for this home", file=sys.stderr)
        return 2
    payload = json.loads((EXAMPLES / "referral.example.json").read_text())
    sharing = json.loads((EXAMPLES / "referral.sharing.example.json").read_text())
    async with agency_client(settings, agency, url=url) as client:
        try:  # the SDK checks the payload against the broker's schema before anything is sent
            message_id = await client.send(typ="referral", to=[local_authority], payload=payload, sharing=sharing)
        except BrokerError as exc:
            print(f"not sent: {exc}", file=sys.stderr)
            return 1
        outcome = await client.wait_outcome(message_id, timeout=30)
        print(json.dumps({"sent": message_id, "outcome": outcome.type, **outcome.payload}))
        async for delivery, msg in client.fetch(idle=0.5):
            if delivery is None:  # failed verification: never hand it to the agency system
                await msg.term()
                continue
            if client.seen is not None and not await client.seen.has(delivery.id):
                print(json.dumps({"delivery": delivery.id, "type": delivery.type}))  # hand it to your system here
                await client.seen.add(delivery.id, delivery)
            await msg.ack_sync()  # only after your system has it
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:3])))
