"""The initial model, v1: its development cohort, its training and its held-out evaluation.

Before deployment, v1 is developed on studies from ``sites`` academic centres, each scanning on
its catalogue room (``monitor.simulate.profiles.default_profile``). The cohort is rendered by
the simulator itself (``monitor.simulate.simulate`` with every study labelled), so its images
go through exactly the rendering, writing and decoding that deployment studies do; only the
seed and the master key differ, so no cohort study shares an image or a study key with a
simulated deployment run (see :func:`cohort_simulation`).

``train_initial`` then reads each image once (``retrain.data.tensors_for``), splits and
describes the data set as the retraining job does (``retrain.dataset.assemble``: study-level
split, manifest with content hashes), trains (``retrain.train.train``) and evaluates the model
on a held-out part of the cohort. Registration and tracking are the caller's (no MLflow here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import AwareDatetime, Field, model_validator
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

from monitor.drift.base import DetectorConfig
from monitor.events import Identifier, InferenceEvent, LabelEvent
from monitor.simulate import FINDING, SimulationConfig, simulate
from retrain.config import TrainConfig
from retrain.data import load_dataset, tensors_for
from retrain.dataset import DatasetManifest, LabelledCase, LockedTestSet
from retrain.images import DicomWebSource
from retrain.model import ModelSpec, TrainedModel, predict
from retrain.train import TrainingStopped, TrainResult, train

COHORT_MASTER_KEY: Final = b"radsentry-initial-cohort-master-key"
"""Keys the cohort's study pseudonyms; differs from ``monitor.simulate.DEFAULT_MASTER_KEY``."""
COHORT_SEED_BASE: Final = 2**40
"""Cohort simulations use seeds from here up; simulator runs with smaller seeds share no image."""
COHORT_MODEL_VERSION: Final = "0.0.0-cohort"
"""``model_version`` of the (discarded) score-model events of a cohort simulation."""

CohortPart = Literal["development", "test", "degraded"]
"""development: train + validation; test: held out, same rooms; degraded: the degraded room
(the portable AP reader, ``monitor.simulate.DEGRADED``)."""
_PARTS: Final[tuple[CohortPart, ...]] = ("development", "test", "degraded")


class InitialConfig(DetectorConfig):
    """How v1 is developed: its cohort, its family and its training (frozen, fingerprinted)."""

    seed: int = Field(0, ge=0, lt=COHORT_SEED_BASE)
    """Seeds the cohort's studies, the train/validation split and training."""
    sites: int = Field(3, ge=1, le=99)
    studies_per_site: int = Field(500, ge=2)
    """Development studies per site (train + validation)."""
    test_studies_per_site: int = Field(100, ge=0)
    """Held-out studies per site, never trained or validated on."""
    portable_test_studies: int = Field(100, ge=0)
    """Held-out AP studies from the cohort's portable reader (the "degraded" part, at site-01),
    never trained or validated on. The intended use is "PA or AP", so the shipped plan's locked
    test set holds them beside the catalogue rooms' PA studies (plan 1.3.0); v1 itself is
    developed on PA alone, and its held-out evaluation (``test``) is the catalogue rooms'."""
    prevalence: float = Field(0.3, gt=0.0, lt=1.0)
    render_size: int = Field(256, ge=64, le=2048)
    """Rows = columns of the rendered DICOM images (the model sees ``spec.input_size``)."""
    validation_share: float = Field(0.2, gt=0.0, lt=1.0)
    start: AwareDatetime = datetime(2024, 1, 1, tzinfo=UTC)
    """Event time of the cohort's first study (before any simulated deployment)."""
    model_name: Identifier = "cxr-lesion"
    spec: ModelSpec = ModelSpec(pooling="avg")
    """Average pooling: with max pooling, training waits a random 1 to 20+ epochs before it
    finds the lesions at all (docs/simulate.md)."""
    train: TrainConfig = TrainConfig(
        max_epochs=30, patience=8, learning_rate=3e-3, monitor_from_epoch=10
    )
    """Early stopping watches from epoch 10: v1's validation AUROC climbs from about 0.58 to
    0.88 over its first 7-10 epochs while its validation loss jumps, and on other arithmetic
    (an AVX2 CPU, emulated) a loss minimum at epoch 3 ended training at epoch 11 with a held-out
    AUROC of 0.683 instead of 0.944 (docs/benchmarks.md, "v1 on other arithmetic")."""
    image_workers: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _labels_fit_the_spec(self) -> InitialConfig:
        if self.spec.findings != (FINDING,):
            raise ValueError(f"the cohort is labelled for {FINDING!r} alone; spec.findings differ")
        return self


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A model's discrimination of ``FINDING`` on labelled cases, overall and per site."""

    cases: int
    positives: int
    auroc: float | None
    """None when the cases lack positives or negatives (as are the per-site values)."""
    sensitivity: float | None
    """At the model's operating threshold (positive if probability >= threshold)."""
    specificity: float | None
    auroc_by_site: Mapping[str, float | None]

    def metrics(self, prefix: str) -> dict[str, float]:
        """The defined values as flat ``{prefix}_auroc``, ``{prefix}_auroc_site-01``, ... ."""
        values: dict[str, float | None] = {
            f"{prefix}_cases": float(self.cases),
            f"{prefix}_positives": float(self.positives),
            f"{prefix}_auroc": self.auroc,
            f"{prefix}_sensitivity": self.sensitivity,
            f"{prefix}_specificity": self.specificity,
        }
        values |= {f"{prefix}_auroc_{site}": v for site, v in sorted(self.auroc_by_site.items())}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class InitialModel:
    """v1 as trained: what the caller logs and registers."""

    result: TrainResult
    manifest: DatasetManifest
    """The development data set (``manifest.sha256()`` identifies it)."""
    test: Evaluation | None
    """On the held-out cases; None without any."""
    config_fingerprint: str

    @property
    def model(self) -> TrainedModel:
        """The trained bundle."""
        return self.result.model


