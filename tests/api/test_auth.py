"""Bearer-token authentication: OIDC tokens checked against a real JWKS endpoint (served over
HTTP from a thread), a configured public key, and local-mode tokens from the API and the CLI."""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from monitor.service.api import create_app
from monitor.service.auth import (
    LocalModeOnly,
    Principal,
    Role,
    TokenVerifier,
    issue_local_token,
)
from monitor.service.cli import app as cli
from monitor.service.settings import AuthSettings, Settings
from tests.auth_helpers import TEST_AUTH, bearer, local_claims, signed_locally
from tests.factories import record_initial_champion

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example.org/realms/radsentry"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ROTATED_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SUBJECT = f"subject-{uuid.uuid4().hex}"
"""Distinctive, so that a response that echoes the token's claims is caught."""


def jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    public = private_key.public_key()
    algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    key = algorithm.to_jwk(public, as_dict=True)
    return key | {"kid": kid, "alg": alg, "use": "sig"}


@dataclass
class JwksServer:
    """A JWKS endpoint: ``keys`` is what it publishes now; ``fetches`` counts the GETs."""

    keys: list[dict[str, Any]]
    fetches: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    def __enter__(self) -> JwksServer:
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/certs"
        # shutdown() waits up to one poll interval (0.5 s by default), once per test.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
        threading.Thread(target=serve, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with JwksServer([jwk(RSA_KEY, "rsa-1", "RS256"), jwk(EC_KEY, "ec-1", "ES256")]) as server:
        yield server


def oidc_settings(tmp_path: Path, **auth: Any) -> Settings:
    config = {"mode": "oidc", "issuer": ISSUER, "jwks_refresh_cooldown_s": 0} | auth
    return Settings(data_dir=tmp_path, auth=AuthSettings.model_validate(config))


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid OIDC claims (mlops) with ``overrides``; None removes a claim."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": SUBJECT,
        "iss": ISSUER,
        "aud": "radsentry",
        "iat": now,
        "exp": now + 600,
        "roles": ["mlops"],
    }
    values |= overrides
    return {name: value for name, value in values.items() if value is not None}


def signed(
    payload: dict[str, Any], key: Any = RSA_KEY, alg: str = "RS256", kid: str = "rsa-1"
) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(payload: dict[str, Any], alg: str, secret: bytes | None = None) -> str:
    """A token PyJWT would refuse to make: ``alg: none``, or HS256 keyed with a public key."""
    head = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(json.dumps(payload).encode())
    if secret is None:
        return f"{head}.{body}."
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64(mac.finalize())}"


@pytest.fixture
def oidc_client(pg_engine: Engine, jwks: JwksServer, tmp_path: Path) -> Iterator[TestClient]:
    settings = oidc_settings(tmp_path, jwks_url=jwks.url)
    with TestClient(create_app(settings, engine=pg_engine)) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_valid_rs256_and_es256_tokens_are_accepted_and_name_the_actor(
    oidc_client: TestClient, jwks: JwksServer, pg_engine: Engine
) -> None:
    record_initial_champion(pg_engine)  # a model the service knows
    assert oidc_client.get("/sites", headers=auth(signed(claims()))).status_code == 200
    es256 = signed(claims(), EC_KEY, "ES256", "ec-1")
    asked = oidc_client.post(
        "/models/cxr-lesion/retrain", json={"reason": "checked"}, headers=auth(es256)
    )
    assert asked.status_code == 202 and asked.json()["requested_by"] == SUBJECT
    assert jwks.fetches == 1, "the key set is cached"


PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
REFUSED = {
    "expired": signed(claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
    "wrong issuer": signed(claims(iss="https://evil.example.org")),
    "wrong audience": signed(claims(aud="another-api")),
    "bad signature": signed(claims(), ATTACKER_KEY),
    "unknown kid": signed(claims(), ATTACKER_KEY, kid="attacker"),
    "alg none": forged(claims(), "none"),
    "HS256 keyed with the public key": forged(claims(), "HS256", PUBLIC_PEM),
    "no sub": signed(claims(sub=None)),
    "no exp": signed(claims(exp=None)),
    "no iat": signed(claims(iat=None)),
    "empty sub": signed(claims(sub=" ")),
    "not a JWT": "not-a-jwt",
    "garbage segments": "a.b.c",
}


@pytest.mark.parametrize("token", list(REFUSED.values()), ids=list(REFUSED))
def test_untrustworthy_tokens_get_401_without_echo(oidc_client: TestClient, token: str) -> None:
    response = oidc_client.get("/sites", headers=auth(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert token not in response.text and SUBJECT not in response.text
    assert ISSUER not in response.text


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer ", "Basic YWxpY2U6c2VjcmV0", "Token abc.def.ghi"]
)
def test_missing_or_malformed_authorization_headers_get_401(
    oidc_client: TestClient, header: str | None
) -> None:
    response = oidc_client.get("/sites", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_roles_are_ignored_and_no_known_role_may_do_nothing(
    oidc_client: TestClient,
) -> None:
    mixed = signed(claims(roles=["admin", "auditor"]))
    assert oidc_client.get("/sites", headers=auth(mixed)).status_code == 200
    assert (
        oidc_client.post(
            "/models/cxr-lesion/retrain", json={"reason": "r"}, headers=auth(mixed)
        ).status_code
        == 403
    )
    unknown = signed(claims(roles=["admin"]))
    assert oidc_client.get("/sites", headers=auth(unknown)).status_code == 403
    assert oidc_client.get("/sites", headers=auth(signed(claims(roles="bogus")))).status_code == 403


def test_a_rotated_key_is_fetched_by_its_new_kid(oidc_client: TestClient, jwks: JwksServer) -> None:
    assert oidc_client.get("/sites", headers=auth(signed(claims()))).status_code == 200
    rotated = signed(claims(), ROTATED_KEY, kid="rsa-2")
    assert oidc_client.get("/sites", headers=auth(rotated)).status_code == 401  # not published
    jwks.keys = [jwk(ROTATED_KEY, "rsa-2", "RS256")]
    assert oidc_client.get("/sites", headers=auth(rotated)).status_code == 200
    assert jwks.fetches == 3
    assert oidc_client.get("/sites", headers=auth(rotated)).status_code == 200
    assert jwks.fetches == 3, "a known kid is served from the cache"


def test_an_unreachable_identity_provider_is_503_not_401(pg_engine: Engine, tmp_path: Path) -> None:
    with JwksServer([]) as gone:
        url = gone.url
    settings = oidc_settings(tmp_path, jwks_url=url)
    with TestClient(create_app(settings, engine=pg_engine)) as client:
        assert client.get("/sites", headers=auth(signed(claims()))).status_code == 503
        # Declared on every route behind a token, where any of them may answer it.
        paths = client.get("/openapi.json").json()["paths"]
        secured = [
            (method, path, operation["responses"])
            for path, operations in paths.items()
            for method, operation in operations.items()
            if "401" in operation["responses"]
        ]
        assert len(secured) > 20
        assert [(m, p) for m, p, responses in secured if "503" not in responses] == []


def test_a_configured_public_key_and_nested_claims(pg_engine: Engine, tmp_path: Path) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_bytes(
        EC_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = oidc_settings(
        tmp_path,
        public_key_file=pem,
        algorithms=["ES256"],
        roles_claim="realm_access.roles",
        sites_claim="radsentry_sites",
    )
    verifier = TokenVerifier(settings)
    token = signed(
        claims(roles=None, realm_access={"roles": ["site_manager"]}, radsentry_sites=["site-07"]),
        EC_KEY,
        "ES256",
        "ec-1",
    )
    assert verifier.verify(token) == Principal(
        SUBJECT, frozenset({Role.SITE_MANAGER}), frozenset({"site-07"})
    )
    with TestClient(create_app(settings, engine=pg_engine)) as client:
        assert client.get("/sites/site-07/events", headers=auth(token)).status_code == 404
        assert client.get("/sites/site-08/events", headers=auth(token)).status_code == 403
        assert client.get("/sites", headers=auth(signed(claims()))).status_code == 401  # RS256


def test_local_tokens_from_the_api_and_the_cli(
    pg_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RADSENTRY_AUTH__LOCAL_SECRET", raising=False)
    monkeypatch.delenv("RADSENTRY_AUTH__MODE", raising=False)
    monkeypatch.setenv("RADSENTRY_DATA_DIR", str(tmp_path))
    settings = Settings(data_dir=tmp_path)
    token = issue_local_token(settings, "alice", [Role.MLOPS])
    key_file = tmp_path / "auth-local.key"
    assert key_file.stat().st_mode & 0o077 == 0, "the local secret is private"
    issued = CliRunner().invoke(
        cli, ["token", "--subject", "bob", "--role", "site_manager", "--site", "site-01"]
    )
    assert issued.exit_code == 0, issued.output
    cli_token = issued.stdout.strip().splitlines()[0]
    with TestClient(create_app(settings, engine=pg_engine)) as client:
        assert client.get("/sites", headers=auth(token)).status_code == 200
        assert client.get("/sites/site-01/events", headers=auth(cli_token)).status_code == 404
        assert client.get("/sites/site-02/events", headers=auth(cli_token)).status_code == 403
        other_secret = bearer(Settings(auth=TEST_AUTH), "alice", Role.MLOPS)
        assert client.get("/sites", headers=other_secret).status_code == 401
        expired = local_claims(settings, roles=["mlops"], exp=int(time.time()) - 60)
        assert (
            client.get("/sites", headers=auth(signed_locally(settings, expired))).status_code == 401
        )


def test_local_tokens_are_refused_in_oidc_mode(
    jwks: JwksServer, pg_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = Settings(data_dir=tmp_path, auth=TEST_AUTH)
    token = issue_local_token(local, "alice", [Role.MLOPS])
    oidc = oidc_settings(tmp_path, jwks_url=jwks.url)
    with pytest.raises(LocalModeOnly):
        issue_local_token(oidc, "alice", [Role.MLOPS])
    with TestClient(create_app(oidc, engine=pg_engine)) as client:
        assert client.get("/sites", headers=auth(token)).status_code == 401
    assert jwks.fetches == 0, "an HS256 token is refused before any key lookup"
    monkeypatch.setenv("RADSENTRY_AUTH__MODE", "oidc")
    monkeypatch.setenv("RADSENTRY_AUTH__ISSUER", ISSUER)
    monkeypatch.setenv("RADSENTRY_AUTH__JWKS_URL", jwks.url)
    refused = CliRunner().invoke(cli, ["token", "--subject", "alice", "--role", "mlops"])
    assert refused.exit_code == 2 and "oidc mode" in refused.output


def test_principals_read_sites_by_role() -> None:
    manager = Principal("mo", frozenset({Role.SITE_MANAGER}), frozenset({"site-01"}))
    assert manager.can_read_site("site-01") and not manager.can_read_site("site-02")
    assert not manager.can_read_site(None) and manager.site_filter() == {"site-01"}
    auditor = Principal("amy", frozenset({Role.AUDITOR, Role.SITE_MANAGER}), frozenset())
    assert auditor.can_read_site("site-02") and auditor.site_filter() is None
    nobody = Principal("x", frozenset(), frozenset({"site-01"}))  # sites mean nothing alone
    assert not nobody.can_read_site("site-01") and nobody.site_filter() == frozenset()
