"""Who calls the HTTP API and what they may do: bearer JWTs, roles, per-site read scopes.

Tokens are verified with PyJWT against the settings (``RADSENTRY_AUTH__*``): in ``oidc`` mode
an identity provider's JWTs (JWKS or a configured public key, asymmetric algorithms only), in
``local`` mode HS256 tokens this deployment issues itself (``radsentry token``). The roles and
what each may do are described in docs/security.md; routes declare them with :func:`require_roles`
and check site-scoped reads with :func:`check_site` or :meth:`Principal.can_read_site`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from fastapi import Depends, HTTPException, Request, params, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from monitor.service.errors import ServiceError
from monitor.service.settings import AuthSettings, Settings

# Issuing local tokens needs no web framework, so `radsentry token` imports only tokens.py;
# its names stay importable from here.
from monitor.service.tokens import LOCAL_ALGORITHM
from monitor.service.tokens import LOCAL_ISSUER as LOCAL_ISSUER
from monitor.service.tokens import LocalModeOnly as LocalModeOnly
from monitor.service.tokens import Role as Role
from monitor.service.tokens import issue_local_token as issue_local_token
from monitor.service.tokens import local_secret as local_secret
from pccp.lifecycle import normalised_subject

log = structlog.get_logger(__name__)

REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud"]


_ROLE_VALUES = frozenset(role.value for role in Role)


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller: the token's subject, its known roles and its sites; for signatures,
    the printed name its identity provider gives and when the person last authenticated."""

    subject: str
    """NFKC, trimmed (``pccp.lifecycle.normalised_subject``); compare with ``identity_key``."""
    roles: frozenset[Role]
    sites: frozenset[str] = frozenset()
    name: str | None = field(default=None, compare=False)
    """The signer's printed name (21 CFR 11.50), from ``auth.name_claim``; None if absent."""
    authenticated_at: datetime | None = field(default=None, compare=False)
    """``auth_time`` (when the person last logged in), else ``iat``."""

    @property
    def reads_all_sites(self) -> bool:
        """Any role but site manager reads every site; a site manager only its own."""
        return bool(self.roles - {Role.SITE_MANAGER})

    @property
    def readable_sites(self) -> frozenset[str]:
        """The sites a caller without an all-sites role may read: a site manager's own."""
        return self.sites if Role.SITE_MANAGER in self.roles else frozenset()

    def can_read_site(self, site_id: str | None) -> bool:
        """Whether this caller may see data of ``site_id`` (None: not tied to one site)."""
        return self.reads_all_sites or site_id in self.readable_sites

    def site_filter(self) -> frozenset[str] | None:
        """The sites a listing must be restricted to; None when it may show every site."""
        return None if self.reads_all_sites else self.readable_sites


class InvalidToken(ServiceError):
    """The token cannot be trusted. The message names the reason, never the token or claims."""


class AuthUnavailable(ServiceError, RuntimeError):
    """The identity provider's keys cannot be fetched: no token can be checked right now."""


class TokenVerifier:
    """Verifies bearer tokens as the settings say; built once per app (JWKS cached inside)."""

    def __init__(self, settings: Settings) -> None:
        auth = settings.auth
        self._audience = auth.audience
        self._leeway = auth.leeway_s
        self._jwks: jwt.PyJWKClient | None = None
        self._key: Any = None
        if auth.mode == "local":
            self._issuer, self._algorithms = LOCAL_ISSUER, [LOCAL_ALGORITHM]
            self._roles_claim, self._sites_claim, self._name_claim = "roles", "sites", "name"
            self._key = local_secret(settings)
            return
        assert auth.issuer is not None  # AuthSettings refuses oidc mode without one
        self._issuer, self._algorithms = auth.issuer, list(auth.algorithms)
        self._roles_claim, self._sites_claim = auth.roles_claim, auth.sites_claim
        self._name_claim = auth.name_claim
        if auth.jwks_url is not None:
            self._jwks = jwt.PyJWKClient(
                auth.jwks_url,
                cache_jwk_set=True,
                lifespan=auth.jwks_cache_s,
                timeout=10,
                cooldown_duration=auth.jwks_refresh_cooldown_s,
            )
        else:
            assert auth.public_key_file is not None
            self._key = serialization.load_pem_public_key(auth.public_key_file.read_bytes())

    def verify(self, token: str) -> Principal:
        """The caller the token names; :class:`InvalidToken` for any token not to be trusted."""
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            if algorithm not in self._algorithms:  # before any key lookup: `none`, HS256 confusion
                raise InvalidToken(f"algorithm {algorithm!r} not accepted")
            key = self._signing_key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from None
        except (TypeError, ValueError):
            # A header naming an accepted algorithm of another key type (ES256 against an RSA
            # key), or malformed key material in a JWKS: the library raises these, not its own.
            raise InvalidToken("the token's algorithm does not fit the key") from None
        return self._principal(claims)

    def _signing_key(self, token: str) -> Any:
        if self._jwks is None:
            return self._key
        try:
            return self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthUnavailable("the identity provider's JWKS cannot be fetched") from exc

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str):
            raise InvalidToken("subject is not text")
        try:
            subject = normalised_subject(subject)
        except ValueError as exc:
            raise InvalidToken(f"unusable subject: {exc}") from None
        names = _strings(_claim(claims, self._roles_claim))
        roles = frozenset(Role(name) for name in names if name in _ROLE_VALUES)  # others ignored
        return Principal(
            subject,
            roles,
            frozenset(_strings(_claim(claims, self._sites_claim))),
            name=_printed_name(_claim(claims, self._name_claim)),
            authenticated_at=_authenticated_at(claims),
        )