def cohort_simulation(
    config: InitialConfig, part: CohortPart = "development", studies_per_site: int | None = None
) -> SimulationConfig:
    """The simulator run that renders one part of the cohort.

    Each part has its own seed, ``COHORT_SEED_BASE * (1 + part number) + seed``, so parts share
    no study; every study is labelled. "degraded" is one site scanning on
    ``monitor.simulate.DEGRADED`` from its first study, ``sites x test_studies_per_site``
    studies by default.
    """
    number = _PARTS.index(part)
    changed = part == "degraded"
    if studies_per_site is None:
        per_site = (
            config.studies_per_site if part == "development" else config.test_studies_per_site
        )
        studies_per_site = per_site * config.sites if changed else per_site
    return SimulationConfig(
        seed=COHORT_SEED_BASE * (1 + number) + config.seed,
        start=config.start,
        sites=1 if changed else config.sites,
        studies_per_site=studies_per_site,
        prevalence=config.prevalence,
        label_rate=1.0,
        image_size=config.render_size,
        model_name=config.model_name,
        model_version=COHORT_MODEL_VERSION,
        change_site="site-01" if changed else None,
        change_at_index=0 if changed else None,
        master_key=COHORT_MASTER_KEY,
    )


def render_cohort(
    config: InitialConfig,
    out_dir: Path,
    part: CohortPart = "development",
    *,
    studies_per_site: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[LabelledCase, ...]:
    """Render one part of the cohort under ``out_dir/<site_id>/<study_key>.dcm``.

    Returns one labelled case per study, in acquisition order, with ``file://`` URIs.
    ``should_stop`` is asked after every study; when it answers True, :class:`TrainingStopped`
    is raised (the studies rendered so far stay: a rerun renders them again, identically).
    """
    simulation = cohort_simulation(config, part, studies_per_site)
    predictions: dict[str, InferenceEvent] = {}
    cases: dict[str, LabelledCase] = {}
    for event in simulate(simulation, out_dir):
        if should_stop is not None and should_stop():
            raise TrainingStopped(0, config.train.max_epochs)
        if isinstance(event, InferenceEvent):
            predictions[event.study_key] = event
        else:
            cases[event.study_key] = _case(predictions[event.study_key], event)
    return tuple(cases[key] for key in predictions)


def _case(inference: InferenceEvent, label: LabelEvent) -> LabelledCase:
    return LabelledCase(
        study_key=inference.study_key,
        site_id=inference.site_id,
        model_name=inference.model_name,
        labels=dict(label.labels),
        label_source=label.source,
        predicted_at=inference.occurred_at,
        labelled_at=label.occurred_at,
        dicom_uri=inference.dicom_uri,
    )


def train_initial(
    config: InitialConfig,
    cases: Sequence[LabelledCase],
    workdir: Path,
    *,
    test_cases: Sequence[LabelledCase] = (),
    locked: LockedTestSet | None = None,
    progress: bool = False,
    dicomweb: DicomWebSource | None = None,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> InitialModel:
    """Train v1 on ``cases`` (split as the retraining job splits) and evaluate it on ``test_cases``.

    ``locked`` is the PCCP locked test set (empty by default); a case in it is an error
    (``LockedTestOverlapError``). Checkpoints go to ``workdir / "checkpoints"``; ``resume``
    continues from one there (``workdir`` must then be this config's and these cases' own).
    ``should_stop``: as for ``retrain.train.train`` (:class:`TrainingStopped`).
    """
    spec = config.spec
    data = load_dataset(
        cases,
        locked if locked is not None else LockedTestSet.from_keys([]),
        spec.findings,
        spec.input_size,
        seed=config.seed,
        validation_share=config.validation_share,
        workers=config.image_workers,
        dicomweb=dicomweb,
    )
    result = train(
        spec,
        config.train,
        data.train_side(),
        data.validation_side(),
        checkpoint_dir=workdir / "checkpoints",
        progress=progress,
        resume=resume,
        should_stop=should_stop,
    )
    test = (
        evaluate(result.model, test_cases, workers=config.image_workers, dicomweb=dicomweb)
        if test_cases
        else None
    )
    return InitialModel(result, data.dataset.manifest, test, config.fingerprint())


def evaluate(
    model: TrainedModel,
    cases: Sequence[LabelledCase],
    *,
    workers: int = 4,
    dicomweb: DicomWebSource | None = None,
) -> Evaluation:
    """AUROC, sensitivity and specificity of ``FINDING`` on ``cases``, overall and per site."""
    spec = model.spec
    tensors = tensors_for(cases, (FINDING,), spec.input_size, workers=workers, dicomweb=dicomweb)
    column = spec.findings.index(FINDING)
    scores = predict(model, tensors.images)[:, column]
    truth = tensors.labels[:, 0].numpy().astype(bool)
    predicted = scores >= model.thresholds[column]
    sites = np.array([case.site_id for case in cases])
    return Evaluation(
        cases=len(cases),
        positives=int(truth.sum()),
        auroc=_auroc(truth, scores),
        sensitivity=float(predicted[truth].mean()) if truth.any() else None,
        specificity=float((~predicted[~truth]).mean()) if (~truth).any() else None,
        auroc_by_site={
            site: _auroc(truth[sites == site], scores[sites == site])
            for site in sorted(set(sites.tolist()))
        },
    )


def _auroc(truth: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]) -> float | None:
    if truth.all() or not truth.any():
        return None
    return float(roc_auc_score(truth, scores))
