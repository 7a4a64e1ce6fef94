"""Configuration changes reach the change log once per change, on a real PostgreSQL database."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine

from monitor.drift.config import EngineConfig, WindowConfig
from monitor.service.audit.config import record_config
from monitor.service.audit.store import entries, verify
from monitor.service.settings import RetrainSettings, Settings
from retrain.policy import RetrainPolicy

pytestmark = pytest.mark.integration


def logged(engine: Engine) -> list[dict[str, object]]:
    return [dict(e.details) for e in entries(engine) if e.action == "config.changed"]


def test_a_start_with_the_same_settings_adds_nothing_and_a_change_names_what_changed(
    pg_engine: Engine,
) -> None:
    settings = Settings()
    first = record_config(pg_engine, settings, "radsentry-serve")
    assert first is not None and "drift" in first and "retrain.policy" in first
    assert record_config(pg_engine, settings, "radsentry-scheduler") is None

    changed = settings.model_copy(
        update={
            "drift": EngineConfig(window=WindowConfig(size=300, min_size=100)),
            "retrain": RetrainSettings(policy=RetrainPolicy(min_new_labels=999)),
        }
    )
    assert record_config(pg_engine, changed, "radsentry-serve") == ["drift", "retrain.policy"]
    history = logged(pg_engine)
    assert len(history) == 2
    assert history[1]["previous"] == history[0]["fingerprints"]
    assert verify(pg_engine).ok


def test_replicas_starting_together_record_one_change(pg_engine: Engine) -> None:
    start = threading.Barrier(4)
    results: list[list[str] | None] = []

    def run() -> None:
        start.wait()
        results.append(record_config(pg_engine, Settings(), "radsentry-serve"))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result is not None for result in results) == 1
    assert len(logged(pg_engine)) == 1
