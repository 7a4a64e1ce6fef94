"""Feature-level event streams: inference events without rendering images (fast, seeded).

The image simulator (:func:`monitor.simulate.simulate`) renders and decodes real DICOM files,
about a millisecond per study. Drift tests, the backtest benchmark (a million events) and the
end-to-end throughput benchmark need many events and only what the detectors see, so this module
draws the features directly: correlated Gaussian pixel statistics, scanner header values from
:mod:`monitor.simulate.profiles`, age band and sex, and a score per finding. ``change_at``
switches a stream to a shifted distribution, for detection tests.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypedDict

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from monitor.events import (
    AGE_BANDS,
    DicomMetadata,
    InferenceEvent,
    LabelEvent,
    LabelSource,
    Prediction,
)
from monitor.pixel_names import PIXEL_STAT_NAMES
from monitor.simulate.profiles import DEGRADED, ScannerProfile, default_profile

_EVENT_NAMESPACE = uuid.UUID("7d1f4a3e-9b1c-4e0b-8f55-2f8e6f3d9a20")
_LABEL_NAMESPACE = uuid.UUID("c2a9e0d4-51b7-4f6e-9a1d-6e3b8f0c7d15")
_FINDINGS = ("lesion", "effusion")


class SimulatedStream(Protocol):
    """What a simulated stream's config says about where and when its events happen."""

    @property
    def site_id(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def start(self) -> datetime: ...
    @property
    def interval(self) -> timedelta: ...


class EventIdentity(TypedDict):
    event_id: uuid.UUID
    site_id: str
    model_name: str
    model_version: str
    occurred_at: datetime
    study_key: str


def event_identity(namespace: uuid.UUID, stream: SimulatedStream, index: int) -> EventIdentity:
    """The identity of a simulated stream's ``index``-th event: a deterministic event id (one
    namespace per simulator, so two simulators never share an id), the stream's site and model,
    its time on the stream's regular clock, and a study key that is a hash, as the edge's is."""
    event_id = uuid.uuid5(namespace, f"{stream.site_id}|{stream.seed}|{index}")
    return EventIdentity(
        event_id=event_id,
        site_id=stream.site_id,
        model_name=stream.model_name,
        model_version=stream.model_version,
        occurred_at=stream.start + index * stream.interval,
        study_key=hashlib.sha256(event_id.bytes).hexdigest(),
    )


class FeatureStreamConfig(BaseModel):
    """One site's stream; equal configs give identical events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: str = "site-01"
    model_name: str = "cxr-lesion"
    model_version: str = "1.0.0"
    n_events: int = Field(1000, ge=0)
    seed: int = 0
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    interval: timedelta = timedelta(minutes=10)
    change_at: int | None = Field(None, ge=0)
    """Index of the first event drawn from the changed distribution."""
    change_until: int | None = Field(None, ge=0)
    """Index of the first event back on the original distribution (None: the change stays)."""
    pixel_shift_sd: float = 0.0
    """After the change: every pixel statistic moves by this many standard deviations."""
    score_shift: float = 0.0
    """After the change: added to every score's logit."""
    degraded_scanner: bool = False
    """After the change: header values come from the degraded portable reader."""


def feature_stream(config: FeatureStreamConfig) -> Iterator[InferenceEvent]:
    """The events of ``config``, in event-time order."""
    digest = hashlib.sha256(f"{config.site_id}|{config.seed}".encode()).digest()
    rng = np.random.default_rng([config.seed, int.from_bytes(digest[:8], "little")])
    mixing = pixel_mixing(rng)
    before = default_profile(config.site_id)
    for index in range(config.n_events):
        changed = (
            config.change_at is not None
            and index >= config.change_at
            and (config.change_until is None or index < config.change_until)
        )
        profile = DEGRADED if changed and config.degraded_scanner else before
        shift = config.pixel_shift_sd if changed else 0.0
        score_shift = config.score_shift if changed else 0.0
        yield _event(config, index, rng, mixing, profile, shift, score_shift)


def pixel_mixing(rng: np.random.Generator) -> NDArray[np.float64]:
    """A fixed correlation structure: pixel statistics of one image move together.

    ``pixel_mixing(rng) @ standard_normal(20)`` is one image's statistics; also used by
    :mod:`monitor.simulate.realistic`.
    """
    n = len(PIXEL_STAT_NAMES)
    factors = rng.normal(size=(n, 3))
    covariance = factors @ factors.T + np.eye(n)
    scale = np.sqrt(np.diag(covariance))
    return np.linalg.cholesky(covariance / np.outer(scale, scale))


def _event(
    config: FeatureStreamConfig,
    index: int,
    rng: np.random.Generator,
    mixing: NDArray[np.float64],
    profile: ScannerProfile,
    pixel_shift: float,
    score_shift: float,
) -> InferenceEvent:
    pixels = mixing @ rng.normal(size=len(PIXEL_STAT_NAMES)) + pixel_shift
    logits = rng.normal(-1.5, 1.0, size=len(_FINDINGS)) + score_shift
    scores = 1.0 / (1.0 + np.exp(-logits))
    return InferenceEvent(
        **event_identity(_EVENT_NAMESPACE, config, index),
        modality=profile.modality,
        metadata=DicomMetadata(
            Modality=profile.modality,
            Manufacturer=profile.manufacturer,
            ManufacturerModelName=profile.model_name,
            KVP=float(profile.kvp + rng.normal(0, 2)),
            Exposure=float(profile.exposure_mas * rng.lognormal(0, 0.2)),
            XRayTubeCurrent=float(profile.tube_current_ma),
            PixelSpacing=[profile.pixel_spacing_mm, profile.pixel_spacing_mm],
            BitsStored=float(profile.bits_stored),
            ViewPosition=profile.view_position,
            BodyPartExamined=profile.body_part,
            SoftwareVersions=profile.software_version,
            PhotometricInterpretation=profile.photometric,
            PatientSex="F" if rng.random() < 0.5 else "M",
            PatientAgeBand=AGE_BANDS[min(9, int(rng.gamma(9.0, 0.6)))],
        ),
        pixel_stats={name: float(v) for name, v in zip(PIXEL_STAT_NAMES, pixels, strict=True)},
        prediction=Prediction(scores=dict(zip(_FINDINGS, map(float, scores), strict=True))),
    )


class FeatureLabelConfig(BaseModel):
    """Which studies of a feature stream get a label, and when; equal configs give equal labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label_rate: float = Field(0.5, ge=0.0, le=1.0)
    """Share of studies that get a label."""
    mean_delay: timedelta = Field(timedelta(hours=72), gt=timedelta(0))
    """Mean of the exponential delay between a study and its label, in event time."""
    seed: int = 0


def feature_labels(
    events: Iterable[InferenceEvent], config: FeatureLabelConfig | None = None
) -> Iterator[LabelEvent]:
    """Label events for a share of ``events``, in the order of their studies.

    Each finding's truth is drawn with the probability its score gives (the model is
    calibrated), so metrics computed on the labels are those of a real, imperfect model. A
    study's draws come from a generator seeded by (seed, event id): its label does not depend on
    which other events are given, or in what order.
    """
    config = config or FeatureLabelConfig()
    for event in events:
        rng = np.random.default_rng([config.seed, *event.event_id.fields])
        labelled = rng.random() < config.label_rate
        delay = timedelta(seconds=round(rng.exponential(config.mean_delay.total_seconds())))
        truths = {f: int(rng.random() < s) for f, s in sorted(event.prediction.scores.items())}
        if not labelled:
            continue
        yield LabelEvent(
            event_id=uuid.uuid5(_LABEL_NAMESPACE, f"{event.event_id}|{config.seed}"),
            site_id=event.site_id,
            model_name=event.model_name,
            study_key=event.study_key,
            occurred_at=event.occurred_at + delay,
            labels=truths,
            source=LabelSource.RADIOLOGIST,
        )
