"""Subject access with proof (issue 16, docs/transparency.md "Subject access with proof"):
everything recorded about one child's messages as one ``sgb-audit-proof/1`` bundle, from the API
(``POST /api/v1/subjects/proof``, the subject search's body) and the IG subject-access page.

The bundle names the messages by id, never the child: the identity searched stays in the keyed
blind index. The download is audited like the search, with counts only. Before reading the chains
this instance's chain is checkpointed, so its records are all covered; another instance's records
that its latest checkpoint does not cover yet are named under ``pending`` (a later download covers them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final

import orjson
from aiohttp import web

from broker.audit.proofs import prove, read_chains
from broker.audit.verify import broker_public_keys
from broker.web.actions import audit_action
from broker.web.context import BROKER_KEY
from broker.web.params import json_body
from broker.web.problems import IG, Problem, requires
from broker.web.records import find_subject
from broker.web.vocabulary import SUBJECT_PROOF

PENDING: Final = ("not yet covered by a transparency checkpoint of their instance: left out of this bundle; "
                  "a later download covers them")


async def subject_bundle(request: web.Request, messages: Sequence[str], searched_by: str) -> dict[str, Any]:
    """The proof bundle of every record of ``messages`` on every chain, audited (counts only)."""
    broker = request.app[BROKER_KEY]
    await broker.audit.checkpoint_now()
    chains = await read_chains(broker.js, broker.settings.audit.tlog_origin, broker_public_keys(broker.registry)())
    bundle, pending = prove(chains, list(messages))
    await audit_action(request, SUBJECT_PROOF, searchedBy=searched_by, messagesFound=len(messages),
                       recordsProved=len(bundle["records"]), recordsPending=len(pending))
    if pending:
        bundle["pending"] = {"records": pending, "detail": PENDING}
    return bundle


def attachment(bundle: dict[str, Any]) -> web.Response:
    """The bundle as a JSON download, ``subject-access-<date>.sgb-proof.json``."""
    name = f"subject-access-{dt.datetime.now(dt.UTC).date().isoformat()}.sgb-proof.json"
    return web.Response(body=orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n", content_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


@requires(IG)
async def subject_proof(request: web.Request) -> web.Response:
    """Everything recorded about one child as a proof bundle (found as by the subject search; audited)."""
    messages, by = await find_subject(request, await json_body(request))
    if not messages:
        await audit_action(request, SUBJECT_PROOF, searchedBy=by, messagesFound=0)
        raise Problem(404, "not-found", "no messages about that child")
    return attachment(await subject_bundle(request, messages, by))
