"""Bearer tokens for the API, the IG pages and a school's inbox: JWTs verified with PyJWT, the one
reader of this kind of token.

They are not wire tokens: an RFC 7519 access token is worth only its registered claims
(expiry, audience, issuer, with leeway), which PyJWT checks and the wire's strict reader
(:mod:`broker.wire.jws`) deliberately does not; and the wire's byte rules (one spelling per
message, ``typ`` pinned, no other header parameter) are there for messages that are stored,
digested and replayed, which a short-lived bearer token never is.

EdDSA only (``alg: none`` and HMAC confusion are refused by the pinned algorithm list); the
key is chosen by ``kid`` among the signing keys the trust registry lists for the token
issuer; ``exp``, ``iat``, ``aud``, ``iss`` and ``sub`` are required; ``aud`` must name this
service (and, for a verifier with ``sole_audience``, this service alone: a school's inbox takes
no token that opens anything else too); ``roles`` must name known roles. ``sgb token --role
ROLE [--audience AUD]`` mints short-lived development tokens with the development issuer's key.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Final

import jwt

from broker.config import ApiSettings
from broker.errors import BrokerError
from broker.identity.keys import Identity
from broker.wire import _crypto
from broker.wire.registry import Registry

# ``dsl``: a school's designated safeguarding lead, for that school's Operation Encompass inbox
# (adapters/school/inbox.py, audience ``sgb-inbox-<school>``). No API route or IG page accepts it.
# ``dpo``: the partnership's Data Protection Officer (UK GDPR Art 37-39): the escalated reviews and
# the monthly report, read-only.
ROLES: Final = ("ig-officer", "auditor", "operator", "dsl", "dpo")
ALGORITHMS: Final = ["EdDSA"]


class AuthError(BrokerError):
    """A request without a usable token (401) or without the role it needs (403)."""

    def __init__(self, reason: str, *, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    roles: frozenset[str]
    exp: float
    jti: str

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))


class TokenVerifier:
    def __init__(self, registry: Registry, settings: ApiSettings, *, sole_audience: bool = False) -> None:
        if registry.get(settings.issuer) is None:
            raise BrokerError(f"the API token issuer {settings.issuer} is not in the trust registry")
        self._registry = registry  # read at each check: a reload (a rotated issuer key) is seen at once
        self._settings = settings
        self.sole_audience = sole_audience

    @property
    def audience(self) -> str:
        """The service this verifier takes tokens for."""
        return self._settings.audience

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        """The principal of a valid token; else :class:`AuthError` saying why (never the token)."""
        now = time.time() if now is None else now
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError("the bearer token cannot be read") from exc
        issuer = self._registry.get(self._settings.issuer)
        kid = str(header.get("kid"))
        key = next((k for k in issuer.keys if k.kid == kid and k.use == "sig"), None) if issuer else None
        if key is None or not key.valid_at(now):
            raise AuthError("the bearer token is not signed by a key of the configured issuer")
        try:
            claims = jwt.decode(
                token, _crypto.verify_key_from_bytes(key.x), algorithms=ALGORITHMS,
                audience=self._settings.audience, issuer=self._settings.issuer, leeway=self._settings.leeway,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the bearer token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("the bearer token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("the bearer token is from another issuer") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise AuthError("the bearer token's algorithm is not accepted") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the bearer token is not valid ({type(exc).__name__})") from exc
        if self.sole_audience and claims["aud"] not in (self.audience, [self.audience]):
            raise AuthError("the bearer token is for other services too, not for this one alone")
        if float(claims["exp"]) - float(claims["iat"]) > self._settings.max_lifetime:
            raise AuthError("the bearer token lives longer than this server accepts")
        roles = claims.get("roles")
        if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
            raise AuthError("the bearer token names no known role", status=403)
        return Principal(str(claims["sub"]), frozenset(roles), float(claims["exp"]), str(claims.get("jti", "")))


def mint(identity: Identity, *, sub: str, roles: list[str], settings: ApiSettings, ttl: float = 3600.0,
         now: float | None = None) -> str:
    """A token signed by ``identity`` (the development issuer) for ``roles``."""
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise BrokerError(f"roles are {', '.join(ROLES)}")
    now = time.time() if now is None else now
    claims = {"iss": settings.issuer, "aud": settings.audience, "sub": sub, "roles": roles, "iat": int(now),
              "exp": int(now + ttl), "jti": str(uuid.uuid4())}
    return jwt.encode(claims, identity.signing_key, algorithm="EdDSA", headers={"kid": identity.sig_kid})
