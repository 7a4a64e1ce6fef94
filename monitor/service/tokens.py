"""Local-mode bearer tokens (``RADSENTRY_AUTH__MODE=local``, the embedded default): the roles a
token carries, the deployment's HS256 secret, and issuing a token (``radsentry token``).

Apart from :mod:`monitor.service.auth`, which verifies tokens inside the API, so that issuing
one imports no web framework (docs/benchmarks.md, "CLI start").
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import jwt
import structlog

from monitor.service.errors import ServiceError
from monitor.service.settings import Settings
from pccp.lifecycle import normalised_subject

log = structlog.get_logger(__name__)

LOCAL_KEY_FILE = "auth-local.key"
LOCAL_ISSUER = "radsentry-local"
LOCAL_ALGORITHM = "HS256"


class Role(StrEnum):
    SITE_MANAGER = "site_manager"
    """Reads the sites in its token's ``sites`` claim, nothing else."""
    MLOPS = "mlops"
    """Reads everything; acts on alerts, references, retraining and candidates."""
    AUDITOR = "auditor"
    """Reads everything, the change log included; changes nothing."""
    SERVICE = "service"
    """Automation: reads everything and asks for retraining."""


class LocalModeOnly(ServiceError, RuntimeError):
    """Tokens are issued here only in local mode; in oidc mode the identity provider does."""


def local_secret(settings: Settings) -> bytes:
    """The local-mode HS256 secret: configured, or created once in data_dir (0600), as the
    demo's pseudonymisation key is. Every process on the same data_dir shares it."""
    if settings.auth.local_secret is not None:
        return settings.auth.local_secret.get_secret_value().encode()
    path = settings.data_dir / LOCAL_KEY_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: of two processes starting together, one writes and both read it
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32))
            log.warning(
                "created a local token secret; production sets RADSENTRY_AUTH__MODE=oidc",
                path=str(path),
            )
    return path.read_text().strip().encode()


def issue_local_token(
    settings: Settings,
    subject: str,
    roles: Iterable[Role | str],
    sites: Iterable[str] = (),
    ttl_s: int = 3600,
    name: str | None = None,
) -> str:
    """A local-mode token for ``subject`` with ``roles`` (and ``sites`` for a site manager),
    valid ``ttl_s`` seconds; ``name``: the printed name its signatures show (default: the
    subject). Issuing it counts as authenticating now (``auth_time``). Raises
    :class:`LocalModeOnly` in oidc mode, ``ValueError`` for a blank or unreadable subject."""
    if settings.auth.mode != "local":
        raise LocalModeOnly(
            "tokens are issued by the identity provider in oidc mode (RADSENTRY_AUTH__MODE)"
        )
    if ttl_s <= 0:
        raise ValueError("a token needs a positive lifetime")
    subject = normalised_subject(subject)  # ValueError: blank, or control characters
    now = datetime.now(UTC)
    claims = {
        "sub": subject,
        "name": normalised_subject(name) if name is not None else subject,
        "auth_time": int(now.timestamp()),
        "iss": LOCAL_ISSUER,
        "aud": settings.auth.audience,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_s),
        "roles": sorted(Role(role).value for role in roles),
        "sites": sorted(set(sites)),
    }
    return jwt.encode(claims, local_secret(settings), algorithm=LOCAL_ALGORITHM)
