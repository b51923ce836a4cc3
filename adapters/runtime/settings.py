"""An adapter's settings: the ``[adapter]`` table of the TOML settings file, with the command
line's options over it, checked before anything starts (a broken setting is the operator's to
fix, and says which)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from adapters.formats.consent import CASE_FACTS
from adapters.runtime.retries import BACKOFF_BASE, RetryPolicy
from broker.config import Settings, convert
from broker.errors import ConfigError
from broker.files import read_private
from broker.wire.catalogue import Catalogue

log = structlog.get_logger("sgb.adapter")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterSettings:
    """One adapter process. Paths are the agency's own; secrets are files (mode 0600)."""

    agency: str
    # out: where deliveries go (one of these; a school with neither keeps them for its inbox)
    webhook_url: str | None = None
    webhook_secret_file: Path | None = None
    drop_folder: Path | None = None
    # in: where the agency system's records come from
    inbound_secret_file: Path | None = None   # enables POST /records/{format}
    inbound_folder: Path | None = None        # watched: <folder>/<format>/<file>
    local_authority: str | None = None        # police: the LA that receives referrals
    sharing: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # default sharing block by type
    timeout: float = 10.0                     # seconds per hand-over attempt
    retry_for: float = 3600.0                 # seconds a delivery is retried from its first failure, then dead-lettered
    backoff_max: float = 60.0                 # seconds: the longest pause between attempts (full jitter)
    max_document_bytes: int = 4 * 1024 * 1024
    poll: float = 1.0
    remember_submissions_days: float = 400.0  # a document sent again within this is not sent twice

    @classmethod
    def from_sources(cls, agency: str, section: Mapping[str, Any], **options: Any) -> AdapterSettings:
        """The ``[adapter]`` table of the settings file, then the command line's ``options``
        (None means not given), each converted as the broker's settings are
        (:func:`broker.config.convert`). Raises :class:`ConfigError` naming every problem."""
        for key in sorted(_RETIRED.keys() & section.keys()):
            log.warning("adapter setting no longer used; remove it", setting=key, instead=_RETIRED[key])
        problems: list[str] = []
        rules: dict[str, Any] = {"aliases": {"webhook": "webhook_url"}, "fixed": ("agency",), "positive": _POSITIVE}
        values = convert(cls, {k: v for k, v in section.items() if k not in _RETIRED}, "adapter", problems, **rules)
        values |= convert(cls, {k: v for k, v in options.items() if v is not None}, "command line", problems, **rules)
        sharing = values.get("sharing", {})
        if not all(isinstance(block, Mapping) for block in sharing.values()):
            problems.append("[adapter.sharing] holds one table per message type")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(agency=agency, **values)

    @classmethod
    def load(cls, settings: Settings, agency: str, **options: Any) -> AdapterSettings:
        """``agency``'s adapter settings: the ``[adapter]`` table of the settings file the broker's
        settings came from (``--config`` / ``SGB_CONFIG``), then the command line's ``options``."""
        return cls.from_sources(agency, settings.adapter_section, **options)

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(retry_for=self.retry_for, backoff_max=self.backoff_max,
                           backoff_base=min(BACKOFF_BASE, self.backoff_max))

    def check(self, kind: str) -> None:
        if self.webhook_url and self.drop_folder:
            raise ConfigError("give the agency system's webhook URL or a drop folder, not both")
        if not (self.webhook_url or self.drop_folder) and kind != "school":
            raise ConfigError("give the agency system's webhook URL (with its secret file) or a drop folder")
        if self.webhook_url and not self.webhook_secret_file:
            raise ConfigError("a webhook needs webhook_secret_file (the HMAC key shared with the agency system)")


# Settings an older configuration may still have, and what replaced them (a warning, not a refusal).
_RETIRED: Final = {"attempts": "retry_for (seconds a delivery is retried from its first failure)"}
_POSITIVE: Final = ("timeout", "retry_for", "backoff_max", "max_document_bytes", "poll")
MIN_SECRET_BYTES: Final = 16


def read_secret(path: Path) -> bytes:
    """A shared HMAC secret from a file only its owner may read, long enough to mean something."""
    try:
        secret = read_private(path, error=ConfigError).strip()
    except FileNotFoundError as exc:
        raise ConfigError(f"no secret file at {path}") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"the secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


# Stand-ins for the case's facts, so that a configured block is checked against the sharing
# schema for everything else (the facts themselves come from each record).
_CASE_STAND_INS: Final = {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "CANNOT_BE_GIVEN",
                          "subjectInformed": "INFORMED"}


def check_sharing(sharing: Mapping[str, Mapping[str, Any]], catalogue: Catalogue) -> None:
    """A broken sharing default is the adapter's configuration fault: refuse to start, rather than
    refuse every document as if the agency's records were wrong. Configuration holds what is
    agency-wide (purpose, lawful basis and conditions, gateways, guidance edition, vocabulary, who
    decides by default, urgency by default); consent, the reason for sharing without it and
    whether the family was informed are facts of each case, carried by each record."""
    validator = catalogue.validator("sharing.v1.json")
    for typ, block in sharing.items():
        if catalogue.message_type(typ, 1) is None:
            raise ConfigError(f"[adapter.sharing.{typ}]: no such message type")
        facts = [key for key in CASE_FACTS if key in block]
        if facts:
            raise ConfigError(f"[adapter.sharing.{typ}] sets {', '.join(facts)}: whether consent was given (and why "
                              "not) and whether the family was informed are facts of each case, which each record "
                              "carries (see docs/adapters.md); remove them from the configuration")
        issue = Catalogue.first_issue(validator, _CASE_STAND_INS | dict(block))
        if issue is not None:
            raise ConfigError(f"[adapter.sharing.{typ}] is not a valid sharing block at {issue.pointer or '/'} "
                              f"('{issue.keyword}' failed)")
