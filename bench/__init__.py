"""``make bench``: raw JetStream relay, the crypto floor, and the full broker pipeline."""
