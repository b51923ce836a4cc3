"""``sgb keys``: the development registry and keys, rotation and retirement of a party's keys,
and the subject index's key."""

from __future__ import annotations

import argparse
import sys
import time

from broker.config import Settings
from broker.errors import BrokerError
from broker.identity.devkeys import init_dev_keys
from broker.transport.connection import connected, jetstream, nats_location
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
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
    from nats.js.errors import NotFoundError

    from broker.errors import InvalidEnvelope
    from broker.transport.errors import nats_failures
    from broker.wire.jws import unverified
    from broker.wire.subjects import DELIVERY, INGRESS, delivery_subject, ingress_subject

    is_broker = party == Registry.load(settings.registry_path, Catalogue()).broker_id
    where = [(INGRESS, "sg.in.>" if is_broker else ingress_subject(party))]
    if not is_broker:
        where.append((DELIVERY, delivery_subject(party)))
    count = 0
    async with nats_location(settings) as url, connected(settings, url, name="sgb-keys-retire") as nc:
        js = jetstream(nc, settings)
        for stream, subject in where:
            with nats_failures(f"reading {stream}"):
                try:
                    seq = max((await js.stream_info(stream)).state.first_seq, 1)
                except NotFoundError:
                    continue
            while True:
                with nats_failures(f"reading {stream}"):
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
    return count


async def cmd_keys_rotate_subject(settings: Settings, args: argparse.Namespace) -> int:
    from broker.identity.blindindex import rotate_subject_key

    kid = rotate_subject_key(settings.home)
    print(f"subject index key {kid} is now current; earlier keys stay for searching older records")
    print("copy the keyring to every broker instance, then restart them one at a time")
    return 0
