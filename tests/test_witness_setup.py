"""``sgb witness``'s keys and settings, and the command as a real process (its protocol over
HTTP is tests/test_witness.py)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import stat
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import notes
from broker.config import Settings
from broker.errors import ConfigError, KeyStoreError
from broker.witness.client import request_cosignature
from broker.witness.keys import create_key, load_key, log_keys, parse_signer_key, signer_key
from tests.support.cli import sgb
from tests.support.witness import ORIGIN, Log

pytestmark = pytest.mark.timeout(60)


# -- keys and settings --------------------------------------------------------------------------


def test_key_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "w" / "witness.key"
    made = create_key(path, "witness.example.test/w1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_key(path).key == made.key and made.key.sig_type == notes.COSIGNATURE_V1
    assert notes.VerifierKey.parse(str(made.key)) == made.key
    with pytest.raises(KeyStoreError):
        create_key(path, "witness.example.test/w1")
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError):
        load_key(path)
    private = Ed25519PrivateKey.generate()
    line = signer_key("w", private)
    assert parse_signer_key(line).key.public_key == private.public_key().public_bytes_raw()
    for broken in ("", "PRIVATE+KEY+w", line.replace("+w+", "+v+"), line[:-4] + "AAAA", "x" + line):
        with pytest.raises(KeyStoreError):
            parse_signer_key(broken)
    with pytest.raises(ConfigError):
        create_key(tmp_path / "k2", "has space")


def test_key_file_reads_go_signer_keys() -> None:
    """golang.org/x/mod sumdb/note/note_test.go (the vectors tests/test_notes.py uses): the signer
    key's public half is the published verifier key's; the witness cosigns with it as type 0x04."""
    skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
    vkey = notes.VerifierKey.parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    cosigner = parse_signer_key(skey)
    assert cosigner.key.public_key == vkey.public_key and cosigner.key.name == "PeterNeumann"
    assert cosigner.key.sig_type == notes.COSIGNATURE_V1 and cosigner.key.key_id != vkey.key_id
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(skey.split("+", 4)[4])[1:])
    assert signer_key("PeterNeumann", private) == skey


def test_logs_setting(log_signer: notes.NoteSigner, cosigner: notes.Cosigner) -> None:
    vkey = str(log_signer.key)
    assert log_keys({ORIGIN: vkey}) == {ORIGIN: (log_signer.key,)}
    assert log_keys({ORIGIN: [vkey, vkey]})[ORIGIN] == (log_signer.key, log_signer.key)
    for bad in ({ORIGIN: "nonsense"}, {ORIGIN: str(cosigner.key)}, {ORIGIN: []}, {ORIGIN: 5}, {"": vkey}):
        with pytest.raises(ConfigError):
            log_keys(bad)


def test_witness_settings_from_the_file(tmp_path: Path, log_signer: notes.NoteSigner) -> None:
    config = tmp_path / "sgb.toml"
    config.write_text(f'[witness]\nhttp = "127.0.0.1:9000"\nmax_body = 4096\n[witness.logs]\n"{ORIGIN}" = '
                      f'"{log_signer.key}"\n')
    settings = Settings.from_env({}, home=tmp_path, config_file=config)
    assert settings.witness.http == "127.0.0.1:9000" and settings.witness.max_body == 4096
    assert log_keys(settings.witness.logs) == {ORIGIN: (log_signer.key,)}
    config.write_text("[witness]\nmax_body = 10\n")
    with pytest.raises(ConfigError):
        Settings.from_env({}, home=tmp_path, config_file=config)


# -- the command, as a real process --------------------------------------------------------------


async def test_sgb_witness_init_key_serve(tmp_path: Path, log_signer: notes.NoteSigner) -> None:
    home = tmp_path / "home"
    rc, out, err = await sgb("witness", "init", "--name", "witness.example.test/w1", home=home)
    assert rc == 0, err
    key_file = home / "witness" / "witness.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    rc, out, err = await sgb("witness", "key", home=home)
    assert rc == 0, err
    witness_key = notes.VerifierKey.parse(out.strip())
    assert witness_key.sig_type == notes.COSIGNATURE_V1 and witness_key.name == "witness.example.test/w1"
    assert (await sgb("witness", "init", "--name", "w2", home=home))[0] == 1  # the key is kept
    config = tmp_path / "sgb.toml"
    config.write_text(f'[witness.logs]\n"{ORIGIN}" = "{log_signer.key}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")}
    env |= {"SGB_HOME": str(home), "SGB_CONFIG": str(config)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", "witness", "serve", "--http", "127.0.0.1:0", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "listening on 127.0.0.1:" in line, line
        url = f"http://127.0.0.1:{int(line.rsplit(':', 1)[1])}"
        log = Log(log_signer)
        log.grow(9)
        async with aiohttp.ClientSession() as session:
            lines = await request_cosignature(session, url, log.checkpoint(), 0, [])
            assert notes.verify_cosignature(witness_key, log.text(), lines[0]) > 0
            async with session.get(f"{url}/readyz") as response:
                assert response.status == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 30)
    assert rc == 0


async def test_serve_refuses_without_logs_or_key(tmp_path: Path, log_signer: notes.NoteSigner) -> None:
    rc, _, err = await sgb("witness", "serve", "--http", "127.0.0.1:0", home=tmp_path)
    assert rc == 1 and "[witness] logs" in err
    config = tmp_path / "sgb.toml"
    config.write_text(f'[witness.logs]\n"{ORIGIN}" = "{log_signer.key}"\n')
    rc, _, err = await sgb("witness", "serve", "--http", "127.0.0.1:0", home=tmp_path,
                           env={"SGB_CONFIG": str(config)})
    assert rc == 1 and "sgb witness init" in err
