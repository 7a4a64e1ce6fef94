"""MLflow tracking and the model registry: runs, registered versions and their aliases.

:meth:`Registry.log_and_register` logs a training run (:mod:`retrain.tracking_content` says
what it contains) and registers its model as a new version carrying the ``challenger`` alias
and the lineage tags. The ``champion`` alias is never moved here: only the PCCP promotion does
that (and :meth:`Registry.set_initial_champion`, once, to bootstrap a model).

**Failures.** Every MLflow call is retried, then fails as :class:`TrackingError` naming the
call (:mod:`retrain.mlflow_calls`). A registration that fails after its version was created
deletes the version, and a run whose logging or registration failed is marked FAILED.

**Idempotency.** ``log_and_register`` is idempotent per ``radsentry.request_id``. A version is
complete once it carries :data:`COMPLETE_TAG` (set after its alias): a retried job finds it
and registers nothing, and finishes a version that a crash left without its alias. The marker,
rather than the alias, says "done" because a later request may since have moved the alias on,
and a retry of this one must not move it back.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import mlflow
import structlog
import torch
from mlflow.entities import Param
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from monitor.drift.directions import DirectionSet
from retrain import tracking_content as content
from retrain.config import MlflowConfig
from retrain.dataset import DatasetManifest
from retrain.embedding import EmbeddingError, Projection
from retrain.mlflow_calls import MlflowCalls, TrackingError
from retrain.mlflow_names import (
    CHALLENGER,
    CHAMPION,
    COMPLETE_TAG,
    DATASET_TAG,
    MODEL_ID_TAG,
    REQUEST_TAG,
    RUN_TAG,
)
from retrain.model import TrainedModel
from retrain.tracking_content import RunRecord

# MLflow draws a progress bar for every artifact download: in a service's log, a job's log and
# the CLI's output that is noise (the demo's instructions scrolled away under them). Off
# unless the operator sets the variable.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__all__ = ["RegisteredVersion", "Registry", "RunRecord", "TrackingError"]

log = structlog.get_logger(__name__)

MANIFEST_ARTIFACT: Final = "dataset/manifest.json"
BUNDLE_ARTIFACT: Final = "bundle/trained_model.pt"
PROJECTION_ARTIFACT: Final = "projection/projection.json"
DIRECTIONS_ARTIFACT: Final = "projection/directions.json"
_MLFLOW_MODEL_NAME: Final = "model"
_ALREADY_EXISTS: Final = "RESOURCE_ALREADY_EXISTS"
_NOT_FOUND: Final = "RESOURCE_DOES_NOT_EXIST"
T = TypeVar("T")


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model, as the registry holds it now."""

    model_name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    tags: Mapping[str, str]


