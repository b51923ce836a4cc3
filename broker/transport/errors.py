"""The one boundary where the NATS client's exceptions become :class:`~broker.errors.TransportError`.

nats-py raises its own tree (``nats.errors.Error``; JetStream's ``APIError``, ``NotFoundError``
and the key-value errors under it), the builtin :class:`TimeoutError` (its own ``TimeoutError``
is one too, as is ``asyncio.TimeoutError``) and, from a socket, :class:`OSError`. A call to NATS
is wrapped once::

    with nats_failures("the replay store"):
        await js.publish(...)

and whatever the client raised leaves as ``TransportError("the replay store: TimeoutError")``,
which the caller retries or reports as NATS being unavailable. Nothing else is translated: a
bug (a ``KeyError``, a ``TypeError``) or a refusal of the project's own passes through as it
is, so it is never mistaken for a transport failure and retried as one. An answer that is not a
failure (a key not found, a wrong last sequence) is caught inside the block, before it gets here.

Three spellings go with it:

- ``except TimeoutError`` alone, inside the block, is a fetch or a wait that found nothing in time;
- ``with quietly():`` a best-effort call (a nak, an unsubscribe, a drain at shutdown) whose
  failure changes nothing, because JetStream redelivers what was not acknowledged;
- ``except NATS_FAILURES`` around the one NATS call of a loop that tries it again (the
  publisher, the audit writer's append, the SDK's publish, the pipeline's fetch), with
  :func:`describe` of the failure for its log line, or for the
  :class:`~broker.errors.PublishTimeout` it raises when its attempts run out.

Nothing outside this module names the NATS client's exception classes except the answers caught
inside a block (``NotFoundError``, an ``APIError`` with its code).
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Final

from nats.errors import Error as NatsError
from nats.js.errors import APIError

from broker.errors import TransportError

# JetStream's answers that are not failures, caught inside the block by their code
WRONG_LAST_SEQUENCE: Final = 10071  # a compare-and-set lost: another instance wrote first
NO_MESSAGE_FOUND: Final = 10037

NATS_FAILURES: Final = (NatsError, OSError)  # OSError includes TimeoutError, nats-py's TimeoutError among them


class nats_failures:  # a context manager, named like contextlib.suppress
    """Turn what the NATS client raises inside the block into :class:`TransportError` naming ``what``."""

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, NATS_FAILURES):
            raise TransportError(f"{self._what}: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """What went wrong, for a log line or an error: the exception's kind, and JetStream's own code
    and description when it answered (never a message's content)."""
    if isinstance(exc, APIError) and exc.err_code is not None:
        return f"{type(exc).__name__} {exc.err_code} ({exc.description})"
    return type(exc).__name__


def quietly() -> contextlib.suppress:
    """A best-effort NATS call: its failure is ignored (JetStream redelivers what was not acked)."""
    return contextlib.suppress(*NATS_FAILURES)
