"""Settings as frozen value objects, read from the environment once.

Every timeout, bound and limit of the broker is here with a safe default, so that nothing
further down reads ``os.environ`` or invents a number of its own. :func:`convert` is the one
way a setting's value becomes its field's type, for the broker's sections, the ``SGB_*``
variables and an adapter's ``[adapter]`` table alike (:mod:`adapters.runtime.settings`): a
whole number is whole (``1.5`` is refused, never rounded), a number is finite, a string is a
string, and every problem is named with where it came from.
"""

from __future__ import annotations

import functools
import math
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from broker.errors import ConfigError
from broker.witness_settings import AuditWitness, audit_witnesses

_INSTANCE_RE = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsSettings:
    """Where NATS is. ``url=None`` means: start an embedded nats-server under the home."""

    url: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 5.0
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    nkey_seed: Path | None = None   # the broker's NATS nkey seed file (default <home>/keys/nats/<broker>.nk)
    tls_ca_path: Path | None = None     # CA bundle for tls:// servers (default: the system's)
    tls_cert_path: Path | None = None   # client certificate, when the servers verify clients
    tls_key_path: Path | None = None
    embedded_max_payload: int = 8 * 1024 * 1024
    supervise_interval: float = 1.0     # how often `sgb serve` checks its embedded nats-server
    supervise_give_up: float = 30.0     # failing to restart it this long makes /healthz fail


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    replicas: int = 1
    duplicate_window: float = 600.0       # must cover redelivery after a crash (ack_wait)
    ingress_max_age: float = 30 * 86400.0
    delivery_retention: float = 30 * 86400.0  # undelivered after this: removed, sender told (retention.py)
    retention_sweep_interval: float = 300.0
    audit_retention: float = 7 * 365 * 86400.0  # reported when passed; never deleted by the broker
    max_msg_size: int = 4 * 1024 * 1024  # the store's hard limit; the broker's own limit is lower
    seen_ttl: float = 900.0               # replay window; must exceed max_age + max_future_skew




