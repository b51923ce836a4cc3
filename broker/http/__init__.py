"""What every HTTP face of the project shares, the broker's and the adapters': the app factory
with ``/healthz``, ``/readyz`` and ``/metrics`` (:mod:`~broker.http.probes`), bearer tokens
(:mod:`~broker.http.tokens`), signing in to a page (:mod:`~broker.http.sessions`) and what every
HTML page sends (:mod:`~broker.http.pages`)."""
