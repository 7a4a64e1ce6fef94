"""Settings: embedded defaults, production values from the environment, nothing connects."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monitor.service.runtime import edge_key
from monitor.service.settings import Settings


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RADSENTRY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path / '.radsentry' / 'radsentry.db'}"
    assert settings.uses_embedded_broker
    assert not (tmp_path / ".radsentry").exists(), "reading settings must not touch the disk"


def test_production_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADSENTRY_DATABASE__URL", "postgresql+psycopg://rs@db/radsentry")
    monkeypatch.setenv("RADSENTRY_KAFKA__BOOTSTRAP_SERVERS", '["k1:9092","k2:9092"]')
    monkeypatch.setenv("RADSENTRY_KAFKA__GROUP_ID", "site-ingest")
    monkeypatch.setenv("RADSENTRY_EDGE__HMAC_KEY", "s3cret")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://rs@db/radsentry"
    assert settings.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert settings.kafka.group_id == "site-ingest"
    assert not settings.uses_embedded_broker
    assert edge_key(settings) == b"s3cret"
    assert "s3cret" not in repr(settings)


def test_demo_edge_key_is_created_once_and_private(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RADSENTRY_EDGE__HMAC_KEY", raising=False)
    settings = Settings(data_dir=tmp_path)
    first = edge_key(settings)
    assert len(first) == 64 and edge_key(settings) == first
    assert (tmp_path / "edge-hmac.key").stat().st_mode & 0o077 == 0
