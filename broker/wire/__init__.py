"""The wire contract: the signed envelope (JWS, :mod:`~broker.wire.jws`), the sealed payload
(HPKE recipes, :mod:`~broker.wire.hpke`), the strict JSON they are read with, the catalogue of
message schemas, the trust registry, the subjects and streams messages travel on, and the ids
derived from them. Everything above builds on this; it imports nothing of the broker but its
errors and settings."""
