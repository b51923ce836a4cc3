"""What a log calls to have a checkpoint cosigned: ``POST <prefix>/add-checkpoint`` (C2SP tlog-witness).

The log's side, so it lives with the log: :mod:`broker.audit.witnessing` calls it for each
transparency checkpoint, and the witness service (:mod:`broker.witness.protocol`) parses what
:func:`encode_request` writes. ``broker.witness.client`` names the same objects.
"""

from __future__ import annotations

import base64
from typing import Final

import aiohttp

from broker.errors import BrokerError

MAX_PROOF_LINES: Final = 63  # "The client MUST NOT send more than 63 consistency proof lines."
MAX_RESPONSE: Final = 64 * 1024


def encode_request(old_size: int, proof: list[bytes] | tuple[bytes, ...], note: bytes) -> bytes:
    """The body a log sends (the client's side of :func:`broker.witness.protocol.parse_request`)."""
    lines = [f"old {old_size}".encode("ascii"), *(base64.b64encode(h) for h in proof)]
    return b"\n".join(lines) + b"\n\n" + note


class WitnessError(BrokerError):
    """A witness did not cosign: ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class WitnessConflict(WitnessError):
    """409: the witness's latest cosigned size is not ``old_size``; ``size`` is the one it has:
    retry from it with a consistency proof from that size."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the witness last cosigned size {size}: retry with a proof from that size", 409)
        self.size = size


async def request_cosignature(session: aiohttp.ClientSession, url: str, checkpoint_note: bytes, old_size: int,
                              proof: list[bytes], *, timeout: float = 10.0) -> list[str]:
    """The witness's cosignature lines (each ``— <name> <base64>``, without its newline) for the
    signed ``checkpoint_note``, given a consistency proof from ``old_size``. ``url`` is the
    witness's submission prefix (``/add-checkpoint`` is added). The lines are not verified here:
    check each with :func:`broker.audit.notes.verify_cosignature` and the witness's key.

    Raises :class:`WitnessConflict` (with the witness's size) on 409, :class:`WitnessError` on
    any other refusal, malformed answer, or no answer within ``timeout`` seconds.
    """
    if len(proof) > MAX_PROOF_LINES:
        raise WitnessError(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
    endpoint = url.rstrip("/") + "/add-checkpoint"
    body = encode_request(old_size, proof, checkpoint_note)
    try:
        async with session.post(endpoint, data=body, headers={"Content-Type": "text/plain; charset=utf-8"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = (await response.content.read(MAX_RESPONSE)).decode("utf-8", errors="replace")
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WitnessError(f"the witness at {endpoint} did not answer: {type(exc).__name__}") from None
    if status == 409:
        size = text.removesuffix("\n")
        if not size.isascii() or not size.isdigit() or not text.endswith("\n"):
            raise WitnessError("the witness answered 409 without its size", 409)
        raise WitnessConflict(int(size))
    if status != 200:
        raise WitnessError(f"the witness at {endpoint} refused the checkpoint: HTTP {status}", status)
    lines = text.split("\n")
    if not text.endswith("\n") or not lines[:-1] or not all(line.startswith("\u2014 ") for line in lines[:-1]):
        raise WitnessError("the witness's answer is not note signature lines", status)
    return lines[:-1]
