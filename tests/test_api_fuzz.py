"""The audit API fuzzed from its own OpenAPI document (schemathesis) against the live app on a real
broker: every operation, with data generated to fit the document and data generated to break it,
with a valid token (every role) and without one. No 5xx, no status, content type, header or body
outside the document, every request without a token refused with 401, and no internals (a
traceback, a path, an exception's name) in any body.

Hypothesis runs in a worker thread (schemathesis calls are blocking) while the event loop serves
the app; examples are derandomized and bounded per operation so the run is short and repeatable.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.core.failures import FailureGroup

from broker.config import Settings
from broker.http.tokens import mint
from broker.identity.keys import load_identity
from tests.conftest import ClientFactory
from tests.helpers import eventually, referral, sharing

pytestmark = pytest.mark.timeout(180)
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 12}
WITHOUT_TOKEN_EXAMPLES = 4
INTERNALS = re.compile(r"Traceback|File \"|/work/|/home/|site-packages|\.py\b|\b[A-Z][A-Za-z]*(Error|Exception)\b"
                       r"|sqlite|orjson|aiohttp|nats\.|jsonschema|KeyError|TypeError|ValueError")
ODD_ID = "not a key: spaces"  # a Nats-Msg-Id an agency may choose; a rejection is recorded under it
CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance, st_checks.content_type_conformance,
          st_checks.response_headers_conformance, st_checks.response_schema_conformance, st_checks.ignored_auth,
          st_checks.unsupported_method]


def _no_internals(ctx: Any, response: Any, case: Any) -> bool:
    body = response.text if isinstance(response.text, str) else ""
    found = INTERNALS.search(body)
    if found:
        raise AssertionError(f"internals in a response body: {found.group(0)!r}")
    return True


def _fuzz_operation(operation: Any, base_url: str, session: requests.Session, headers: dict[str, str] | None,
                    mode: GenerationMode, examples: int) -> list[str]:
    """Run one operation's examples; returns the failures (described, not raised, so all are seen)."""
    failures: list[str] = []

    @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                         report_multiple_bugs=False)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        try:
            if headers is None:  # no token: refused, whatever else is wrong with the request
                assert response.status_code == 401, f"{response.status_code} without a token"
            case.validate_response(response, checks=CHECKS)
            _no_internals(None, response, case)
        except (AssertionError, FailureGroup) as exc:  # ours, or schemathesis' checks'
            if not failures:  # the first per run is enough to act on
                failures.append(f"{operation.label} [{mode.value}, {'token' if headers else 'no token'}]: "
                                f"{str(exc).strip()[:600]}\n    {case.as_curl_command()}")

    run()
    return failures


def _fuzz(doc: dict[str, Any], base_url: str, token: str) -> tuple[list[str], int]:
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    operations = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1
            for mode, examples in EXAMPLES.items():
                failures += _fuzz_operation(operation, base_url, session, {"Authorization": f"Bearer {token}"},
                                            mode, examples)
            failures += _fuzz_operation(operation, base_url, session, None, GenerationMode.POSITIVE,
                                        WITHOUT_TOKEN_EXAMPLES)
    return failures, operations


async def test_the_api_answers_its_own_document_and_nothing_else(
        live_url: str, settings: Settings, agency: ClientFactory) -> None:
    police = await agency("police-met")
    jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(jti, timeout=10)  # something in the log for the operations to find
    await police.publish(b"not a message", ODD_ID)  # recorded under an id no KV key can hold
    await police.wait_outcome(ODD_ID, timeout=10)
    token = mint(load_identity(settings.home, "dev-token-issuer"), sub="fuzz",
                 roles=["ig-officer", "auditor", "operator"], settings=settings.api)
    bearer = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url=live_url, headers=bearer) as http:
        async with http.get("/api/openapi.json") as r:
            doc = await r.json()
        failures, operations = await asyncio.to_thread(_fuzz, doc, live_url, token)
        assert operations == sum(len(methods) for methods in doc["paths"].values())
        assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)

        # a legal hold on such a message is a request the API refuses (it was a 500: the bucket refused the key)
        odd = "/api/v1/holds/" + quote(ODD_ID, safe="")

        async def indexed() -> bool:
            async with http.get(f"/api/v1/messages/{quote(ODD_ID, safe='')}/trail") as r:
                return r.status == 200

        await eventually(indexed, what="the rejection indexed")
        async with http.put(odd, json={"reason": "litigation"}) as r:
            assert (r.status, (await r.json())["code"]) == (400, "bad-request")
        async with http.delete(odd) as r:
            assert r.status == 404
