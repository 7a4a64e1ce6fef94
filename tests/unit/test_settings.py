"""Settings: embedded defaults, production values from the environment, nothing connects."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from monitor.performance.config import PerformanceConfig
from monitor.service.auth import local_secret
from monitor.service.embedded_pg import database_url, migration_database_url
from monitor.service.runtime import edge_key
from monitor.service.settings import (
    AuthSettings,
    DatabaseSettings,
    EdgeSettings,
    PerformanceSettings,
    Settings,
)

SITE_SECRET = "s3cret-of-this-site-32-bytes-long"


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RADSENTRY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.database.url is None  # the embedded server's, started when a command needs it
    assert settings.uses_embedded_broker
    assert not (tmp_path / ".radsentry").exists(), "reading settings must not touch the disk"


def test_production_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADSENTRY_DATABASE__URL", "postgresql+psycopg://rs@db/radsentry")
    monkeypatch.setenv("RADSENTRY_KAFKA__BOOTSTRAP_SERVERS", '["k1:9092","k2:9092"]')
    monkeypatch.setenv("RADSENTRY_KAFKA__GROUP_ID", "site-ingest")
    monkeypatch.setenv("RADSENTRY_EDGE__HMAC_KEY", SITE_SECRET)
    settings = Settings()
    assert database_url(settings) == "postgresql+psycopg://rs@db/radsentry"
    assert settings.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert settings.kafka.group_id == "site-ingest"
    assert not settings.uses_embedded_broker
    assert edge_key(settings) == SITE_SECRET.encode()
    assert SITE_SECRET not in repr(settings)


def test_demo_edge_key_is_created_once_and_private(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RADSENTRY_EDGE__HMAC_KEY", raising=False)
    settings = Settings(data_dir=tmp_path)
    first = edge_key(settings)
    assert len(first) == 64 and edge_key(settings) == first
    assert (tmp_path / "edge-hmac.key").stat().st_mode & 0o077 == 0


def test_auth_is_local_by_default_and_oidc_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("RADSENTRY_AUTH"):
            monkeypatch.delenv(name)
    assert Settings().auth.mode == "local"
    monkeypatch.setenv("RADSENTRY_AUTH__MODE", "oidc")
    monkeypatch.setenv("RADSENTRY_AUTH__ISSUER", "https://idp.example.org/realms/rs")
    monkeypatch.setenv("RADSENTRY_AUTH__JWKS_URL", "https://idp.example.org/certs")
    monkeypatch.setenv("RADSENTRY_AUTH__ALGORITHMS", '["RS256"]')
    monkeypatch.setenv("RADSENTRY_AUTH__ROLES_CLAIM", "realm_access.roles")
    auth = Settings().auth
    assert (auth.mode, auth.algorithms, auth.roles_claim) == (
        "oidc",
        ["RS256"],
        "realm_access.roles",
    )


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        ({"mode": "oidc", "jwks_url": "https://idp/certs"}, "issuer is required"),
        ({"mode": "oidc", "issuer": "https://idp"}, "exactly one of"),
        (
            {
                "mode": "oidc",
                "issuer": "https://idp",
                "jwks_url": "https://idp/c",
                "public_key_file": "idp.pem",
            },
            "exactly one of",
        ),
        (
            {
                "mode": "oidc",
                "issuer": "https://idp",
                "jwks_url": "https://idp/c",
                "algorithms": ["RS256", "HS256"],
            },
            "['HS256'] refused",
        ),
        (
            {
                "mode": "oidc",
                "issuer": "https://idp",
                "jwks_url": "https://idp/c",
                "algorithms": ["none"],
            },
            "['none'] refused",
        ),
        ({"mode": "oidc", "issuer": "https://idp", "jwks_url": "file:///etc/keys"}, "pattern"),
        ({"local_secret": "too short"}, "at least 32"),
    ],
)
def test_auth_settings_refuse_what_cannot_be_secure(auth: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)):
        AuthSettings.model_validate(auth)


def test_local_token_secret_is_created_once_private_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RADSENTRY_AUTH__LOCAL_SECRET", raising=False)
    settings = Settings(data_dir=tmp_path)
    first = local_secret(settings)
    assert len(first) == 64 and local_secret(settings) == first
    assert (tmp_path / "auth-local.key").stat().st_mode & 0o077 == 0
    configured = Settings(auth=AuthSettings(local_secret=SecretStr("x" * 40)))
    assert local_secret(configured) == b"x" * 40 and "x" * 40 not in repr(configured)


def test_the_migration_connects_as_the_owner_else_as_the_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("RADSENTRY_"):
            monkeypatch.delenv(name)
    # Unset, both are the embedded server's (tests/integration/test_embedded_defaults.py).
    monkeypatch.setenv("RADSENTRY_DATABASE__URL", "postgresql+psycopg://radsentry_app@db/rs")
    monkeypatch.setenv("RADSENTRY_DATABASE__MIGRATION_URL", "postgresql+psycopg://owner@db/rs")
    monkeypatch.setenv("RADSENTRY_DATABASE__RUNTIME_ROLE", "radsentry_app")
    monkeypatch.setenv("RADSENTRY_DATABASE__CONSUMER_ROLE", "radsentry_consumer")
    settings = Settings()
    assert migration_database_url(settings) == "postgresql+psycopg://owner@db/rs"
    assert database_url(settings) == "postgresql+psycopg://radsentry_app@db/rs"
    assert (settings.database.runtime_role, settings.database.consumer_role) == (
        "radsentry_app",
        "radsentry_consumer",
    )


@pytest.mark.parametrize(
    ("database", "reason"),
    [
        ({"runtime_role": "Radsentry"}, "should match pattern"),
        ({"runtime_role": 'app"; DROP TABLE change_log; --'}, "should match pattern"),
        ({"consumer_role": "x" * 64}, "should match pattern"),
        ({"runtime_role": "app", "consumer_role": "app"}, "must differ from"),
    ],
)
def test_database_roles_are_plain_and_distinct(database: dict[str, str], reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)):
        DatabaseSettings.model_validate(database)


REFUSED_SECRETS = [
    "",
    " " * 32,  # the 32 spaces
    "\t\n " * 12,
    "Q",  # the one-character HMAC key
    "hunter2-hunter2-hunter2-hunter2",  # 31 bytes
    " " * 20 + "k" * 20,  # 20 bytes besides the whitespace
    "é" * 15,  # 15 characters, 30 bytes
]


@pytest.mark.parametrize("secret", REFUSED_SECRETS)
@pytest.mark.parametrize("variable", ["RADSENTRY_AUTH__LOCAL_SECRET", "RADSENTRY_EDGE__HMAC_KEY"])
def test_a_blank_whitespace_or_short_secret_is_refused_and_never_echoed(
    monkeypatch: pytest.MonkeyPatch, variable: str, secret: str
) -> None:
    monkeypatch.setenv(variable, secret)
    with pytest.raises(ValidationError, match="needs at least 32 bytes") as refused:
        Settings()
    assert "input_value" not in str(refused.value)
    if secret.strip():
        assert secret.strip() not in str(refused.value)


@pytest.mark.parametrize("group", [AuthSettings, EdgeSettings])
def test_a_secret_refused_by_its_own_group_is_not_echoed_either(
    group: type[AuthSettings] | type[EdgeSettings],
) -> None:
    field = "local_secret" if group is AuthSettings else "hmac_key"
    with pytest.raises(ValidationError) as refused:
        group.model_validate({field: "hunter2-hunter2"})
    assert "hunter2" not in str(refused.value) and "input_value" not in str(refused.value)


@pytest.mark.parametrize("secret", ["k" * 32, "é" * 16, "\n" + "k" * 40 + "\n"])
def test_a_secret_of_32_bytes_is_accepted_as_given(secret: str) -> None:
    settings = Settings(auth={"local_secret": secret}, edge={"hmac_key": secret})
    assert local_secret(settings) == secret.encode() == edge_key(settings)
    assert secret.strip() not in repr(settings)


def test_performance_settings_refuse_bootstrap_intervals_the_statistics_cannot_give() -> None:
    with pytest.raises(ValidationError, match="auroc_ci must be 'delong'"):
        PerformanceSettings(metrics=PerformanceConfig(auroc_ci="bootstrap"))
    assert PerformanceSettings().metrics.auroc_ci == "delong"
