"""What every HTTP face of the project shares, the broker's and the adapters': bearer and
session tokens (:mod:`~broker.http.tokens`)."""
