"""The broker's HTTP application: probes and metrics, the audit API and its OpenAPI document, and
the IG officers' pages."""
