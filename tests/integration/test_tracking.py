"""MLflow tracking and the model registry (retrain/tracking.py) against a real `mlflow server`.

The server (PostgreSQL store, local artifacts) starts once per session (tests/mlflow_server.py);
the embedded default (SQLite plus a local folder) is tested too. Runs log a tiny model trained
for two epochs on random images; torch runs on one thread (shared box, tiny convolutions).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from monitor.drift.alerts import StreamKey
from monitor.service.drift.directions import RegistryDirections
from retrain.config import MlflowConfig, TrainConfig
from retrain.dataset import DatasetManifest, LockedTestSet, assemble
from retrain.embedding import EmbeddingError, direction_set, fit_direction_on_images
from retrain.mlflow_names import DATASET_TAG
from retrain.model import ModelSpec, TrainedModel, predict
from retrain.tracking import RegisteredVersion, Registry, RunRecord, TrackingError
from retrain.tracking_content import run_params
from retrain.train import TrainResult, train
from tests.factories import fake_content_hash, labelled_cases
from tests.mlflow_server import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("one_torch_thread"),
    # MLflow's own SQL store (the embedded default) uses a loader strategy SQLAlchemy deprecates.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

SPEC = ModelSpec(input_size=16, channels=(4,))
CONFIG = TrainConfig(max_epochs=2, patience=5, batch_size=16, device="cpu")
FAST_RETRIES = MlflowConfig(
    retry_attempts=3, retry_initial_s=0.05, retry_max_s=0.2, request_timeout_s=5
)
REQUEST = "radsentry.request_id"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _working_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An empty working directory, still empty at the end: MLflow falls back to ./mlflow.db
    and ./mlruns wherever a call escapes the tracking URI it was meant to use."""
    directory = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        yield
    assert list(directory.iterdir()) == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(64, 1, 16, 16, generator=generator)
    labels = (torch.rand(64, 1, generator=generator) > 0.5).float()
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    return train(
        SPEC, CONFIG, (images[:48], labels[:48]), (images[48:], labels[48:]),
        checkpoint_dir=checkpoints, progress=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def manifest() -> DatasetManifest:
    cases = labelled_cases(12, sites=2)
    return assemble(
        cases, LockedTestSet.from_keys([]), seed=0, content_sha256=fake_content_hash
    ).manifest


def make_record(
    trained: TrainResult, manifest: DatasetManifest, model_name: str, request_id: str
) -> RunRecord:
    return RunRecord(
        model_name=model_name,
        result=trained,
        train_config=CONFIG,
        manifest=manifest,
        tags={
            REQUEST: request_id,
            "radsentry.alert_id": f"alert-{request_id}",
            "radsentry.trigger": "drift",
            "radsentry.site_id": "site-01",
        },
        params={"job.fingerprint": "f" * 64},
        metrics={"auroc_champion_site-01": 0.81},
    )


@pytest.fixture
def model_name() -> str:
    """A registered model of the test's own."""
    return f"cxr-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def registry(mlflow_server: str) -> Registry:
    return Registry(mlflow_server, FAST_RETRIES)


@pytest.fixture(scope="module")
def client(mlflow_server: str) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


@pytest.fixture(scope="module")
def registered(
    registry: Registry, trained: TrainResult, manifest: DatasetManifest
) -> tuple[RunRecord, RegisteredVersion]:
    """One run logged and registered, shared by the tests that only read it."""
    record = make_record(trained, manifest, f"cxr-{uuid.uuid4().hex[:8]}", "request-1")
    return record, registry.log_and_register(record)


def runs_of(client: MlflowClient, request_id: str) -> list[mlflow.entities.Run]:
    experiment = client.get_experiment_by_name(FAST_RETRIES.experiment)
    assert experiment is not None
    query = f"tags.`{REQUEST}` = '{request_id}'"
    return list(client.search_runs([experiment.experiment_id], filter_string=query))


def expected_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def test_a_run_logs_its_lineage_and_registers_a_challenger(
    registered: tuple[RunRecord, RegisteredVersion],
    client: MlflowClient,
    trained: TrainResult,
    manifest: DatasetManifest,
    tmp_path: Path,
) -> None:
    _, version = registered
    run = client.get_run(version.run_id)
    params, tags = run.data.params, run.data.tags
    assert run.info.status == "FINISHED"
    assert {f"train.{name}" for name in TrainConfig.model_fields} <= params.keys()
    assert {f"spec.{name}" for name in ModelSpec.model_fields} <= params.keys()
    assert params["train.max_epochs"] == "2" and params["spec.channels"] == "[4]"
    assert params["dataset.sha256"] == manifest.sha256()
    assert params["dataset.cases"] == "12"
    assert params["job.fingerprint"] == "f" * 64
    val_loss = client.get_metric_history(version.run_id, "val_loss")
    assert [m.step for m in val_loss] == [epoch.epoch for epoch in trained.history]
    assert [m.value for m in val_loss] == [epoch.val_loss for epoch in trained.history]
    assert run.data.metrics["best_epoch"] == trained.best_epoch
    assert run.data.metrics["auroc_champion_site-01"] == 0.81
    assert "calibration_ece_after_lesion" in run.data.metrics
    assert tags["radsentry.git_commit"] == expected_commit()
    assert tags["radsentry.config_fingerprint"] == CONFIG.fingerprint()
    assert tags["radsentry.spec_fingerprint"] == SPEC.fingerprint()
    assert tags["radsentry.dataset_sha256"] == manifest.sha256()
    assert tags["radsentry.alert_id"] == "alert-request-1"
    local = client.download_artifacts(version.run_id, "dataset/manifest.json", str(tmp_path))
    assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == manifest.sha256()

    assert version.version == "1" and version.aliases == ("challenger",)
    assert version.tags[REQUEST] == "request-1"
    assert version.tags["radsentry.alert_id"] == "alert-request-1"
    assert version.tags["radsentry.dataset_sha256"] == manifest.sha256()
    assert version.tags["radsentry.run_id"] == version.run_id


def test_load_model_reads_back_the_trained_bundle(
    registered: tuple[RunRecord, RegisteredVersion], registry: Registry, trained: TrainResult
) -> None:
    record, version = registered
    loaded = registry.load_model(record.model_name, version.version)
    assert isinstance(loaded, TrainedModel)
    assert loaded.temperature == trained.model.temperature
    assert loaded.thresholds == trained.model.thresholds
    images = torch.rand(7, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    assert np.array_equal(predict(loaded, images), predict(trained.model, images))
    challenger = registry.version_by_alias(record.model_name, "challenger")
    assert challenger is not None and challenger.version == version.version
    assert registry.version_by_alias(record.model_name, "champion") is None
    assert registry.version_by_alias("no-such-model", "challenger") is None
    assert registry.champion_version(record.model_name) is None
    assert registry.champion_version("no-such-model") is None


def test_the_training_manifest_reads_back_and_an_altered_one_is_refused(
    registry: Registry,
    client: MlflowClient,
    trained: TrainResult,
    manifest: DatasetManifest,
    model_name: str,
) -> None:
    """What the threshold policy's target leaves out (plan 1.4.0): the studies a version
    trained and validated on, as its run logged them, checked against its dataset tag."""
    version = registry.log_and_register(make_record(trained, manifest, model_name, "manifest"))
    assert registry.training_manifest(model_name, version.version) == manifest
    client.set_model_version_tag(model_name, version.version, DATASET_TAG, "0" * 64)
    with pytest.raises(TrackingError, match="has been altered"):
        registry.training_manifest(model_name, version.version)


def test_a_missing_manifest_reads_as_none_and_an_unreadable_one_is_an_error(
    registry: Registry,
    client: MlflowClient,
    trained: TrainResult,
    manifest: DatasetManifest,
    model_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A run that logged no manifest reads as None (the job then fails: plan 1.4.0 needs it);
    one the store lists but cannot serve is a TrackingError, which the retraining job retries
    instead of failing the request as if there were none. Both made on the real server's
    artifact store on disk."""
    version = registry.log_and_register(make_record(trained, manifest, model_name, "missing"))
    stored = next(
        tmp_path_factory.getbasetemp().glob(
            f"mlflow*/**/{version.run_id}/artifacts/dataset/manifest.json"
        )
    )
    stored.unlink()
    stored.mkdir()  # listed under its name, but a folder: no file to download
    with pytest.raises(TrackingError, match="listed but could not be downloaded"):
        registry.training_manifest(model_name, version.version)
    stored.rmdir()
    assert registry.training_manifest(model_name, version.version) is None


def test_the_mlflow_model_serves_calibrated_probabilities(
    registered: tuple[RunRecord, RegisteredVersion],
    mlflow_server: str,
    trained: TrainResult,
    tmp_path: Path,
) -> None:
    record, version = registered
    # models:/ URIs resolve through MLflow's global tracking URI, whatever the arguments say.
    with _use_tracking_uri(mlflow_server):
        uri = f"models:/{record.model_name}/{version.version}"
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path))
        served = mlflow.pytorch.load_model(uri)
    signature = mlflow.models.Model.load(local).signature
    assert signature is not None
    assert [spec.shape for spec in signature.inputs.inputs] == [(-1, 1, 16, 16)]
    assert signature.outputs is not None
    assert [spec.shape for spec in signature.outputs.inputs] == [(-1, 1)]
    images = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        probabilities = served(images).numpy()
    assert probabilities.shape == (5, 1)
    np.testing.assert_allclose(probabilities, predict(trained.model, images), atol=1e-6)


def test_the_same_request_registers_once_and_an_interrupted_one_is_finished(
    registered: tuple[RunRecord, RegisteredVersion], registry: Registry, client: MlflowClient
) -> None:
    record, version = registered
    assert registry.log_and_register(record) == version
    assert len(runs_of(client, "request-1")) == 1

    # A crash after the version was created, before its alias and completion tag.
    client.delete_registered_model_alias(record.model_name, "challenger")
    client.delete_model_version_tag(
        record.model_name, version.version, "radsentry.registration_complete"
    )
    assert registry.log_and_register(record) == version
    assert len(runs_of(client, "request-1")) == 1
    assert len(client.search_model_versions(f"name = '{record.model_name}'")) == 1


def test_champion_is_never_moved_by_a_retrain(
    registry: Registry, trained: TrainResult, manifest: DatasetManifest, model_name: str
) -> None:
    first = registry.log_and_register(make_record(trained, manifest, model_name, "request-a"))
    registry.set_initial_champion(model_name, first.version)
    second = registry.log_and_register(make_record(trained, manifest, model_name, "request-b"))
    champion = registry.version_by_alias(model_name, "champion")
    challenger = registry.version_by_alias(model_name, "challenger")
    assert champion is not None and champion.version == first.version == "1"
    assert challenger is not None and challenger.version == second.version == "2"
    assert registry.champion_version(model_name) == "1"

    with pytest.raises(ValueError, match="champion"):
        registry.register(model_name, second.run_id, alias="champion", tags={})
    with pytest.raises(ValueError, match="champion"):
        registry.log_and_register(
            make_record(trained, manifest, model_name, "request-c"), alias="champion"
        )
    with pytest.raises(TrackingError, match="already has a champion"):
        registry.set_initial_champion(model_name, second.version)
    # A late retry of the first request must not take the challenger alias back.
    again = registry.log_and_register(make_record(trained, manifest, model_name, "request-a"))
    assert again.version == "1" and "challenger" not in again.aliases
    challenger = registry.version_by_alias(model_name, "challenger")
    assert challenger is not None and challenger.version == "2"


def test_mlflow_down_fails_fast_and_names_the_call(
    trained: TrainResult, manifest: DatasetManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator's MLflow settings hold outside our calls: each call scopes its own.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://operator.example:5000")
    down = Registry(f"http://127.0.0.1:{free_port()}", FAST_RETRIES)
    record = make_record(trained, manifest, "cxr-down", "request-down")
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"'search model versions' failed after 3 attempt"):
        down.log_and_register(record)
    with pytest.raises(TrackingError, match="'get or create experiment'"):
        down.log_run(record)
    assert time.monotonic() - started < 30
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://operator.example:5000"


def test_a_record_must_describe_its_own_training(
    trained: TrainResult, manifest: DatasetManifest
) -> None:
    with pytest.raises(ValueError, match="train_config"):
        RunRecord("cxr", trained, CONFIG.model_copy(update={"seed": 1}), manifest, tags={})
    record = RunRecord("cxr", trained, CONFIG, manifest, tags={}, params={"train.seed": 1})
    with pytest.raises(ValueError, match=r"redefine train\.seed"):
        run_params(record)


def test_dying_mid_registration_leaves_no_version_and_a_failed_run(
    mlflow_server: str,
    client: MlflowClient,
    trained: TrainResult,
    manifest: DatasetManifest,
    model_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = Registry(mlflow_server, FAST_RETRIES)

    def connection_lost(model: str, alias: str, version: str) -> None:
        raise TrackingError("MLflow call 'set alias' failed after 3 attempt(s): connection lost")

    monkeypatch.setattr(registry, "_set_alias", connection_lost)
    record = make_record(trained, manifest, model_name, "request-dies")
    with pytest.raises(TrackingError, match="version was removed"):
        registry.log_and_register(record)
    query = f"name = '{model_name}' and tags.`{REQUEST}` = 'request-dies'"
    assert client.search_model_versions(query) == []
    assert [run.info.status for run in runs_of(client, "request-dies")] == ["FAILED"]

    monkeypatch.undo()  # MLflow is back: the job's retry registers the version
    version = registry.log_and_register(record)
    assert version.aliases == ("challenger",)
    statuses = sorted(run.info.status for run in runs_of(client, "request-dies"))
    assert statuses == ["FAILED", "FINISHED"]


def test_the_embedded_store_keeps_everything_under_the_given_folders(
    trained: TrainResult, manifest: DatasetManifest, tmp_path: Path
) -> None:
    artifacts = tmp_path / "mlartifacts"
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", FAST_RETRIES, artifacts)
    record = make_record(trained, manifest, "cxr-embedded", "request-embedded")
    version = registry.log_and_register(record)
    assert version.version == "1" and version.aliases == ("challenger",)
    loaded = registry.load_model("cxr-embedded", version.version)
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(predict(loaded, images), predict(trained.model, images))
    assert len(list(artifacts.rglob("trained_model.pt"))) == 1
    assert len(list(artifacts.rglob("MLmodel"))) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db"]


def test_known_directions_are_stored_beside_the_projection_and_read_by_the_engine_source(
    registry: Registry, registered: tuple[RunRecord, RegisteredVersion]
) -> None:
    record, version = registered
    name, number = record.model_name, version.version
    assert (
        registry.load_directions(name, number) is None
    )  # none logged: explanations name components
    projection = registry.load_projection(name, number)
    generator = torch.Generator().manual_seed(4)
    upright = torch.rand(24, 1, 16, 16, generator=generator) * 0.5
    brighter = upright + 0.4  # a stand-in for a content shift: the model's features move
    trained_model = registry.load_model(name, number)
    direction = fit_direction_on_images(
        trained_model, projection, "brighter", "towards brighter images", upright, brighter
    )
    assert len(direction.vector) == projection.dimensions
    stored = direction_set(projection, [direction])
    registry.log_directions(name, number, stored)
    assert registry.load_directions(name, number) == stored

    other = stored.model_copy(update={"projection_fingerprint": "0" * 64})
    with pytest.raises(EmbeddingError, match="another projection"):
        registry.log_directions(name, number, other)

    source = RegistryDirections(lambda: registry)
    key = StreamKey("site-01", name, number)
    assert source(key, projection.embedding_id(name, number)) == (direction,)
    assert source(key, f"{name}@{number}/pca4-ffffffffffff") == ()  # another projection's


def test_artifact_progress_bars_are_off_unless_the_operator_turns_them_on() -> None:
    """`radsentry simulate` (and every job that loads a model) printed MLflow's "Downloading
    artifacts" bars into its output; the demo alone had turned them off. The tracking module
    now does it for every process that can download, leaving an explicit setting alone."""
    probe = [
        sys.executable,
        "-c",
        "import os, retrain.tracking; print(os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'])",
    ]
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    unset = subprocess.run(probe, env=base, capture_output=True, text=True, timeout=120)
    chosen = subprocess.run(
        probe,
        env=base | {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (unset.stdout.strip(), chosen.stdout.strip()) == ("false", "true"), unset.stderr
