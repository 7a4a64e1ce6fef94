"""Bearer tokens for tests that call the HTTP API (local mode, a fixed secret)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import jwt
from pydantic import SecretStr

from monitor.service.auth import LOCAL_ISSUER, Role, issue_local_token, local_secret
from monitor.service.settings import AuthSettings, Settings

TEST_AUTH = AuthSettings(
    local_secret=SecretStr("radsentry-tests-local-secret-not-for-use"),
    signing_max_age_s=24 * 3600.0,
)
"""Local mode with a secret of the tests' own: no key file is written into a data dir. Tokens
made at import time sign for a day: the suite runs longer than the production freshness limit
(five minutes), which tests/security/test_identities.py checks with its own settings."""


def bearer(
    settings: Settings, subject: str, *roles: Role | str, sites: Iterable[str] = ()
) -> dict[str, str]:
    """Headers with a local-mode token for ``subject``; pass them to ``TestClient(headers=)``
    or to one request."""
    token = issue_local_token(settings, subject, roles, sites)
    return {"Authorization": f"Bearer {token}"}


def signed_locally(settings: Settings, claims: Mapping[str, Any], **header: str) -> str:
    """Any claims, signed as a local-mode token is (HS256, this settings' secret): for tokens
    that ``issue_local_token`` refuses to make (no subject, unknown roles, expired...)."""
    return jwt.encode(dict(claims), local_secret(settings), algorithm="HS256", headers=header)


def local_claims(settings: Settings, subject: str = "alice", **overrides: Any) -> dict[str, Any]:
    """Valid local-mode claims (one hour, no roles) with ``overrides``; None removes a claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "iss": LOCAL_ISSUER,
        "aud": settings.auth.audience,
        "iat": now,
        "exp": now + 3600,
        "roles": [],
        "sites": [],
    }
    claims |= overrides
    return {name: value for name, value in claims.items() if value is not None}