@dataclass(frozen=True, slots=True, kw_only=True)
class AuditSettings:
    block_records: int = 512          # group commit: at most this many pending appends per block
    block_bytes: int = 512 * 1024     # and about this many bytes (the stream takes up to 1 MiB)
    max_pending: int = 4096           # appends waiting for a block
    publish_deadline: float = 5.0
    attempts: int = 6
    checkpoint_interval: float = 60.0
    tlog_checkpoint_records: int = 1000   # a transparency checkpoint at least every this many records
    tlog_origin: str = "sgb.invalid/audit"  # + "/<instance>": the origin (log name) of each chain's tree
    # witnesses asked to cosign each transparency checkpoint: a list of tables {url, key}, ``key`` the
    # witness's type 0x04 vkey (``sgb witness key``); checked at load (docs/transparency.md "Witnesses")
    witnesses: tuple[AuditWitness, ...] = ()
    witness_quorum: int | None = None    # cosignatures a checkpoint needs; None: every configured witness
    witness_deadline: float = 10.0       # one cosignature request

    @property
    def quorum(self) -> int:
        """The cosignatures each checkpoint needs (0: the broker asks no witness)."""
        return len(self.witnesses) if self.witness_quorum is None else self.witness_quorum


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessSettings:
    """``sgb witness serve`` (C2SP tlog-witness, docs/transparency.md "Witnesses")."""

    http: str = "127.0.0.1:8096"      # where it listens (``--http`` overrides)
    key_file: Path | None = None      # None: <home>/witness/witness.key (``sgb witness init``)
    state_path: Path | None = None    # None: <home>/witness/state.sqlite
    # origin -> the log's verifier key(s) (a vkey string or a list of them); checked by broker.witness
    logs: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}), compare=False)
    max_body: int = 64 * 1024         # an add-checkpoint request larger than this is refused (413)
    request_deadline: float = 10.0    # reading a request and answering it


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    issuer: str = "dev-token-issuer"    # the registry entry whose signing keys sign API tokens
    audience: str = "sgb-api"
    leeway: float = 30.0                # clock skew allowed on exp/iat
    max_lifetime: float = 12 * 3600.0   # a token living longer than this is refused
    integrity_interval: float = 900.0   # how often the HTTP service re-verifies the whole log
    index_path: Path | None = None      # None: <home>/audit/index.sqlite


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    fetch_batch: int = 128
    fetch_timeout: float = 1.0
    max_in_flight: int = 512
    ack_wait: float = 30.0
    delivery_ack_wait: float = 60.0   # an agency's durable: how soon a delivery whose adapter died comes back
    publish_deadline: float = 5.0
    publish_attempts: int = 6
    max_message_bytes: int = 512 * 1024
    max_age: float = 300.0
    max_future_skew: float = 60.0
    drain_timeout: float = 10.0
    deadline_scan_interval: float = 30.0
    deadline_lease: float = 120.0     # a deadline scanner that stops renewing is replaced after this
    backlog_interval: float = 5.0
    ready_backlog: int = 10_000   # /readyz fails above this many waiting ingress messages
    workers: int | None = None    # `sgb serve`'s pipeline processes (SGB_WORKERS; None: the number of cores)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    home: Path
    registry_path: Path
    instance: str
    rulebook_path: Path | None = None  # None: broker/policy/rulebook.yaml
    nats: NatsSettings = NatsSettings()
    streams: StreamSettings = StreamSettings()
    pipeline: PipelineSettings = PipelineSettings()
    audit: AuditSettings = AuditSettings()
    api: ApiSettings = ApiSettings()
    witness: WitnessSettings = WitnessSettings()
    # the settings file's [adapter] table, as read: `sgb adapter` converts it (adapters.runtime.settings)
    adapter_section: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}), compare=False,
                                               repr=False)

    @property
    def index_path(self) -> Path:
        return self.api.index_path or self.home / "audit" / "index.sqlite"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def nats_dir(self) -> Path:
        return self.home / "nats"

    def with_nats_url(self, url: str) -> Settings:
        return replace(self, nats=replace(self.nats, url=url))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, home: str | Path | None = None,
                 config_file: str | Path | None = None) -> Settings:
        """Defaults, then the TOML file (``config_file`` or ``$SGB_CONFIG``), then ``SGB_*``
        variables, then ``home``. Raises :class:`ConfigError` naming every problem found."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        file = config_file or env.get("SGB_CONFIG")
        doc = read_toml(Path(file)) if file else {}
        sections: dict[str, Any] = {"nats": NatsSettings(), "streams": StreamSettings(),
                                    "pipeline": PipelineSettings(), "audit": AuditSettings(), "api": ApiSettings(),
                                    "witness": WitnessSettings()}
        top: dict[str, Any] = {}
        adapter: dict[str, Any] = {}
        for key, value in doc.items():
            if key in sections and isinstance(value, dict):
                sections[key] = _apply(sections[key], value, key, problems)
            elif key == "adapter":  # kept for `sgb adapter`, which converts it (adapters.runtime.settings)
                if isinstance(value, dict):
                    adapter = value
                else:
                    problems.append("[adapter] in the settings file must be a table")
            elif key in ("home", "instance", "registry", "rulebook"):
                if isinstance(value, str):
                    top[key] = value
                else:
                    problems.append(f"{key} must be a string")
            else:
                problems.append(f"unknown setting {key!r} (sections: {', '.join(sections)}; keys: home, instance, "
                                f"registry, rulebook)")
        overrides: dict[str, dict[str, Any]] = {
            "nats": {"url": env.get("SGB_NATS_URL"), "user": env.get("SGB_NATS_USER"),
                     "password": env.get("SGB_NATS_PASSWORD"), "nkey_seed": env.get("SGB_NATS_NKEY_SEED"),
                     "tls_ca_path": env.get("SGB_NATS_TLS_CA"), "tls_cert_path": env.get("SGB_NATS_TLS_CERT"),
                     "tls_key_path": env.get("SGB_NATS_TLS_KEY")},
            "pipeline": {"max_in_flight": env.get("SGB_MAX_IN_FLIGHT"), "fetch_batch": env.get("SGB_FETCH_BATCH"),
                         "max_message_bytes": env.get("SGB_MAX_MESSAGE_BYTES"), "max_age": env.get("SGB_MAX_AGE"),
                         "ack_wait": env.get("SGB_ACK_WAIT"), "workers": env.get("SGB_WORKERS")},
            "streams": {"delivery_retention": _scaled(env.get("SGB_DELIVERY_RETENTION_DAYS"), 86400.0, problems),
                        "audit_retention": _scaled(env.get("SGB_AUDIT_RETENTION_YEARS"), 365 * 86400.0, problems)},
            "api": {"issuer": env.get("SGB_API_ISSUER"), "audience": env.get("SGB_API_AUDIENCE"),
                    "index_path": env.get("SGB_AUDIT_INDEX")},
        }
        for name, values in overrides.items():
            given = {k: v for k, v in values.items() if v not in (None, "")}
            if given:
                sections[name] = _apply(sections[name], given, f"SGB_* ({name})", problems)
        home_path = Path(home or env.get("SGB_HOME") or top.get("home") or ".sgb").expanduser().resolve()
        registry = Path(env.get("SGB_REGISTRY") or top.get("registry") or home_path / "registry.json")
        instance = env.get("SGB_INSTANCE") or top.get("instance") or default_instance_id()
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", instance):
            problems.append("the instance name (SGB_INSTANCE) must match [a-z0-9][a-z0-9-]{0,63}")
        pipeline = sections["pipeline"]
        if pipeline.fetch_batch < 1 or pipeline.max_in_flight < pipeline.fetch_batch:
            problems.append("need 1 <= fetch_batch (SGB_FETCH_BATCH) <= max_in_flight (SGB_MAX_IN_FLIGHT)")
        if pipeline.workers is not None and pipeline.workers < 1:
            problems.append("[pipeline] workers (SGB_WORKERS) must be 1 or more")
        if not pipeline.deadline_lease > pipeline.deadline_scan_interval > 0:
            problems.append("need 0 < [pipeline] deadline_scan_interval < deadline_lease (the scanner renews its "
                            "lease every interval)")
        audit = sections["audit"]
        if audit.tlog_checkpoint_records < 1:
            problems.append("[audit] tlog_checkpoint_records must be 1 or more")
        if not re.fullmatch(r"[!-*,-~]+", audit.tlog_origin):
            problems.append("[audit] tlog_origin must be printable ASCII without spaces or '+' (a note key name)")
        audit = sections["audit"] = replace(audit, witnesses=audit_witnesses(audit.witnesses, problems))
        if audit.witness_quorum is not None and not 0 <= audit.witness_quorum <= len(audit.witnesses):
            problems.append(f"[audit] witness_quorum must be between 0 and the number of witnesses "
                            f"({len(audit.witnesses)})")
        if audit.witness_deadline <= 0:
            problems.append("[audit] witness_deadline must be more than 0")
        witness = sections["witness"]
        if witness.max_body < 1024 or witness.request_deadline <= 0:
            problems.append("[witness] max_body must be at least 1024 and request_deadline more than 0")
        if problems:
            raise ConfigError("; ".join(problems))
        rulebook = env.get("SGB_RULEBOOK") or top.get("rulebook")
        return cls(home=home_path, registry_path=registry, instance=instance,
                   rulebook_path=Path(rulebook) if rulebook else None, adapter_section=types.MappingProxyType(adapter),
                   **sections)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"no configuration file at {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _scaled(value: str | None, factor: float, problems: list[str]) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value) * factor
    except ValueError:
        problems.append(f"{value!r} is not a number")
        return None


def _apply(section: Any, values: Mapping[str, Any], where: str, problems: list[str]) -> Any:
    """``section`` with ``values`` applied, each converted to its field's type."""
    return replace(section, **convert(type(section), values, where, problems))


