"""Signed links: pages a browser opens without a bearer header (the evidence, the drift report).

A browser sends no ``Authorization`` header when a person opens a URL, so a page behind a
bearer token answers 401 there. ``POST /links`` (any role, with its bearer token) answers a URL
to one page with ``?link=`` appended: a JWT signed with the API's link key (HS256, PyJWT, as
local-mode tokens are, ``monitor.service.auth``; the key: :func:`link_key`), bound to the page's
path and to the caller (subject, roles, sites), valid ``auth.link_ttl_s`` seconds (10 minutes
by default). The page
then reads the link as it would read the caller's token: a site manager's link to another
site's page is refused as the token would be.

A link cannot be used as a bearer token (another audience, another key), nor for another page
(its ``path`` claim), nor after it expires; one tampered with fails its signature. Pages take
:data:`PageReaderDep` instead of ``ReaderDep``; which pages those are is read from the OpenAPI
document (the GET operations with a ``link`` parameter), so a new page needs nothing here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import jwt
import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field
from starlette.routing import compile_path

from monitor.service.audit.keys import signing_key
from monitor.service.auth import (
    BearerDep,
    Principal,
    ReaderDep,
    Role,
    current_principal,
    role_refusal,
)
from monitor.service.settings import Settings

log = structlog.get_logger(__name__)

LINK_AUDIENCE = "radsentry-link"
LINK_ISSUER = "radsentry"
LINK_ALGORITHM = "HS256"
LINK_PARAMETER = "link"
_DERIVATION = b"radsentry/page-links/v1"
"""HKDF's info: the link key derived from the audit key is for links only (domain separation)."""


def link_key(settings: Settings) -> bytes:
    """The links' HS256 key: ``auth.link_secret``, else one derived (HKDF-SHA256) from the
    audit signing key, which every API replica already holds: nothing new to distribute, and
    the derived key tells nothing of the audit key."""
    if settings.auth.link_secret is not None:
        return settings.auth.link_secret.get_secret_value().encode()
    raw = signing_key(settings).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION).derive(raw)


def issue_link(
    key: bytes, ttl_s: int, principal: Principal, path: str, now: datetime | None = None
) -> tuple[str, datetime]:
    """A link token for ``path`` that stands for ``principal``, and when it expires."""
    issued = now or datetime.now(UTC)
    expires = issued + timedelta(seconds=ttl_s)
    claims = {
        "iss": LINK_ISSUER,
        "aud": LINK_AUDIENCE,
        "sub": principal.subject,
        "name": principal.name,
        "roles": sorted(role.value for role in principal.roles),
        "sites": sorted(principal.sites),
        "path": path,
        "iat": issued,
        "exp": expires,
    }
    return jwt.encode(claims, key, algorithm=LINK_ALGORITHM), expires


MAX_LINK_LENGTH: Final = 4096
"""Longest link :func:`verify_link` decodes."""


class LinkRefused(Exception):
    """A link that does not open this page; the message says why, never its claims."""


def verify_link(key: bytes, token: str, path: str, leeway_s: float = 0) -> Principal:
    """The caller a link stands for, if it is intact, unexpired and for ``path``."""
    if len(token) > MAX_LINK_LENGTH:  # never decoded; a real link is a few hundred characters
        raise LinkRefused("this link is not valid: ask the API for one (POST /links)")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[LINK_ALGORITHM],
            audience=LINK_AUDIENCE,
            issuer=LINK_ISSUER,
            leeway=leeway_s,
            options={"require": ["exp", "iat", "sub", "path"]},
        )
    except jwt.ExpiredSignatureError:
        raise LinkRefused(
            "this link has expired: ask the API for a new one (POST /links)"
        ) from None
    except jwt.PyJWTError:
        raise LinkRefused("this link is not valid: ask the API for one (POST /links)") from None
    if claims["path"] != path:
        raise LinkRefused("this link is for another page")
    return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    known = {role.value for role in Role}
    roles = frozenset(Role(name) for name in _strings(claims.get("roles")) if name in known)
    name = claims.get("name")
    return Principal(
        str(claims["sub"]),
        roles,
        frozenset(_strings(claims.get("sites"))),
        name=name if isinstance(name, str) else None,
    )


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def page_reader(
    request: Request,
    credentials: BearerDep,
    link: Annotated[
        str | None,
        Query(
            alias=LINK_PARAMETER,
            description="A signed link from POST /links, for a browser (no bearer header). "
            "One longer than 4,096 characters is refused like any invalid link (401): the "
            "length is checked with the link, after the caller is known to have no token, so "
            "an unauthenticated request never gets a validation answer first.",
        ),
    ] = None,
) -> Principal:
    """Any role, from the bearer token or, without one, from a signed ``link``."""
    if credentials is not None or link is None:
        principal = current_principal(request, credentials)
    else:
        settings: Settings = request.app.state.settings
        try:
            principal = verify_link(
                app_link_key(request), link, request.url.path, settings.auth.leeway_s
            )
        except LinkRefused as exc:
            log.info("page link refused", reason=str(exc), path=request.url.path)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from None
    if not principal.roles:
        raise HTTPException(status.HTTP_403_FORBIDDEN, role_refusal(principal, Role))
    return principal


def app_link_key(request: Request) -> bytes:
    """The app's link key, derived once (``app.state.link_key``)."""
    key: bytes | None = getattr(request.app.state, "link_key", None)
    if key is None:
        key = request.app.state.link_key = link_key(request.app.state.settings)
    return key


PageReaderDep = Annotated[Principal, Depends(page_reader)]
"""Like ``ReaderDep``, for a page a browser opens: a bearer token or a signed link."""


class LinkRequest(BaseModel):
    path: str = Field(
        pattern=r"^/[A-Za-z0-9._~/-]{1,500}$",
        description="The page, e.g. /candidates/{candidate_id}/evidence or "
        "/sites/{site_id}/report.",
    )


class LinkPublic(BaseModel):
    url: str = Field(description="The page's URL with the signed link: open it in a browser.")
    path: str
    expires_at: datetime


router = APIRouter(tags=["links"])


@router.post("/links", status_code=status.HTTP_201_CREATED, responses={404: {}})
def create_link(body: LinkRequest, request: Request, principal: ReaderDep) -> LinkPublic:
    """A short-lived URL to one page (the evidence, the drift report) that a browser opens
    without a bearer header. It stands for the caller: the page checks the caller's roles and
    sites as it would with the token. 404 for a path that is no such page."""
    if not _is_page(request, body.path):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"{body.path} is not a page that opens through a link; pages: "
            + ", ".join(sorted(_pages(request))),
        )
    ttl_s = request.app.state.settings.auth.link_ttl_s
    token, expires = issue_link(app_link_key(request), ttl_s, principal, body.path)
    url = request.url.replace(path=body.path, query=f"{LINK_PARAMETER}={token}")
    return LinkPublic(url=str(url), path=body.path, expires_at=expires)


def _pages(request: Request) -> dict[str, re.Pattern[str]]:
    """The path templates of the GET operations that take a ``link``, each compiled."""
    cached: dict[str, re.Pattern[str]] | None = getattr(request.app.state, "link_pages", None)
    if cached is None:
        cached = {}
        for template, operations in request.app.openapi().get("paths", {}).items():
            parameters = operations.get("get", {}).get("parameters", [])
            if any(p.get("name") == LINK_PARAMETER for p in parameters):
                cached[template] = compile_path(template)[0]
        request.app.state.link_pages = cached
    return cached


def _is_page(request: Request, path: str) -> bool:
    return any(pattern.match(path) for pattern in _pages(request).values())
