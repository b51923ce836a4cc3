"""``sgb keys init``: a development partnership (the fictional Camden), with every party's keys,
the trust registry, the audit and blind-index keys, and the NATS credentials and authorisation.

Production identities come from each agency's own key ceremony; only their public halves go into
the registry.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from broker.errors import ConfigError
from broker.files import write_private
from broker.identity import natsauth
from broker.identity.blindindex import rotate_subject_key
from broker.identity.keys import BROKER_ID, identity_path, new_party
from broker.wire import _crypto

TOKEN_ISSUER_ID = "dev-token-issuer"  # noqa: S105 - an agency id, not a secret


# The demo partnership of Camden: (id, kind, display name, suite, registry facts).
DEMO_AGENCIES: tuple[tuple[str, str, str, _crypto.SuiteName, Mapping[str, Any]], ...] = (
    ("police-met", "police", "Metropolitan Police Service", _crypto.X25519_SUITE,
     {"publicAuthority": True, "organisationType": "police-force", "areas": ["camden"]}),
    ("health-camden", "health", "NHS North Central London ICB (Camden)", _crypto.HYBRID_SUITE,
     {"publicAuthority": True, "organisationType": "integrated-care-board", "areas": ["camden"]}),
    ("la-camden", "local-authority", "London Borough of Camden Children's Social Care", _crypto.X25519_SUITE,
     {"publicAuthority": True, "organisationType": "local-authority", "areas": ["camden"]}),
    ("school-hillside", "school", "Hillside Primary School", _crypto.X25519_SUITE,
     {"publicAuthority": True, "organisationType": "maintained-school", "areas": ["camden"]}),
    ("cscpr-panel", "national-panel", "Child Safeguarding Practice Review Panel", _crypto.X25519_SUITE,
     {"publicAuthority": True, "organisationType": "national-panel"}),
    ("ofsted", "ofsted", "Ofsted", _crypto.X25519_SUITE,
     {"publicAuthority": True, "organisationType": "inspectorate"}),
    ("dfe-sos", "secretary-of-state", "Secretary of State for Education (DfE)", _crypto.X25519_SUITE,
     {"publicAuthority": True, "organisationType": "government-department"}),
    ("cdop-ncl", "cdop", "North Central London Child Death Overview Panel", _crypto.X25519_SUITE,
     {"publicAuthority": True, "organisationType": "child-death-overview-panel", "areas": ["camden"]}),
    ("csp-camden", "community-safety-partnership", "Safer Camden Community Safety Partnership", _crypto.X25519_SUITE,
     {"publicAuthority": True, "organisationType": "community-safety-partnership", "areas": ["camden"]}),
)


def init_dev_keys(home: Path, registry_path: Path, *, force: bool = False) -> list[str]:
    """Create the development registry and private keys. Returns the party ids created."""
    if registry_path.exists() and not force:
        raise ConfigError(f"{registry_path} exists; pass --force to replace the development keys")
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    parties: list[tuple[str, str, str, _crypto.SuiteName | None, Mapping[str, Any]]] = [
        (BROKER_ID, "broker", "Safeguarding Broker", _crypto.X25519_SUITE, {}),
        *DEMO_AGENCIES,
        (TOKEN_ISSUER_ID, "token-issuer", "Development token issuer", None, {}),
    ]
    agencies = []
    for party, kind, name, suite, facts in parties:
        private, public = new_party(party, suite, today)
        write_private(identity_path(home, party), orjson.dumps(private, option=orjson.OPT_INDENT_2))
        entry: dict[str, Any] = {"id": party, "kind": kind, "name": name, **facts, "keys": public}
        if suite is not None:
            entry["suite"] = suite
        agencies.append(entry)
    write_private(home / "keys" / "audit-hmac.key", secrets.token_bytes(32))
    (home / "keys" / "subject-index.keyring.json").unlink(missing_ok=True)
    rotate_subject_key(home)
    broker = (BROKER_ID, natsauth.create_seed(home, BROKER_ID))
    agencies_nats = [(party, natsauth.create_seed(home, party)) for party, *_ in DEMO_AGENCIES]
    natsauth.write_authorization(home / "nats", broker, agencies_nats)
    registry = {"registry": "sgb-trust-registry", "version": 1, "broker": BROKER_ID, "agencies": agencies}
    registry_path.parent.mkdir(parents=True, exist_ok=True)
    registry_path.write_bytes(orjson.dumps(registry, option=orjson.OPT_INDENT_2))
    return [p[0] for p in parties]
