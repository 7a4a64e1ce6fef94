"""The simulated event stream: N sites scanning, an edge extracting, a model scoring, labels later.

For every study: draw the truth, render the DICOM file, write it under ``out_dir/<site_id>/``,
run the real edge extractor on the file, score it (with the score model, or with a
:class:`StudyScorer` such as a trained model when one is given) and emit an ``InferenceEvent``;
a share of studies also get a ``LabelEvent`` some event-time hours later.
Every random draw comes from a generator seeded by (seed, site, study index), so the same config
gives the same bytes, and a scanner change at one site leaves every other study untouched.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Protocol, Self

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydicom import Dataset

from monitor.dicom import StudyFeatures, extract_features
from monitor.events import (
    Identifier,
    InferenceEvent,
    InferenceEventV2,
    LabelEvent,
    LabelSource,
    Prediction,
)
from monitor.simulate.content import (
    Candidate,
    ContentShift,
    ContentShiftKind,
    age_days,
    check_shares,
    draw_shift,
    hardest,
    study_content,
)
from monitor.simulate.images import FakePatient, StudyContent, StudyIdentity, render_study
from monitor.simulate.profiles import DEGRADED, ScannerProfile, default_profile, site_ids
from monitor.simulate.scores import FINDING, THRESHOLD, lesion_score

DEFAULT_MASTER_KEY: Final = b"radsentry-simulator-master-key"
"""Not a secret: simulated studies identify nobody. Real sites each hold their own key."""


class StudyScorer(Protocol):
    """Our port to a model that scores a study's image (``model_scores.TrainedModelScorer``)."""

    @property
    def version(self) -> str:
        """The ``model_version`` of the events it scores (an ``Identifier``)."""
        ...

    @property
    def threshold(self) -> float:
        """The operating threshold of ``FINDING``, carried as ``Prediction.threshold``."""
        ...

    def score(self, ds: Dataset) -> dict[str, float]:
        """Calibrated probability per finding, ``FINDING`` among them."""
        ...


class StudyEmbedder(Protocol):
    """Our port to a model's embedding of a study's image (``model_scores.TrainedModelEmbedder``).

    With one, the simulator emits ``inference-event/v2`` events carrying the embedding."""

    @property
    def embedding_id(self) -> str:
        """The ``embedding_id`` of the events (model, version and projection fingerprint)."""
        ...

    def embed(self, ds: Dataset) -> list[float]:
        """The embedding of the image in ``ds`` (at most 32 numbers)."""
        ...


