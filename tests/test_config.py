"""Settings from a TOML file and the environment; ``sgb config check`` in plain words."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import Settings
from broker.errors import ConfigError
from tests.support.cli import sgb


def test_file_then_environment(tmp_path: Path) -> None:
    conf = tmp_path / "sgb.toml"
    conf.write_text('instance = "broker-a"\n[nats]\nurl = "nats://n1:4222"\npassword = "s3cret"\n'
                    '[pipeline]\nmax_in_flight = 256\n[streams]\nreplicas = 3\n[api]\naudience = "ig-portal"\n')
    settings = Settings.from_env({"SGB_MAX_IN_FLIGHT": "300"}, home=tmp_path, config_file=conf)
    assert settings.instance == "broker-a" and settings.nats.url == "nats://n1:4222"
    assert settings.pipeline.max_in_flight == 300  # the environment wins over the file
    assert settings.streams.replicas == 3 and settings.api.audience == "ig-portal"
    assert "s3cret" not in repr(settings)  # secrets hidden from repr
    assert settings.nats.password == "s3cret"


def test_every_problem_is_named(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('colour = "blue"\n[pipeline]\nmax_in_flight = "lots"\nspeed = 3\n[streams]\nreplicas = 1.5\n')
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SGB_INSTANCE": "Broker A"}, home=tmp_path, config_file=conf)
    text = str(caught.value)
    for expected in ("unknown setting 'colour'", "max_in_flight must be a number", "unknown setting 'speed'",
                     "replicas must be a number", "SGB_INSTANCE"):
        assert expected in text, expected
    (tmp_path / "lease.toml").write_text("[pipeline]\ndeadline_scan_interval = 60\ndeadline_lease = 30\n")
    with pytest.raises(ConfigError, match="deadline_scan_interval < deadline_lease"):  # it would lapse between passes
        Settings.from_env({}, home=tmp_path, config_file=tmp_path / "lease.toml")
    (tmp_path / "tlog.toml").write_text('[audit]\ntlog_origin = "my log+1"\ntlog_checkpoint_records = 0\n')
    with pytest.raises(ConfigError, match=r"tlog_checkpoint_records must be 1 or more.*tlog_origin must be printable"):
        Settings.from_env({}, home=tmp_path, config_file=tmp_path / "tlog.toml")
    (tmp_path / "tlog.toml").write_text('[audit]\ntlog_origin = "audit.example.org/sgb"\n')
    audit = Settings.from_env({}, home=tmp_path, config_file=tmp_path / "tlog.toml").audit
    assert audit.tlog_origin == "audit.example.org/sgb" and audit.tlog_checkpoint_records == 1000
    (tmp_path / "broken.toml").write_text("[nats\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.from_env({}, home=tmp_path, config_file=tmp_path / "broken.toml")


async def test_config_check_reports_in_plain_words(tmp_path: Path) -> None:
    home = tmp_path / "h"
    rc, out, _ = await sgb("config", "check", home=home)
    assert rc == 1 and "PROBLEM: trust registry" in out
    assert (await sgb("keys", "init", home=home))[0] == 0
    rc, out, err = await sgb("config", "check", home=home, env={"SGB_NATS_PASSWORD": "pw-123"})
    assert rc == 0 and "configuration is usable" in out, out + err
    assert "pw-123" not in out and "password set" in out
    (home / "keys" / "subject-index.keyring.json").unlink()
    rc, out, _ = await sgb("config", "check", home=home, env={"SGB_RULEBOOK": str(tmp_path / "none.yaml")})
    assert rc == 1 and "PROBLEM: subject index keyring" in out and "PROBLEM: rulebook" in out
    rc, _, err = await sgb("config", "check", home=home, env={"SGB_MAX_AGE": "soon"})
    assert rc == 1 and "max_age must be a number" in err
