"""The audit log: hash-chained, signed blocks in ``SG_AUDIT`` (:mod:`~broker.audit.chain`),
reading them back, verifying every chain, signed exports, and the local SQLite index the API and
the IG pages query."""
