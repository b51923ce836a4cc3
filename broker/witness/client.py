"""What a log calls to have a checkpoint cosigned: the log's side of tlog-witness, kept with the log
in :mod:`broker.audit.witnessclient` (the broker's witnessing task calls it) and named here too."""

from __future__ import annotations

from broker.audit.witnessclient import MAX_RESPONSE, WitnessConflict, WitnessError, request_cosignature

__all__ = ["MAX_RESPONSE", "WitnessConflict", "WitnessError", "request_cosignature"]
