"""What the web application's handlers find on the app: the running broker and what the audit API
stands on. One place, so the modules that use them do not import each other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from broker.audit.index import AuditIndex
from broker.http.tokens import TokenVerifier
from broker.identity.blindindex import SubjectIndex
from broker.pipeline.retention import Holds
from broker.pipeline.service import Broker


@dataclass
class AuditService:
    """What the API and the pages need from the running broker."""

    index: AuditIndex
    tokens: TokenVerifier
    subjects: SubjectIndex
    append: Callable[[list[dict[str, Any]]], Awaitable[None]]
    instance: str
    verify: Callable[[], Awaitable[dict[str, Any]]]
    holds: Holds
    retention: Callable[[], Awaitable[dict[str, Any]]]
    maintenance: Callable[[bool | None], bool]  # set (or with None, read) maintenance mode
    retriage: Callable[[], None]  # after a reload: the queue derived again (in the background) if its triage changed


SERVICE: Final = web.AppKey("audit_service", AuditService)
BROKER_KEY: Final = web.AppKey("broker", Broker)