class SimulationConfig(BaseModel):
    """Everything that determines a simulated stream; equal configs give identical events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(ge=0)
    start: AwareDatetime
    """Event time of the first study (required: the simulator never reads the clock)."""
    sites: int = Field(3, ge=1, le=99)
    studies_per_site: int = Field(200, ge=0)
    prevalence: float = Field(0.2, ge=0.0, le=1.0)
    """Share of studies with a lesion."""
    label_rate: float = Field(0.8, ge=0.0, le=1.0)
    """Share of studies that ever get a label."""
    label_delay: timedelta = Field(timedelta(hours=72), gt=timedelta(0))
    """Mean of the exponential delay between a prediction and its label, in event time."""
    study_interval: timedelta = Field(timedelta(minutes=30), gt=timedelta(0))
    """Event time between two studies at one site."""
    image_size: int = Field(256, ge=64, le=2048)
    model_name: Identifier = "cxr-lesion"
    model_version: Identifier = "0.1.0-scoremodel"
    change_site: Identifier | None = None
    """Site that switches to the degraded scanner (``profiles.DEGRADED``), if any."""
    change_at_index: int | None = Field(None, ge=0)
    """First study index at ``change_site`` acquired on the degraded scanner."""
    content_shifts: tuple[ContentShift, ...] = ()
    """Shares of studies at a site that show other content (``monitor.simulate.content``)."""
    master_key: bytes = Field(DEFAULT_MASTER_KEY, min_length=1, repr=False)
    """From which each site's HMAC key is derived (:func:`site_key_for`)."""

    @model_validator(mode="after")
    def _check_change(self) -> Self:
        if (self.change_site is None) != (self.change_at_index is None):
            raise ValueError("change_site and change_at_index go together")
        if self.change_site is not None and self.change_site not in self.site_ids():
            raise ValueError(f"change_site must be one of site-01..site-{self.sites:02d}")
        unknown = {shift.site_id for shift in self.content_shifts} - set(self.site_ids())
        if unknown:
            raise ValueError(f"content shifts at sites outside the simulation: {sorted(unknown)}")
        check_shares(self.content_shifts)
        return self

    def site_ids(self) -> list[str]:
        """``site-01`` ... ``site-NN``."""
        return site_ids(self.sites)

    def profile_for(self, site_id: str, index: int) -> ScannerProfile:
        """The scanner that acquires study ``index`` at ``site_id``."""
        changed = (
            site_id == self.change_site
            and self.change_at_index is not None
            and index >= self.change_at_index
        )
        return DEGRADED if changed else default_profile(site_id)

    def first_index_at(self, site_id: str, moment: datetime) -> int:
        """Index of the first study at ``site_id`` acquired at or after ``moment``.

        Turns "the scanner changes at 14:00" into ``change_at_index`` for this schedule.
        """
        position = self.site_ids().index(site_id)
        studies = (moment - self.start) / self.study_interval - position / self.sites
        return max(0, math.ceil(studies))

    def span(self) -> timedelta:
        """Event time from ``start`` to the stream's last event (a study or a late label).

        Drawn as :func:`simulate` draws it, without rendering a study: the label delays come
        from each study's own outcome stream, so this is exact, not an estimate.
        """
        latest = timedelta(0)
        for index in range(self.studies_per_site):
            for position, site_id in enumerate(self.site_ids()):
                acquired = _acquired_at(self, position, index) - self.start
                outcome_seed = _seeds(self, site_id, index)[0]
                outcome = _draw_outcome(self, np.random.default_rng(outcome_seed))
                latest = max(latest, acquired + (outcome.label_delay or timedelta(0)))
        return latest

    def ending_at(self, moment: datetime) -> Self:
        """This schedule moved so that its last event happens at ``moment`` (a simulated
        stream "up to now" is never dated in the future)."""
        return self.model_copy(update={"start": moment - self.span()})

    def fingerprint(self) -> str:
        """SHA-256 of the canonical config; the master key enters only as its own hash."""
        # Without content shifts the field is left out, so configs written before it existed
        # keep their fingerprints.
        excluded = {"master_key"} | (set() if self.content_shifts else {"content_shifts"})
        document = self.model_dump_json(exclude=excluded)
        key_digest = hashlib.sha256(self.master_key).hexdigest()
        return hashlib.sha256(f"{document}|{key_digest}".encode()).hexdigest()