class Registry:
    """Runs and registered models in one MLflow tracking store (a server, or SQLite)."""

    def __init__(
        self,
        tracking_uri: str,
        config: MlflowConfig = MlflowConfig(),  # noqa: B008 (frozen pydantic model)
        artifact_location: Path | None = None,
    ) -> None:
        """``artifact_location``: where a new experiment keeps its artifacts (the embedded
        store's folder under data_dir; None for a server, which decides)."""
        self._call = MlflowCalls(tracking_uri, config)
        self._client = self._call.client
        self._experiment_name = config.experiment
        self._artifact_location = artifact_location
        self._experiment: str | None = None

    def log_run(self, record: RunRecord) -> str:
        """Log one training run and return its id; a run that fails is marked FAILED."""
        experiment_id = self._experiment_id()
        name = f"{record.model_name}-{record.tags.get(REQUEST_TAG, 'manual')}"
        tags = content.run_tags(record, content.git_commit())
        run = self._call(
            "create run", self._client.create_run, experiment_id, tags=tags, run_name=name
        )
        run_id = str(run.info.run_id)
        try:
            self._log_content(experiment_id, run_id, record)
            self._call("finish run", self._client.set_terminated, run_id, "FINISHED")
        except Exception:  # whatever broke, the run must not stay RUNNING
            self._mark_failed(run_id)
            raise
        log.info("run logged", model=record.model_name, run_id=run_id)
        return run_id

    def register(
        self, model_name: str, run_id: str, *, alias: str, tags: Mapping[str, str]
    ) -> RegisteredVersion:
        """Register the model logged by ``run_id`` as a new version, tag it, give it ``alias``.

        Registering the same run again returns its version (with ``alias`` set again).
        """
        _refuse_champion(alias)
        run = self._call("get run", self._client.get_run, run_id)
        model_id = run.data.tags.get(MODEL_ID_TAG)
        if model_id is None:
            raise TrackingError(f"run {run_id} has no logged model: log it with log_run first")
        version_tags = {**tags, RUN_TAG: run_id}
        if dataset := run.data.tags.get(DATASET_TAG):
            version_tags[DATASET_TAG] = dataset
        self._call("create registered model", self._ensure_registered_model, model_name)
        version = self._call(
            "create model version", self._version_of_run, model_name, run_id, model_id, version_tags
        )
        return self._complete(model_name, version, alias)

    def log_and_register(self, record: RunRecord, *, alias: str = CHALLENGER) -> RegisteredVersion:
        """Log the run and register its model, once per ``radsentry.request_id`` tag.

        A complete version for the request is returned as it is (no second run, and an alias
        that has since moved on is not moved back); one left incomplete by a crash is finished.
        """
        _refuse_champion(alias)
        request_id = record.tags.get(REQUEST_TAG)
        if not request_id:
            raise ValueError(f"record.tags needs {REQUEST_TAG}: it makes the call idempotent")
        found = self.find_version(record.model_name, tag=REQUEST_TAG, value=request_id)
        if found is not None and found.tags.get(COMPLETE_TAG) == "true":
            log.info("already registered", model=found.model_name, version=found.version)
            return found
        run_id = found.run_id if found is not None else self.log_run(record)
        try:
            if found is not None:
                log.warning("finishing an interrupted registration", version=found.version)
                return self._complete(found.model_name, found.version, alias)
            return self.register(record.model_name, run_id, alias=alias, tags=record.tags)
        except TrackingError:
            self._mark_failed(run_id)
            raise

    def find_version(self, model_name: str, *, tag: str, value: str) -> RegisteredVersion | None:
        """The newest version of ``model_name`` whose ``tag`` is ``value``, or None."""
        if any(q in text for text in (model_name, tag, value) for q in "'`"):
            raise ValueError("names, tags and values in a registry search may not contain quotes")
        query = f"name = '{model_name}' and tags.`{tag}` = '{value}'"
        found = self._call("search model versions", self._client.search_model_versions, query)
        if not found:
            return None
        if len(found) > 1:
            log.warning("several versions share a tag", model=model_name, tag=tag, value=value)
        # Searches leave the aliases out: read the version itself.
        return self._version(model_name, max(found, key=lambda v: int(v.version)).version)

    def version_by_alias(self, model_name: str, alias: str) -> RegisteredVersion | None:
        """The version carrying ``alias``, or None (no such alias, or no such model)."""
        registered = self._registered_model(model_name)
        if registered is None or alias not in registered.aliases:
            return None
        return self._version(model_name, str(registered.aliases[alias]))

    def version(self, model_name: str, version: str) -> RegisteredVersion:
        """One version with its aliases and tags (TrackingError if there is none)."""
        return self._version(model_name, version)

    def load_model(self, model_name: str, version: str) -> TrainedModel:
        """The bundle logged by the version's run (read with ``weights_only``: no unpickling)."""
        run_id = self._version(model_name, version).run_id
        with tempfile.TemporaryDirectory(prefix="radsentry-bundle-") as folder:
            path = self._call(
                "download model bundle",
                mlflow.artifacts.download_artifacts,
                run_id=run_id,
                artifact_path=BUNDLE_ARTIFACT,
                dst_path=folder,
                tracking_uri=self._call.uri,
            )
            return TrainedModel.load(Path(path))

    def training_manifest(self, model_name: str, version: str) -> DatasetManifest | None:
        """The data set manifest the version's run logged (``dataset/manifest.json``): which
        studies it trained and validated on. None when the run logged none; TrackingError when
        it is listed but cannot be read (MLflow down after the retries: the job tries again
        later, instead of failing as if there were none) or does not match the version's
        ``radsentry.dataset_sha256``."""
        registered = self._version(model_name, version)
        folder = str(Path(MANIFEST_ARTIFACT).parent)
        listed = self._call(
            "list artifacts", self._client.list_artifacts, registered.run_id, folder
        )
        if not any(item.path == MANIFEST_ARTIFACT for item in listed):
            return None
        stored = self._artifact_bytes(registered.run_id, MANIFEST_ARTIFACT)
        if stored is None:
            raise TrackingError(
                f"{model_name} version {version}: its training manifest is listed but could "
                "not be downloaded"
            )
        manifest = DatasetManifest.model_validate_json(stored)
        recorded = registered.tags.get(DATASET_TAG)
        if recorded is None or manifest.sha256() != recorded:
            raise TrackingError(
                f"{model_name} version {version}: the stored training manifest does not match "
                f"its {DATASET_TAG} tag ({(recorded or 'missing')[:12]}): it has been altered"
            )
        return manifest

    def log_projection(self, model_name: str, version: str, projection: Projection) -> None:
        """Store ``projection`` with a registered version (for versions trained before
        training fitted one; ``log_run`` stores it with every new run). Logging it again
        replaces it."""
        run_id = self._version(model_name, version).run_id
        self._log_projection(run_id, projection)

    def load_projection(self, model_name: str, version: str) -> Projection:
        """The embedding projection stored with the version (TrackingError if it has none)."""
        stored = self._artifact_bytes(
            self._version(model_name, version).run_id, PROJECTION_ARTIFACT
        )
        if stored is None:
            raise TrackingError(
                f"{model_name} version {version} has no embedding projection; fit one with "
                "retrain.embedding.fit_projection_on_images and Registry.log_projection"
            )
        return Projection.from_json(stored)

    def log_directions(self, model_name: str, version: str, directions: DirectionSet) -> None:
        """Store known directions beside the version's projection (replacing any stored).

        Raises EmbeddingError when they were fitted in another projection (fingerprint or
        dimension), TrackingError when the version has no projection."""
        projection = self.load_projection(model_name, version)
        if directions.projection_fingerprint != projection.fingerprint():
            raise EmbeddingError("the directions were fitted in another projection")
        if any(len(d.vector) != projection.dimensions for d in directions.directions):
            raise EmbeddingError(f"directions must have the projection's {projection.dimensions}")
        run_id = self._version(model_name, version).run_id
        with tempfile.TemporaryDirectory(prefix="radsentry-directions-") as folder:
            path = Path(folder, Path(DIRECTIONS_ARTIFACT).name)
            path.write_bytes(directions.to_json())
            directory = str(Path(DIRECTIONS_ARTIFACT).parent)
            self._call("log directions", self._client.log_artifact, run_id, path, directory)

    def load_directions(self, model_name: str, version: str) -> DirectionSet | None:
        """The known directions stored with the version; None when it has none (versions
        registered before directions existed, or without examples)."""
        stored = self._artifact_bytes(
            self._version(model_name, version).run_id, DIRECTIONS_ARTIFACT
        )
        return None if stored is None else DirectionSet.from_json(stored)

    def _artifact_bytes(self, run_id: str, artifact: str) -> bytes | None:
        """One artifact file of a version's run; None when the run has none."""
        with tempfile.TemporaryDirectory(prefix="radsentry-artifact-") as folder:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=artifact,
                    dst_path=folder,
                    tracking_uri=self._call.uri,
                )
            except (MlflowException, OSError):
                return None
            return Path(path).read_bytes()

    def set_initial_champion(self, model_name: str, version: str) -> None:
        """Bootstrap only: make ``version`` the champion of a model that has none yet."""
        registered = self._registered_model(model_name)
        if registered is None:
            raise TrackingError(f"there is no registered model {model_name!r}")
        if CHAMPION in registered.aliases:
            current = registered.aliases[CHAMPION]
            raise TrackingError(
                f"{model_name} already has a champion (version {current}); "
                "only a PCCP promotion moves it"
            )
        self._version(model_name, version)  # a missing version fails here, not half-way
        self._set_alias(model_name, CHAMPION, version)
        log.info("initial champion set", model=model_name, version=version)

    def champion_version(self, model_name: str) -> str | None:
        """The version ``champion`` points at now, or None: what a promotion checks its gate
        against and a rollback its ``expected_version`` against."""
        found = self.version_by_alias(model_name, CHAMPION)
        return None if found is None else found.version

    def move_champion(self, model_name: str, version: str) -> str | None:
        """Point ``champion`` at ``version`` and return the version it pointed at (None if none).

        Only a PCCP promotion or rollback calls this (``monitor.service.pccp.champion``), after
        its checks and under the model's lock; moving the alias again is harmless.
        """
        registered = self._registered_model(model_name)
        if registered is None:
            raise TrackingError(f"there is no registered model {model_name!r}")
        self._version(model_name, version)  # a missing version fails before anything moves
        previous = registered.aliases.get(CHAMPION)
        self._set_alias(model_name, CHAMPION, version)
        log.info("champion moved", model=model_name, version=version, previous=previous)
        return str(previous) if previous is not None else None

    def attach_evidence(
        self, model_name: str, version: str, files: Mapping[str, bytes], tags: Mapping[str, str]
    ) -> str:
        """Log ``files`` under ``evidence/`` of the version's run, tag the version with
        ``tags``, and return the URI of the folder (where the gate report now lives)."""
        run_id = self._version(model_name, version).run_id
        with tempfile.TemporaryDirectory(prefix="radsentry-evidence-") as folder:
            for name, data in files.items():
                path = Path(folder, name)
                path.write_bytes(data)
                self._call(
                    f"log evidence {name}", self._client.log_artifact, run_id, path, "evidence"
                )
        for key, value in tags.items():
            self._call(
                "tag model version",
                self._client.set_model_version_tag,
                model_name,
                version,
                key,
                value,
            )
        run = self._call("get run", self._client.get_run, run_id)
        return f"{run.info.artifact_uri}/evidence"

    # -- registration steps ------------------------------------------------------------------

    def _complete(self, model_name: str, version: str, alias: str) -> RegisteredVersion:
        """Alias, then the completion tag; on failure remove the version (no half-registration)."""
        try:
            self._set_alias(model_name, alias, version)
            self._call(
                "tag model version",
                self._client.set_model_version_tag,
                model_name,
                version,
                COMPLETE_TAG,
                "true",
            )
        except Exception as exc:  # the version must not stay half-registered, whatever broke
            outcome = "removed" if self._delete_version(model_name, version) else "NOT removed"
            raise TrackingError(
                f"registering {model_name} version {version} failed and the version was "
                f"{outcome}: {exc}"
            ) from exc
        registered = self._version(model_name, version)
        log.info("version registered", model=model_name, version=version, alias=alias)
        return registered

    def _set_alias(self, model_name: str, alias: str, version: str) -> None:
        self._call("set alias", self._client.set_registered_model_alias, model_name, alias, version)

    def _delete_version(self, model_name: str, version: str) -> bool:
        try:
            self._call(
                "delete model version", self._client.delete_model_version, model_name, version
            )
        except TrackingError as exc:
            log.error("half-registered version left behind", version=version, error=str(exc))
            return False
        return True

    def _mark_failed(self, run_id: str) -> None:
        try:
            self._call("fail run", self._client.set_terminated, run_id, "FAILED")
        except TrackingError as exc:
            log.error("run not marked FAILED", run_id=run_id, error=str(exc))

    def _ensure_registered_model(self, model_name: str) -> None:
        try:
            self._client.create_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code != _ALREADY_EXISTS:
                raise

    def _version_of_run(
        self, model_name: str, run_id: str, model_id: str, tags: Mapping[str, str]
    ) -> str:
        """The run's version, created unless a version of the run exists.

        Checking first makes a retry after a lost response reuse the version it created.
        """
        query = f"name = '{model_name}' and run_id = '{run_id}'"
        if existing := self._client.search_model_versions(query):
            return str(max(int(v.version) for v in existing))
        created = self._client.create_model_version(
            model_name,
            source=f"models:/{model_id}",
            run_id=run_id,
            tags=dict(tags),
            model_id=model_id,
            await_creation_for=0,  # MLflow's own registry creates versions READY at once
        )
        return str(created.version)

    # -- run content -------------------------------------------------------------------------

    def _log_content(self, experiment_id: str, run_id: str, record: RunRecord) -> None:
        params = [Param(k, v) for k, v in content.run_params(record).items()]
        for some_params in _chunks(params, 100):  # MLflow's limits per log_batch call
            self._call("log parameters", self._client.log_batch, run_id, params=some_params)
        metrics = content.run_metrics(record, int(time.time() * 1000))
        for some_metrics in _chunks(metrics, 1000):
            self._call("log metrics", self._client.log_batch, run_id, metrics=some_metrics)
        with tempfile.TemporaryDirectory(prefix="radsentry-run-") as folder:
            manifest = Path(folder, Path(MANIFEST_ARTIFACT).name)
            manifest.write_bytes(record.manifest.canonical_json())
            bundle = Path(folder, Path(BUNDLE_ARTIFACT).name)
            record.result.model.save(bundle)
            for path, artifact in ((manifest, MANIFEST_ARTIFACT), (bundle, BUNDLE_ARTIFACT)):
                directory = str(Path(artifact).parent)
                self._call(f"log {artifact}", self._client.log_artifact, run_id, path, directory)
        if record.result.projection is not None:
            self._log_projection(run_id, record.result.projection)
        model_id = self._call(
            "log MLflow model", self._log_mlflow_model, experiment_id, run_id, record
        )
        self._call("tag run", self._client.set_tag, run_id, MODEL_ID_TAG, model_id)

    def _log_projection(self, run_id: str, projection: Projection) -> None:
        with tempfile.TemporaryDirectory(prefix="radsentry-projection-") as folder:
            path = Path(folder, Path(PROJECTION_ARTIFACT).name)
            path.write_bytes(projection.to_json())
            directory = str(Path(PROJECTION_ARTIFACT).parent)
            self._call("log projection", self._client.log_artifact, run_id, path, directory)

    def _log_mlflow_model(self, experiment_id: str, run_id: str, record: RunRecord) -> str:
        """The PyTorch-flavour model (pt2: a traced graph, loadable without unpickling)."""
        # Created here so it lands in the run's experiment: log_model alone would use the
        # process's active experiment.
        logged = self._client.create_logged_model(
            experiment_id, name=_MLFLOW_MODEL_NAME, source_run_id=run_id
        )
        spec = record.result.model.spec
        mlflow.pytorch.log_model(
            content.CalibratedModel(record.result.model),
            name=_MLFLOW_MODEL_NAME,
            model_id=logged.model_id,
            run_id=run_id,
            signature=content.model_signature(spec),
            input_example=content.example_images(spec),
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__}"],  # skips seconds of inference
        )
        return str(logged.model_id)

    # -- MLflow access -----------------------------------------------------------------------

    def _experiment_id(self) -> str:
        if self._experiment is None:
            self._experiment = self._call(
                "get or create experiment", self._get_or_create_experiment
            )
        return self._experiment

    def _get_or_create_experiment(self) -> str:
        name = self._experiment_name
        if (experiment := self._client.get_experiment_by_name(name)) is None:
            location = self._artifact_location
            uri = location.resolve().as_uri() if location else None
            try:
                return self._client.create_experiment(name, artifact_location=uri)
            except MlflowException as exc:  # created meanwhile (another process, a lost reply)
                if exc.error_code != _ALREADY_EXISTS:
                    raise
                experiment = self._client.get_experiment_by_name(name)
        if experiment is None or experiment.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment {name!r} is deleted or unreadable: restore it, or "
                "configure another experiment name"
            )
        return str(experiment.experiment_id)

    def _registered_model(self, model_name: str) -> RegisteredModel | None:
        def fetch() -> RegisteredModel | None:
            try:
                return self._client.get_registered_model(model_name)
            except MlflowException as exc:
                if exc.error_code == _NOT_FOUND:
                    return None
                raise

        return self._call("get registered model", fetch)

    def _version(self, model_name: str, version: str) -> RegisteredVersion:
        found = self._call("get model version", self._client.get_model_version, model_name, version)
        return _registered_version(found)


def _refuse_champion(alias: str) -> None:
    if alias == CHAMPION:
        raise ValueError("the champion alias is only moved by a PCCP promotion")


def _registered_version(found: ModelVersion) -> RegisteredVersion:
    return RegisteredVersion(
        model_name=str(found.name),
        version=str(found.version),
        run_id=str(found.run_id),
        aliases=tuple(str(alias) for alias in found.aliases),
        tags={str(k): str(v) for k, v in found.tags.items()},
    )


def _chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
