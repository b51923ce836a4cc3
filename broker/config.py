"""Settings as frozen value objects, read from the environment once.

Every timeout, bound and limit of the broker is here with a safe default, so that nothing
further down reads ``os.environ`` or invents a number of its own.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from broker.errors import ConfigError

_INSTANCE_RE = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsSettings:
    """Where NATS is. ``url=None`` means: start an embedded nats-server under the home."""

    url: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 5.0
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    embedded_max_payload: int = 8 * 1024 * 1024


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
    publish_deadline: float = 5.0
    publish_attempts: int = 6
    max_message_bytes: int = 512 * 1024
    max_age: float = 300.0
    max_future_skew: float = 60.0
    drain_timeout: float = 10.0
    deadline_scan_interval: float = 30.0
    backlog_interval: float = 5.0
    ready_backlog: int = 10_000   # /readyz fails above this many waiting ingress messages


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    home: Path
    registry_path: Path
    instance: str
    rulebook_path: Path | None = None  # None: deploy/rulebook.yaml
    nats: NatsSettings = NatsSettings()
    streams: StreamSettings = StreamSettings()
    pipeline: PipelineSettings = PipelineSettings()
    audit: AuditSettings = AuditSettings()
    api: ApiSettings = ApiSettings()

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
    def from_env(cls, environ: Mapping[str, str] | None = None, *, home: str | Path | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home_path = Path(home or env.get("SGB_HOME") or ".sgb").expanduser().resolve()
        registry = Path(env.get("SGB_REGISTRY") or home_path / "registry.json")
        instance = env.get("SGB_INSTANCE") or default_instance_id()
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", instance):
            raise ConfigError("SGB_INSTANCE must match [a-z0-9][a-z0-9-]{0,63}")
        try:
            pipeline = PipelineSettings(
                max_in_flight=int(env.get("SGB_MAX_IN_FLIGHT", PipelineSettings.max_in_flight)),
                fetch_batch=int(env.get("SGB_FETCH_BATCH", PipelineSettings.fetch_batch)),
                max_message_bytes=int(env.get("SGB_MAX_MESSAGE_BYTES", PipelineSettings.max_message_bytes)),
                max_age=float(env.get("SGB_MAX_AGE", PipelineSettings.max_age)),
                ack_wait=float(env.get("SGB_ACK_WAIT", PipelineSettings.ack_wait)),
            )
        except ValueError as exc:
            raise ConfigError(f"bad numeric setting: {exc}") from exc
        if pipeline.fetch_batch < 1 or pipeline.max_in_flight < pipeline.fetch_batch:
            raise ConfigError("need 1 <= SGB_FETCH_BATCH <= SGB_MAX_IN_FLIGHT")
        nats = NatsSettings(
            url=env.get("SGB_NATS_URL") or None,
            user=env.get("SGB_NATS_USER") or None,
            password=env.get("SGB_NATS_PASSWORD") or None,
        )
        rulebook = Path(env["SGB_RULEBOOK"]) if env.get("SGB_RULEBOOK") else None
        default_api = ApiSettings()
        try:
            streams = StreamSettings(
                delivery_retention=float(env.get("SGB_DELIVERY_RETENTION_DAYS", 30)) * 86400.0,
                audit_retention=float(env.get("SGB_AUDIT_RETENTION_YEARS", 7)) * 365 * 86400.0,
            )
        except ValueError as exc:
            raise ConfigError(f"bad retention setting: {exc}") from exc
        api = ApiSettings(issuer=env.get("SGB_API_ISSUER") or default_api.issuer,
                          audience=env.get("SGB_API_AUDIENCE") or default_api.audience,
                          index_path=Path(env["SGB_AUDIT_INDEX"]) if env.get("SGB_AUDIT_INDEX") else None)
        return cls(home=home_path, registry_path=registry, instance=instance, rulebook_path=rulebook, nats=nats,
                   pipeline=pipeline, api=api, streams=streams)


def default_instance_id() -> str:
    host = _INSTANCE_RE.sub("-", socket.gethostname().lower()).strip("-")[:40] or "host"
    return f"{host}-{os.getpid()}"