def site_key_for(master_key: bytes, site_id: str) -> bytes:
    """The secret a simulated site keys its study pseudonyms with: HMAC-SHA256(master, site)."""
    if not master_key:
        raise ValueError("master_key is empty")
    return hmac.new(master_key, site_id.encode("ascii"), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class _Study:
    """Where and when one study is acquired."""

    site_id: str
    index: int
    acquired_at: datetime
    site_key: bytes


@dataclass(frozen=True, slots=True)
class _Outcome:
    """The random draws of one study that do not depend on the image."""

    has_lesion: bool
    label_delay: timedelta | None
    score_rng: np.random.Generator
    inference_id: uuid.UUID
    label_id: uuid.UUID


def simulate(
    config: SimulationConfig,
    out_dir: Path,
    scorer: StudyScorer | None = None,
    embedder: StudyEmbedder | None = None,
) -> Iterator[InferenceEvent | LabelEvent]:
    """Render, write, extract and score every study; yield events in event-time order.

    Scores come from the score model, or from ``scorer`` when given: then the scores, the
    threshold and ``model_version`` are the scorer's, and everything else (event ids, times,
    labels, files) is what the same config gives without it. With ``embedder`` the inference
    events are ``inference-event/v2`` with the image's embedding; nothing else changes.

    Sites take turns (site k's study i happens at ``start + (i + k / sites) * study_interval``).
    A label is yielded as soon as the simulated clock passes its ``occurred_at``; labels still
    pending after the last study follow in ``occurred_at`` order. State is bounded apart from
    the pending-label heap (about label_rate x studies per label delay).
    """
    root = out_dir.resolve()
    sites = config.site_ids()
    keys = {site_id: site_key_for(config.master_key, site_id) for site_id in sites}
    for site_id in sites:
        (root / site_id).mkdir(parents=True, exist_ok=True)
    pending: list[tuple[datetime, int, LabelEvent]] = []
    for index in range(config.studies_per_site):
        for position, site_id in enumerate(sites):
            acquired_at = _acquired_at(config, position, index)
            while pending and pending[0][0] <= acquired_at:
                yield heapq.heappop(pending)[2]
            study = _Study(site_id, index, acquired_at, keys[site_id])
            inference, label = _study(config, study, root, scorer, embedder)
            yield inference
            if label is not None:
                heapq.heappush(pending, (label.occurred_at, len(sites) * index + position, label))
    while pending:
        yield heapq.heappop(pending)[2]


def _acquired_at(config: SimulationConfig, position: int, index: int) -> datetime:
    return config.start + config.study_interval * (index + position / config.sites)


def _study(
    config: SimulationConfig,
    study: _Study,
    root: Path,
    scorer: StudyScorer | None,
    embedder: StudyEmbedder | None = None,
) -> tuple[InferenceEvent, LabelEvent | None]:
    """One study end to end: its inference event and, if it will be labelled, its label."""
    site_id = study.site_id
    rendered, outcome = _render(config, site_id, study.index, study.acquired_at, scorer)
    ds, scores = rendered.dataset, rendered.scores
    features, path = _write_and_extract(ds, root / site_id, study.index, study.site_key)
    version = config.model_version if scorer is None else scorer.version
    threshold = THRESHOLD if scorer is None else scorer.threshold
    inference = InferenceEvent(
        event_id=outcome.inference_id,
        site_id=site_id,
        model_name=config.model_name,
        model_version=version,
        occurred_at=study.acquired_at,
        study_key=features.study_key,
        modality=features.modality,
        metadata=features.metadata,
        pixel_stats=features.pixel_stats,
        dicom_uri=path.as_uri(),
        prediction=Prediction(scores=scores, threshold=threshold),
    )
    if embedder is not None:
        inference = InferenceEventV2(
            **inference.model_dump(exclude={"schema_id"}),
            embedding=embedder.embed(ds),
            embedding_id=embedder.embedding_id,
        )
    return inference, _label(config, inference, outcome)


@dataclass(frozen=True, slots=True)
class RenderedStudy:
    """One simulated study before the edge sees it: its data set, truth, scores and shift."""

    site_id: str
    index: int
    dataset: Dataset
    has_lesion: bool
    scores: dict[str, float]
    """The scorer's, or the score model's ``{FINDING: score}``."""
    shift: ContentShiftKind | None
    """The content shift the study was drawn into, if any."""


def rendered_studies(
    config: SimulationConfig, scorer: StudyScorer | None = None
) -> Iterator[RenderedStudy]:
    """The studies :func:`simulate` renders, in its order, without writing or extracting them
    (what benchmarks and ``examples.content_examples`` sample from)."""
    for index in range(config.studies_per_site):
        for position, site_id in enumerate(config.site_ids()):
            acquired_at = _acquired_at(config, position, index)
            yield _render(config, site_id, index, acquired_at, scorer)[0]


def _render(
    config: SimulationConfig,
    site_id: str,
    index: int,
    acquired_at: datetime,
    scorer: StudyScorer | None,
) -> tuple[RenderedStudy, _Outcome]:
    """Draw, render and score one study (a content shift, when drawn, changes what is
    rendered; its draws come from the study's third stream, so unshifted studies are exactly
    what a run without shifts gives)."""
    outcome_seed, image_seed = _seeds(config, site_id, index)
    outcome = _draw_outcome(config, np.random.default_rng(outcome_seed))
    shift = draw_shift(config.content_shifts, _shift_seed(config, site_id, index), site_id, index)
    kind = shift.kind if shift is not None else None
    profile = DEGRADED if kind is ContentShiftKind.SCANNER else config.profile_for(site_id, index)
    identity = StudyIdentity.derive(
        seed=config.seed, site_id=site_id, index=index, acquired_at=acquired_at
    )

    def candidate(image_rng: np.random.Generator, score_rng: np.random.Generator) -> Candidate:
        content = study_content(shift.kind, shift.rng) if shift is not None else StudyContent()
        patient = FakePatient.generate(image_rng, acquired_at.date(), age_days(kind))
        ds = render_study(
            profile,
            outcome.has_lesion,
            image_rng,
            config.image_size,
            patient=patient,
            identity=identity,
            content=content,
        )
        if scorer is not None:
            return ds, scorer.score(ds)
        # The score model's draw comes last in the outcome stream, so skipping it with a scorer
        # changes no other value of the study.
        return ds, {FINDING: lesion_score(profile, outcome.has_lesion, score_rng)}

    if shift is not None and kind is ContentShiftKind.HARDER:
        threshold = THRESHOLD if scorer is None else scorer.threshold
        ds, scores = hardest(lambda rng: candidate(rng, rng), shift.seed, FINDING, threshold)
    else:
        ds, scores = candidate(np.random.default_rng(image_seed), outcome.score_rng)
    rendered = RenderedStudy(site_id, index, ds, outcome.has_lesion, scores, kind)
    return rendered, outcome


def _write_and_extract(
    ds: Dataset, site_dir: Path, index: int, site_key: bytes
) -> tuple[StudyFeatures, Path]:
    """Write the study under its study key and return the edge extractor's features of it."""
    # Written under a temporary name first: the final name is the study key, which the
    # extractor derives, and a half-written file must never carry a final name.
    partial = site_dir / f".{index:07d}.partial"
    try:
        ds.save_as(partial, enforce_file_format=True)
        features = extract_features(partial, site_key)
        path = site_dir / f"{features.study_key}.dcm"
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return features, path


def _seeds(config: SimulationConfig, site_id: str, index: int) -> list[np.random.SeedSequence]:
    """The study's two independent streams: its outcome's, then its image's."""
    return np.random.SeedSequence([config.seed, int(site_id.rpartition("-")[2]), index]).spawn(2)


def _shift_seed(config: SimulationConfig, site_id: str, index: int) -> np.random.SeedSequence:
    """The study's third stream, for its content shift: spawned beside the two of
    :func:`_seeds`, which it leaves unchanged."""
    return np.random.SeedSequence([config.seed, int(site_id.rpartition("-")[2]), index]).spawn(3)[2]


def _draw_outcome(config: SimulationConfig, rng: np.random.Generator) -> _Outcome:
    # Every draw is made whatever its outcome, so each study consumes the same stream.
    has_lesion = bool(rng.random() < config.prevalence)
    labelled = bool(rng.random() < config.label_rate)
    delay_seconds = round(float(rng.exponential(config.label_delay.total_seconds())))
    inference_id = uuid.UUID(bytes=rng.bytes(16), version=4)
    label_id = uuid.UUID(bytes=rng.bytes(16), version=4)
    return _Outcome(
        has_lesion=has_lesion,
        label_delay=timedelta(seconds=delay_seconds) if labelled else None,
        score_rng=rng,
        inference_id=inference_id,
        label_id=label_id,
    )


def _label(
    config: SimulationConfig, inference: InferenceEvent, outcome: _Outcome
) -> LabelEvent | None:
    if outcome.label_delay is None:
        return None
    return LabelEvent(
        event_id=outcome.label_id,
        site_id=inference.site_id,
        model_name=config.model_name,
        study_key=inference.study_key,
        occurred_at=inference.occurred_at + outcome.label_delay,
        labels={FINDING: 1 if outcome.has_lesion else 0},
        source=LabelSource.RADIOLOGIST,
    )
