"""The audit API under ``/api/v1/``, described by ``/api/openapi.json``: its routes.

The handlers are grouped by what they do: the records, trails, subject access, export and
volumes (:mod:`~broker.web.records`), the review queue (:mod:`~broker.web.reviews`), legal holds,
retention and maintenance (:mod:`~broker.web.operations`), and the integrity of the log and the
rulebook's coverage (:mod:`~broker.web.integrity`). Each names the roles it needs
(:func:`broker.web.problems.requires`); :func:`broker.web.problems.api_middleware` checks the
bearer token and gives every error one shape.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from broker.web import integrity, operations, records, reviews, subjectproof, traceability
from broker.web.openapi import document
from broker.web.params import dumps

ROUTES: Final = (
    ("GET", "/api/v1/records", records.list_records),
    ("GET", "/api/v1/messages/{message}/trail", records.message_trail),
    ("POST", "/api/v1/subject-search", records.subject_search),
    ("POST", "/api/v1/subjects/proof", subjectproof.subject_proof),
    ("GET", "/api/v1/reviews", reviews.list_reviews),
    ("POST", "/api/v1/reviews", reviews.record_review),
    ("POST", "/api/v1/reviews/bulk", reviews.record_bulk_review),
    ("GET", "/api/v1/records.csv", records.export_csv),
    ("GET", "/api/v1/integrity", integrity.integrity),
    ("POST", "/api/v1/integrity/verify", integrity.verify_now),
    ("GET", "/api/v1/volumes", records.volumes),
    ("GET", "/api/v1/holds", operations.list_holds),
    ("PUT", "/api/v1/holds/{message}", operations.place_hold),
    ("DELETE", "/api/v1/holds/{message}", operations.release_hold),
    ("GET", "/api/v1/retention", operations.retention),
    ("PUT", "/api/v1/maintenance", operations.maintenance),
    ("GET", "/api/v1/rulebook/coverage", integrity.rulebook_coverage),
)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(), dumps=dumps)


def add_routes(app: web.Application) -> None:
    traceability.install(app)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_get("/api/openapi.json", openapi)
