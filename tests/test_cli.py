"""The integrator's command line, run as a real process against a real nats-server."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import orjson
import pytest

from broker.config import Settings
from broker.pipeline.service import Broker
from tests.helpers import eventually
from tests.support.casesystem import free_port
from tests.support.cli import sgb

pytestmark = pytest.mark.timeout(120)
EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"


def _lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("command", [["keys", "init"], ["serve"], ["demo"], ["send"], ["inbox"], ["audit", "list"]])
async def test_help(command: list[str], tmp_path: Path) -> None:
    rc, out, _ = await sgb(*command, "--help", home=tmp_path)
    assert rc == 0 and "--home" in out


async def test_keys_init_writes_private_keys_0600(tmp_path: Path) -> None:
    home = tmp_path / "h"
    rc, out, _ = await sgb("keys", "init", home=home)
    assert rc == 0, out
    assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
    keys = sorted(p for p in (home / "keys").rglob("*") if p.is_file())
    assert {p.name for p in keys} >= {"police-met.key.json", "sg-broker.key.json", "dev-token-issuer.key.json",
                                      "police-met.nk", "sg-broker.nk", "subject-index.keyring.json"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in (home / "keys").rglob("*") if p.is_dir())
    auth = (home / "nats" / "authorization.conf").read_text()
    seeds = [p.read_text().strip() for p in (home / "keys" / "nats").glob("*.nk")]
    assert auth.count("nkey:") == 10 == len(seeds) and not any(seed in auth for seed in seeds)  # public keys only
    registry = orjson.loads((home / "registry.json").read_bytes())
    assert {a["id"] for a in registry["agencies"]} >= {"police-met", "health-camden", "la-camden", "school-hillside",
                                                       "ofsted", "dfe-sos"}
    facts = {a["id"]: (a.get("publicAuthority"), a.get("organisationType")) for a in registry["agencies"]}
    assert facts["health-camden"] == (True, "integrated-care-board") and facts["ofsted"] == (True, "inspectorate")
    assert b'"d"' not in (home / "registry.json").read_bytes()  # no private material in the registry
    rc, _, err = await sgb("keys", "init", home=home)
    assert rc == 1 and "--force" in err


async def test_send_wait_inbox_and_audit(broker: Broker, settings: Settings, tmp_path: Path) -> None:
    home, url = settings.home, settings.nats.url
    send = ("send", "--as", "police-met", "--type", "referral", "--to", "la-camden",
            "--sharing", str(EXAMPLES / "referral.sharing.example.json"), str(EXAMPLES / "referral.example.json"))
    rc, out, err = await sgb(*send, "--wait", home=home, url=url)
    assert rc == 0, err
    (result,) = _lines(out)
    assert result["outcome"] == "routed" and result["deliveredTo"] == ["la-camden"]

    # --out then --raw: the file is the wire message and goes out unchanged
    wire_file = tmp_path / "msg.jws"
    rc, out, _ = await sgb(*send, "--out", str(wire_file), home=home, url=url)
    assert rc == 0 and wire_file.read_bytes().count(b".") == 2
    rc, out, _ = await sgb("send", "--as", "police-met", "--raw", str(wire_file), "--wait", home=home, url=url)
    assert rc == 0 and _lines(out)[0]["outcome"] == "routed"

    rc, out, _ = await sgb("inbox", "--as", "la-camden", "--json", home=home, url=url)
    assert rc == 0
    first = _lines(out)
    assert len(first) == 2 and all(d["envelope"]["typ"] == "referral" for d in first)  # type: ignore[index]
    assert first[0]["payload"] == orjson.loads((EXAMPLES / "referral.example.json").read_bytes())
    rc, out, _ = await sgb("inbox", "--as", "la-camden", "--json", "--ack", home=home, url=url)
    assert len(_lines(out)) == 2  # not acked before, so shown again
    rc, out, _ = await sgb("inbox", "--as", "la-camden", "--json", home=home, url=url)
    assert _lines(out) == []  # acked: gone

    rc, out, _ = await sgb("audit", "list", "--json", home=home, url=url)
    events = [r["event"] for r in _lines(out)]
    assert events.count("received") == 2 and events.count("shared") == 2


async def test_send_wait_reports_rejection_with_exit_3(broker: Broker, settings: Settings, tmp_path: Path) -> None:
    sharing = orjson.loads((EXAMPLES / "referral.sharing.example.json").read_bytes())
    for key in ("lawfulBasis", "lawEnforcementBasis"):
        sharing.pop(key)
    (tmp_path / "s.json").write_bytes(orjson.dumps(sharing))
    rc, out, _ = await sgb("send", "--as", "police-met", "--type", "referral", "--to", "la-camden",
                           "--sharing", str(tmp_path / "s.json"), str(EXAMPLES / "referral.example.json"),
                           "--wait", home=settings.home, url=settings.nats.url)
    assert rc == 3
    (result,) = _lines(out)
    assert result["outcome"] == "rejected" and result["code"] == "no-lawful-basis"
    assert result["field"] == "/sharing/lawfulBasis"


async def test_raw_garbage_is_rejected_visibly(broker: Broker, settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"this is not a message")
    rc, out, _ = await sgb("send", "--as", "police-met", "--raw", str(tmp_path / "junk"), "--wait",
                           home=settings.home, url=settings.nats.url)
    assert rc == 3 and _lines(out)[0]["code"] == "malformed"


async def test_demo_on_embedded_nats_completes(tmp_path: Path) -> None:
    rc, out, err = await sgb("demo", home=tmp_path / "demo-home", timeout=100)
    assert rc == 0, out + err
    assert "The story completed" in out
    assert "REFUSED [no-lawful-basis]" in out
    assert not (tmp_path / "demo-home" / "demo" / "nats" / "url").exists()  # server stopped cleanly


async def test_policy_check_and_explain(tmp_path: Path, home: Path) -> None:
    rc, out, _ = await sgb("policy", "check", home=home)
    assert rc == 0 and "valid" in out
    (tmp_path / "bad.yaml").write_text("rulebook: sgb-rulebook\nversion: 2\n")
    rc, _, err = await sgb("policy", "check", str(tmp_path / "bad.yaml"), home=home)
    assert rc == 1 and "/version" in err
    rc, out, _ = await sgb("policy", "explain", "--as", "la-camden", "--type", "referral-outcome",
                           "--to", "school-hillside,police-met",
                           "--sharing", str(EXAMPLES / "referral-outcome.sharing.example.json"),
                           str(EXAMPLES / "referral-outcome.example.json"), home=home)
    assert rc == 0
    school, police = _lines(out)
    assert school["withheld"] == ["allocatedTeam", "reasons"] and police["withheld"] == []
    # an outcome answers a referral; a decision to assess opens the LA's own 45-working-day clock
    assert school["deadline"]["expect"] == ["assessment-outcome"] and school["deadline"]["from"] == "sender"
    rc, out, _ = await sgb("policy", "explain", "--as", "police-met", "--type", "referral", "--to", "la-camden",
                           "--sharing", str(EXAMPLES / "referral.sharing.example.json"),
                           str(EXAMPLES / "referral.example.json"), home=home)
    (la,) = _lines(out)
    assert la["deadline"]["expect"] == ["referral-outcome"] and la["deadline"]["due"]  # type: ignore[index]
    assert any(r["id"] == "referral-outcome.to-referrer" and r["cite"] for r in school["rules"])  # type: ignore[union-attr]
    rc, out, _ = await sgb("policy", "explain", "--as", "police-met", "--type", "encompass-notification",
                           "--to", "school-hillside",
                           "--sharing", str(EXAMPLES / "encompass-notification.sharing.example.json"),
                           str(EXAMPLES / "encompass-notification.example.json"), home=home)
    (school,) = _lines(out)
    assert school["deadline"]["receiptStatus"] == ["accepted", "actioned"]  # type: ignore[index]


async def test_serve_http_offers_the_api_and_the_pages(tmp_path: Path) -> None:
    """``sgb serve --http`` as an operator runs it: probes, the OpenAPI document, a token from
    ``sgb token`` accepted by the API, the IG sign-in page; SIGTERM stops it cleanly."""
    import signal

    import aiohttp

    home = tmp_path / "h"
    assert (await sgb("keys", "init", home=home))[0] == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")} | {"SGB_HOME": str(home)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", "serve", "--workers", "1", "--http", f"127.0.0.1:{port}", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        rc, token, err = await sgb("token", "--role", "auditor", "--sub", "aud-1", home=home)
        assert rc == 0, err
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                try:
                    async with http.get(f"{base}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, what="sgb serve to be ready", timeout=15, every=0.1)
            async with http.get(f"{base}/api/openapi.json") as r:
                assert r.status == 200 and (await r.json())["openapi"] == "3.1.0"
            async with http.get(f"{base}/api/v1/records", headers={"Authorization": f"Bearer {token.strip()}"}) as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{base}/api/v1/integrity", headers={"Authorization": "Bearer x"}) as r:
                assert r.status == 401
            async with http.get(f"{base}/ig/login") as r:
                assert r.status == 200 and "Access token" in await r.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err_bytes.decode()[-2000:]
