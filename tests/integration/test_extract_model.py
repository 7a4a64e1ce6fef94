"""`radsentry extract --model` against a real `mlflow server`: a tiny model trained here (two
epochs on random 16x16 images, so the module stays fast), logged and registered with the
projection training fitted, scores and embeds real DICOM files into inference-event/v2 lines."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from monitor.events import InferenceEventV2, parse_event
from monitor.service.cli import app
from retrain.config import MlflowConfig, TrainConfig
from retrain.dataset import LockedTestSet, assemble
from retrain.embedding import fit_projection_on_images
from retrain.model import ModelSpec
from retrain.tracking import Registry, RunRecord
from retrain.train import TrainResult, train
from tests.factories import fake_content_hash, labelled_cases
from tests.phi_files import NAME_IN_PATH, write_files

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

SPEC = ModelSpec(input_size=16, channels=(8,))
CONFIG = TrainConfig(max_epochs=2, patience=5, batch_size=16, device="cpu")
FAST_RETRIES = MlflowConfig(
    retry_attempts=3, retry_initial_s=0.05, retry_max_s=0.2, request_timeout_s=5
)
SITE_KEY = "integration-site-key-of-at-least-32-bytes"
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(64, 1, 16, 16, generator=generator)
    labels = (torch.rand(64, 1, generator=generator) > 0.5).float()
    return train(
        SPEC, CONFIG, (images[:48], labels[:48]), (images[48:], labels[48:]),
        checkpoint_dir=tmp_path_factory.mktemp("checkpoints"), progress=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def registry(mlflow_server: str) -> Registry:
    return Registry(mlflow_server, FAST_RETRIES)


def register(registry: Registry, result: TrainResult) -> tuple[str, str]:
    """Log and register ``result`` under a model name of its own, as the champion."""
    model_name = f"cxr-{uuid.uuid4().hex[:8]}"
    manifest = assemble(
        labelled_cases(12, sites=2), LockedTestSet.from_keys([]), seed=0,
        content_sha256=fake_content_hash,
    ).manifest  # fmt: skip
    record = RunRecord(
        model_name=model_name, result=result, train_config=CONFIG, manifest=manifest,
        tags={"radsentry.request_id": model_name}, params={}, metrics={},
    )  # fmt: skip
    version = registry.log_and_register(record).version
    registry.set_initial_champion(model_name, version)
    return model_name, version


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mlflow_server: str) -> None:
    monkeypatch.setenv("RADSENTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RADSENTRY_EDGE__HMAC_KEY", SITE_KEY)
    monkeypatch.setenv("RADSENTRY_EDGE__SITE_ID", "site-07")
    monkeypatch.setenv("RADSENTRY_MLFLOW__TRACKING_URI", mlflow_server)


def events_of(stdout: str) -> list[InferenceEventV2]:
    events = [parse_event(line.encode(), "inference-event") for line in stdout.splitlines()]
    assert all(isinstance(event, InferenceEventV2) for event in events)
    return events  # type: ignore[return-value]


def test_extract_with_a_model_writes_v2_events_with_the_projections_embedding(
    registry: Registry, trained: TrainResult, tmp_path: Path
) -> None:
    model_name, version = register(registry, trained)
    clean, hostile = write_files(tmp_path)
    again = tmp_path / "again.dcm"
    shutil.copyfile(clean, again)
    phi_file = next(iter(hostile.values()))

    result = runner.invoke(
        app, ["extract", "--model", model_name, str(clean), str(again), str(phi_file)]
    )

    assert result.exit_code == 0, result.output
    stored = registry.load_projection(model_name, version)
    assert stored == trained.projection
    first, second, third = events_of(result.stdout)
    for event in (first, second, third):
        assert event.embedding is not None and len(event.embedding) == stored.dimensions == 8
        assert event.embedding_id == stored.embedding_id(model_name, version)
        assert (event.site_id, event.model_name, event.model_version) == (
            "site-07",
            model_name,
            version,
        )
        assert set(event.prediction.scores) == {"lesion"}
    assert first.embedding == second.embedding and first.study_key == second.study_key
    assert first.prediction == second.prediction and first.event_id != second.event_id
    assert "1 text fields dropped as possible PHI" in result.stderr
    assert NAME_IN_PATH not in result.stdout and str(tmp_path) not in result.stdout


def test_a_version_without_a_projection_is_refused_until_one_is_logged(
    registry: Registry, trained: TrainResult, tmp_path: Path
) -> None:
    model_name, version = register(registry, dataclasses.replace(trained, projection=None))
    clean, _ = write_files(tmp_path)

    refused = runner.invoke(app, ["extract", "--model", f"{model_name}@champion", str(clean)])
    assert refused.exit_code == 2
    assert f"{model_name} version {version} has no embedding projection" in refused.stderr

    images = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    projection = fit_projection_on_images(trained.model, images, components=3)
    registry.log_projection(model_name, version, projection)
    result = runner.invoke(app, ["extract", "--model", f"{model_name}@{version}", str(clean)])
    assert result.exit_code == 0, result.output
    (event,) = events_of(result.stdout)
    assert event.embedding is not None and len(event.embedding) == 3
    assert event.embedding_id == projection.embedding_id(model_name, version)


def test_an_unknown_alias_and_file_key_with_a_model_are_refused(tmp_path: Path) -> None:
    clean, _ = write_files(tmp_path)
    unknown = runner.invoke(app, ["extract", "--model", "no-such-model@champion", str(clean)])
    assert unknown.exit_code == 2 and "error" in unknown.stderr
    both = runner.invoke(app, ["extract", "--model", "m", "--file-key", str(clean)])
    assert both.exit_code == 2 and "--file-key does not go with --model" in both.stderr


def test_simulate_with_embeddings_writes_v2_events_of_the_champion(
    trained: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`radsentry simulate --embeddings` with the embedded MLflow store (its own, in data_dir)."""
    from monitor.service.registry import registry_for
    from monitor.service.runtime import load_settings

    monkeypatch.delenv("RADSENTRY_MLFLOW__TRACKING_URI")
    out = tmp_path / "events.jsonl"
    command = ["simulate", "--sites", "1", "--studies", "2", "--seed", "4", "--jsonl", str(out)]
    refused = runner.invoke(app, [*command, "--embeddings", "--scores", "score-model"])
    assert refused.exit_code == 2 and "has no champion" in refused.stderr

    registry = registry_for(load_settings())
    manifest = assemble(
        labelled_cases(12, sites=2), LockedTestSet.from_keys([]), seed=0,
        content_sha256=fake_content_hash,
    ).manifest  # fmt: skip
    record = RunRecord(
        model_name="cxr-lesion", result=trained, train_config=CONFIG, manifest=manifest,
        tags={"radsentry.request_id": "simulate"}, params={}, metrics={},
    )  # fmt: skip
    version = registry.log_and_register(record).version
    registry.set_initial_champion("cxr-lesion", version)

    result = runner.invoke(app, [*command, "--embeddings", "--scores", "score-model"])

    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    inferences = [parse_event(line) for line in lines if b'"inference-event/' in line]
    assert len(inferences) == 2
    for event in inferences:
        assert isinstance(event, InferenceEventV2) and event.embedding is not None
        assert len(event.embedding) == 8
        assert trained.projection is not None
        assert event.embedding_id == trained.projection.embedding_id("cxr-lesion", version)