def convert(cls: type, values: Mapping[str, Any], where: str, problems: list[str], *,
            aliases: Mapping[str, str] | None = None, fixed: Collection[str] = (),
            positive: Collection[str] = ()) -> dict[str, Any]:
    """``values`` converted to the types of the fields of the dataclass ``cls``, for ``cls(**...)``.

    A field's type decides: ``int`` takes a whole number (a TOML integer, ``2.0`` or the text
    ``"2"``), ``float`` any finite number or its text, ``str`` a string, ``Path`` a string (``~``
    expanded), ``bool`` true or false, a ``Mapping`` a table. ``aliases`` maps other names to
    fields; ``fixed`` fields are not settings (they are unknown here); ``positive`` ones must be
    more than 0. Each problem is appended to ``problems``, saying ``[where]`` and the name given.
    """
    kinds = _kinds(cls)
    known = {name: kind for name, kind in kinds.items() if name not in fixed}
    out: dict[str, Any] = {}
    for given, value in values.items():
        key = (aliases or {}).get(given, given)
        kind = known.get(key)
        if kind is None:
            problems.append(f"unknown setting {given!r} in [{where}] (known: {', '.join(sorted(known))})")
            continue
        try:
            out[key] = _converted(kind, value)
        except ValueError as exc:
            problems.append(f"[{where}] {given} must be {exc}")
            continue
        if key in positive and not out[key] > 0:
            problems.append(f"[{where}] {given} must be more than 0")
    return out


@functools.cache
def _kinds(cls: type) -> dict[str, type]:
    """Each field's type, ``X | None`` read as ``X`` and ``Mapping[...]`` as ``Mapping``."""
    hints = typing.get_type_hints(cls)
    kinds: dict[str, type] = {}
    for f in fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        kinds[f.name] = typing.get_origin(hint) or hint
    return kinds


def _converted(kind: type, value: Any) -> Any:
    """``value`` as ``kind``; ValueError says what it must be."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError("true or false")
    if kind in (int, float):
        number = _number(value)
        if kind is float:
            return float(number)
        if isinstance(number, float) and not number.is_integer():
            raise ValueError("a number (a whole one)")
        return int(number)
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError("a list")
        return tuple(value)
    if kind is Mapping:
        if not isinstance(value, Mapping):
            raise ValueError("a table")
        return value
    if not isinstance(value, str):
        raise ValueError("a string")
    return Path(value).expanduser() if kind is Path else value


def _number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise ValueError("a number")
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            raise ValueError("a number") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("a number")
    return value


def default_instance_id() -> str:
    host = _INSTANCE_RE.sub("-", socket.gethostname().lower()).strip("-")[:40] or "host"
    return f"{host}-{os.getpid()}"
