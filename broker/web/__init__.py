"""The broker's HTTP application (:mod:`~broker.web.app`, on :func:`broker.http.probes.make_app`):
the audit API (records, reviews, operations, integrity) and its OpenAPI document, and the IG
officers' pages."""
