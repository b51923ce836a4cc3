"""Coverage-guided fuzzing (atheris, libFuzzer) of the broker's pure reading layer, the code every
hostile byte goes through before anything is stored (``make fuzz``; CI does not run it).

The first input byte picks a target; the rest is its input:

0. ``strictjson.loads``: refuses with :class:`StrictJSONError` or returns what ``json`` reads, no
   deeper than 32 levels and writable again as strict JSON (no NaN, no lone surrogate);
1. ``jws.read_header``: refuses with a rejection or returns exactly ``alg``, ``typ`` and ``kid``;
2. the one JWS reader as intake uses it (``jws.read(token).verify(key)``) against PyJWT with the
   wire's strictness added (the oracle of ``tests/test_wire.py``) on a header and claims given as
   bytes and signed with the agency's real key: both refuse, with the same code, or both return the same claims;
3. the catalogue: any strict JSON through the envelope schema and a payload schema;
4. intake's checks with the safety net taken off (``Intake._authenticate``, ``_open``) on fuzzed
   claims, signed: only a rejection may come out (anything else is a message's fault the broker
   would only have caught as ``malformed``/``readable``);
5. the same, on a fuzzed payload sealed to the broker in a valid envelope; and when it is accepted,
   the rulebook's decision and the broker's outcomes (deliveries sealed, receipt, audit records);
6. the rulebook loader on fuzzed YAML: :class:`ConfigError` or a rulebook.

Any other exception is a crash: libFuzzer stops and writes the input to ``crash-*``.

    python -m bench.fuzz_parse [-runs=200000] [-max_total_time=600] [corpus dirs...]
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import atheris
import orjson
import yaml

with atheris.instrument_imports(include=["broker", "jwt", "yaml"]):
    from adapters.sdk import AgencyClient
    from broker.config import PipelineSettings
    from broker.errors import ConfigError, RejectedMessage
    from broker.identity.blindindex import load_subject_index
    from broker.identity.devkeys import init_dev_keys
    from broker.identity.keys import load_identity, load_secret
    from broker.pipeline.intake import Intake
    from broker.pipeline.outcomes import Ingress, Outcomes
    from broker.policy import rulebook
    from broker.policy.engine import RulebookPolicy
    from broker.wire import hpke, jws, strictjson
    from broker.wire.catalogue import Catalogue
    from broker.wire.registry import Registry

from tests.hostile import CASES, Kit, claims_of, header, signed
from tests.test_wire import pyjwt_verify

EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"
HOME = Path(tempfile.mkdtemp(prefix="sgb-fuzz-parse-"))
atexit.register(shutil.rmtree, HOME, True)
ARTIFACTS = Path(tempfile.gettempdir()) / "sgb-fuzz-crashes"
init_dev_keys(HOME, HOME / "registry.json")
CATALOGUE = Catalogue()
REGISTRY = Registry.load(HOME / "registry.json", CATALOGUE)
BROKER = load_identity(HOME, "sg-broker")
KIT = Kit(*(AgencyClient(None, None, REGISTRY, load_identity(HOME, a), CATALOGUE)  # type: ignore[arg-type]
            for a in ("police-met", "la-camden")))
_, POLICE_KEY = REGISTRY.signer(KIT.police.identity.sig_kid, time.time())
INTAKE = Intake(REGISTRY, CATALOGUE, BROKER, PipelineSettings())
POLICY = RulebookPolicy(rulebook.load(rulebook.DEFAULT_RULEBOOK, CATALOGUE))
OUTCOMES = Outcomes(REGISTRY, BROKER, load_secret(HOME, "audit-hmac.key"), "fuzz", load_subject_index(HOME))
TYPES = sorted(name for name, _ in CATALOGUE.types)
ENVELOPE = CATALOGUE.validator("envelope.v1.json")
RULEBOOK_FILE = HOME / "rulebook.yaml"


def target_strictjson(data: bytes) -> None:
    try:
        doc = strictjson.loads(data)
    except strictjson.StrictJSONError:
        return
    assert doc == json.loads(data), "strict reading differs from json's"
    assert strictjson.depth(doc) <= strictjson.MAX_DEPTH
    json.dumps(doc, allow_nan=False, ensure_ascii=False).encode("utf-8")  # raises on NaN or a lone surrogate


def target_header(data: bytes) -> None:
    try:
        head = jws.read_header(data)
    except RejectedMessage:
        return
    assert set(head) == {"alg", "typ", "kid"} and head["alg"] == jws.ALGORITHM


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except RejectedMessage as exc:
        return exc.code, None


def target_verify(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    head = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    token = signed(KIT, head, fdp.ConsumeBytes(fdp.remaining_bytes()))
    reader = _outcome(lambda: jws.read(token).verify(POLICE_KEY))
    oracle = _outcome(lambda: pyjwt_verify(token, POLICE_KEY))
    assert reader == oracle, f"the reader {reader} but PyJWT {oracle}"


def target_catalogue(data: bytes) -> None:
    if not data:
        return
    mtype = CATALOGUE.message_type(TYPES[data[0] % len(TYPES)], 1)
    try:
        doc = strictjson.loads(data[1:])
    except strictjson.StrictJSONError:
        return
    CATALOGUE.first_issue(ENVELOPE, doc)
    with contextlib.suppress(RejectedMessage):
        CATALOGUE.check_payload(mtype, doc)  # type: ignore[arg-type]


def _through(token: bytes) -> None:
    """Intake without its safety net, then (if accepted) the decision and the outcomes."""
    try:
        auth = INTAKE._authenticate("police-met", token, time.time())
        opened = INTAKE._open(auth)
        decision = POLICY.decide(auth.sender, opened.recipients, opened.mtype, auth.claims["sharing"],
                                 opened.payload, received=time.time())
    except RejectedMessage:
        return
    OUTCOMES.accepted(Ingress("police-met", 1, time.time(), auth.claims["jti"]), opened, decision)


def target_claims(data: bytes) -> None:
    _through(signed(KIT, header(KIT), data))


def target_payload(data: bytes) -> None:
    if not data:
        return
    typ = TYPES[data[0] % len(TYPES)]
    jti, token = KIT.police.build(typ=typ, to=["la-camden"], payload={}, sharing=_example(f"{typ}.sharing"),
                                  validate=False)
    claims = claims_of(token)
    kid, suite, public = REGISTRY.recipient_key("sg-broker", time.time())
    claims["payload"] = hpke.seal_payload(data[1:], jti=jti, iss="police-met", typ=typ, ver=1, recipient="sg-broker",
                                          kid=kid, suite=suite, public_key=public).payload
    _through(signed(KIT, header(KIT), orjson.dumps(claims)))


def target_rulebook(data: bytes) -> None:
    RULEBOOK_FILE.write_bytes(data)
    with contextlib.suppress(ConfigError):
        rulebook.load(RULEBOOK_FILE, CATALOGUE)


TARGETS = (target_strictjson, target_header, target_verify, target_catalogue, target_claims, target_payload,
           target_rulebook)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    target(data[1:])


def _example(name: str) -> Any:
    path = EXAMPLES / f"{name}.example.json"
    return orjson.loads(path.read_bytes()) if path.exists() else {}


def seeds(directory: Path) -> None:
    """A starting corpus: the hostile corpus, the examples and a small rulebook, one file per input."""
    items: list[bytes] = []
    tokens = [case.make(KIT)[1] for case in CASES if case.code != "nats" and not case.replays]
    tokens = [t for t in tokens if len(t) < 64 * 1024]
    for token in tokens:
        items.append(b"\x01" + token)
        head, _, rest = token.partition(b".")
        body = rest.partition(b".")[0]
        try:
            raw_head, raw_body = jws._segment(head), jws._segment(body)
        except RejectedMessage:
            continue
        items += [b"\x00" + raw_body, b"\x04" + raw_body,
                  b"\x02" + bytes([min(len(raw_head), 200)]) + raw_head + raw_body]
    for i, typ in enumerate(TYPES):
        example = orjson.dumps(_example(typ))
        items += [b"\x00" + example, b"\x03" + bytes([i]) + example, b"\x05" + bytes([i]) + example]
    book = yaml.safe_load(rulebook.DEFAULT_RULEBOOK.read_text(encoding="utf-8"))
    book["rules"] = book["rules"][:2]
    items.append(b"\x06" + yaml.safe_dump(book).encode())
    for n, item in enumerate(items):
        (directory / f"seed-{n:04d}").write_bytes(item)


def main() -> None:
    args = [a for a in sys.argv[1:] if a.startswith("-")]
    corpora = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not corpora:
        corpus = HOME / "corpus"
        corpus.mkdir()
        seeds(corpus)
        corpora = [str(corpus)]
    if not any(a.startswith(("-runs=", "-max_total_time=")) for a in args):
        args.append("-runs=200000")
    ARTIFACTS.mkdir(exist_ok=True)
    print(f"sgb: crashing inputs, if any, go to {ARTIFACTS}/", flush=True)
    atheris.Setup([sys.argv[0], *args, "-max_len=65536", "-print_final_stats=1", f"-artifact_prefix={ARTIFACTS}/",
                   *corpora], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