def _printed_name(value: Any) -> str | None:
    """A usable printed name, or None: one that is not text or not readable is left out."""
    if not isinstance(value, str):
        return None
    try:
        return normalised_subject(value)
    except ValueError:
        return None


def _authenticated_at(claims: Mapping[str, Any]) -> datetime | None:
    """When the person last authenticated: OIDC's ``auth_time``, else when the token was
    issued (``iat``, always present)."""
    for name in ("auth_time", "iat"):
        value = claims.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
    return None


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name; dots reach into nested objects (Keycloak's ``realm_access.roles``)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _strings(value: Any) -> list[str]:
    """A list of strings, or a space-separated string (as OAuth scopes are); else nothing."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def warn_if_local(auth: AuthSettings) -> None:
    """Local mode is for the embedded defaults: say so loudly where the API starts."""
    if auth.mode == "local":
        log.warning(
            "API authentication is in local mode (tokens from `radsentry token`); "
            "set RADSENTRY_AUTH__MODE=oidc in production"
        )


_bearer = HTTPBearer(
    auto_error=False,
    description="A JWT: from the identity provider (oidc mode) or `radsentry token` (local).",
)


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
"""The request's bearer credentials, if any (not yet verified)."""


def current_principal(request: Request, credentials: BearerDep) -> Principal:
    """The verified caller of this request; 401 without a trustworthy bearer token. A plain
    ``def``: a JWKS fetch blocks, so FastAPI runs it in its thread pool."""
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        return verifier.verify(credentials.credentials)
    except InvalidToken as exc:
        log.info("bearer token refused", reason=str(exc), path=request.url.path)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or expired bearer token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None
    except AuthUnavailable as exc:
        log.error("bearer token cannot be checked", reason=str(exc.__cause__))
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "tokens cannot be checked right now"
        ) from None


def require_roles(*roles: Role) -> params.Depends:
    """A dependency that returns the caller when it holds one of ``roles``: 401 without a
    valid token, 403 with a valid one that holds none of them."""
    allowed = frozenset(roles)

    def authorised(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.roles & allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, role_refusal(principal, allowed))
        return principal

    dependency: params.Depends = Depends(authorised)
    return dependency


def role_refusal(principal: Principal, allowed: Iterable[Role]) -> str:
    """A 403's detail: the role(s) this needs and those the token holds, so that the caller
    knows which token to ask for (docs/security.md, Roles)."""
    needed = sorted(role.value for role in allowed)
    held = ", ".join(sorted(role.value for role in principal.roles)) or "no RadSentry role"
    wanted = (
        f"the role {needed[0]}" if len(needed) == 1 else "one of the roles " + ", ".join(needed)
    )
    return (
        f"this needs {wanted}; the token of {principal.subject} holds {held}: "
        "use a token issued with that role"
    )


def fresh_signer(
    request: Request, principal: Annotated[Principal, require_roles(Role.MLOPS)]
) -> Principal:
    """An mlops caller who authenticated within ``auth.signing_max_age_s``: an electronic
    signature needs the person, not a token left in a script (401 asks to log in again)."""
    max_age = request.app.state.settings.auth.signing_max_age_s
    age = (
        (datetime.now(UTC) - principal.authenticated_at).total_seconds()
        if principal.authenticated_at is not None
        else None
    )
    if age is None or age > max_age:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "re-authenticate to sign",
            headers={
                "WWW-Authenticate": (
                    f'Bearer error="insufficient_user_authentication", max_age={int(max_age)}'
                )
            },
        )
    return principal


def check_site(principal: Principal, site_id: str) -> None:
    """403 when ``site_id`` is not one of a site manager's sites (checked before any lookup,
    so the answer does not tell whether the site exists)."""
    if not principal.can_read_site(site_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "no access to this site")


ReaderDep = Annotated[Principal, require_roles(*Role)]
"""Any role may read; a site manager only its sites (check them with :func:`check_site`)."""
MlopsDep = Annotated[Principal, require_roles(Role.MLOPS)]
"""Changes: alert lifecycle, re-baselining, candidates, promotion and rollback."""
SignerDep = Annotated[Principal, Depends(fresh_signer)]
"""Electronic signatures (approve, reject): mlops, freshly authenticated."""
RetrainerDep = Annotated[Principal, require_roles(Role.MLOPS, Role.SERVICE)]
"""Asking for a retrain: people (mlops) and automation (service)."""
ChangeLogReaderDep = Annotated[Principal, require_roles(Role.AUDITOR, Role.MLOPS)]
"""Reading the change log (every site's changes): auditors and mlops."""
