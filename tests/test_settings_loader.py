"""One settings loader for the broker and the adapters (broker.config.convert), read once by the
command line; ``--log-level`` as given; the command line reads a message id with the JWS reader."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from adapters.runtime.settings import AdapterSettings
from broker.cli.main import build_parser, log_level
from broker.cli.messages import _message_id_of
from broker.config import Settings, StreamSettings, convert
from broker.errors import ConfigError
from broker.identity.keys import load_identity
from broker.wire import jws

ROOT = Path(__file__).resolve().parent.parent


def _problems(cls: type, values: dict[str, object], where: str) -> list[str]:
    problems: list[str] = []
    convert(cls, values, where, problems)
    return problems


def test_the_broker_and_the_adapters_convert_alike() -> None:
    """A whole number is whole: 1.5 is refused by both, never rounded to 1 (as the adapter's own
    loader once did); numbers as text are numbers; what is not finite is not a number."""
    assert _problems(StreamSettings, {"replicas": 1.5}, "streams") == [
        "[streams] replicas must be a number (a whole one)"]
    with pytest.raises(ConfigError, match=r"\[adapter\] max_document_bytes must be a number \(a whole one\)"):
        AdapterSettings.from_sources("la-camden", {"max_document_bytes": 1.5})
    for bad in (float("nan"), float("inf"), "soon", True):
        assert _problems(StreamSettings, {"seen_ttl": bad}, "streams") == ["[streams] seen_ttl must be a number"]
        with pytest.raises(ConfigError, match=r"\[adapter\] poll must be a number"):
            AdapterSettings.from_sources("la-camden", {"poll": bad})
    assert convert(StreamSettings, {"replicas": "3", "seen_ttl": 2}, "streams", []) == {"replicas": 3, "seen_ttl": 2.0}
    adapter = AdapterSettings.from_sources("la-camden", {"max_document_bytes": 2048.0, "poll": "0.5",
                                                         "drop_folder": "~/out"})
    assert (adapter.max_document_bytes, adapter.poll, adapter.drop_folder) == (2048, 0.5, Path("~/out").expanduser())
    with pytest.raises(ConfigError) as caught:
        AdapterSettings.from_sources("la-camden", {"local_authority": 7, "agency": "police-met"}, timeout="-1")
    text = str(caught.value)
    assert "[adapter] local_authority must be a string" in text and "unknown setting 'agency' in [adapter]" in text
    assert "[command line] timeout must be more than 0" in text


def test_the_adapter_table_is_read_with_the_broker_settings_once(tmp_path: Path) -> None:
    conf = tmp_path / "sgb.toml"
    conf.write_text('[pipeline]\nmax_age = 120\n[adapter]\ndrop_folder = "/srv/la"\nretry_for = 60\n')
    settings = Settings.from_env({"SGB_CONFIG": str(conf)}, home=tmp_path)
    adapter = AdapterSettings.load(settings, "la-camden", drop_folder=None, timeout=3)
    assert (adapter.drop_folder, adapter.retry_for, adapter.timeout) == (Path("/srv/la"), 60.0, 3.0)
    assert AdapterSettings.load(Settings.from_env({}, home=tmp_path), "la-camden").drop_folder is None
    conf.write_text('adapter = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[adapter\] in the settings file must be a table"):
        Settings.from_env({"SGB_CONFIG": str(conf)}, home=tmp_path)
    reads = re.compile(r"""(get\(|\[)["']SGB_CONFIG["']""")
    readers = [str(p.relative_to(ROOT)) for folder in ("broker", "adapters") for p in (ROOT / folder).rglob("*.py")
               if reads.search(p.read_text())]
    assert readers == ["broker/config.py"], "only the settings loader reads SGB_CONFIG"


@pytest.mark.parametrize(("argv", "level"), [
    (["serve", "--log-level", "WARNING"], "WARNING"),  # as given, though it is the general default
    (["--log-level", "ERROR", "serve"], "ERROR"),      # before the command too
    (["serve"], "INFO"),                               # a service's own default
    (["adapter", "run", "--as", "la-camden"], "INFO"),
    (["adapter", "dead-letters", "retry", "--as", "la-camden", "--all"], "INFO"),
    (["keys", "init"], "WARNING"),
    (["keys", "init", "--log-level", "DEBUG"], "DEBUG"),
])
def test_log_level_is_the_one_given(argv: list[str], level: str) -> None:
    assert log_level(build_parser().parse_args(argv)) == level


def test_home_and_config_given_before_the_command_are_kept() -> None:
    args = build_parser().parse_args(["--home", "/srv/sgb", "--config", "/etc/sgb.toml", "keys", "init"])
    assert (args.home, args.config) == ("/srv/sgb", "/etc/sgb.toml")


def test_send_raw_reads_the_message_id_with_the_jws_reader(home: Path) -> None:
    police_identity = load_identity(home, "police-met")
    jti = str(uuid.uuid4())
    token = jws.sign({"jti": jti, "iss": "police-met"}, police_identity.signing_key, police_identity.sig_kid)
    assert _message_id_of(token) == jti
    for junk in (b"", b"not a jws", token.replace(b".", b"!", 1), jws.sign({"jti": "not-a-uuid"},
                                                                          police_identity.signing_key, "k")):
        assert uuid.UUID(_message_id_of(junk))  # a fresh id the broker's rejection will name
