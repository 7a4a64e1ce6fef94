"""One stream's state: its reference, open window, fitted detectors, online block and alarms."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from monitor.drift import calibration, sequential
from monitor.drift.alarms import AlarmState
from monitor.drift.alerts import (
    Alert,
    AlertUpdate,
    Check,
    StreamKey,
    alert_id_for,
    drifting_features,
    explain,
    to_datetime,
)
from monitor.drift.base import DetectorConfig, DriftResult, FeatureMatrix, InsufficientDataError
from monitor.drift.categorical import ChiSquareDetector
from monitor.drift.config import EMBEDDING_DETECTOR, ONLINE_DETECTOR, EngineConfig
from monitor.drift.directions import Direction
from monitor.drift.embedding_mmd import EmbeddingMMDDetector
from monitor.drift.features import PIXEL_FIELD, FeatureSchema, RowBuffer, Vocabulary
from monitor.drift.ks import KSDetector
from monitor.drift.missingness import MissingnessDetector
from monitor.drift.mmd import MMDDetector
from monitor.drift.online import OnlineDriftDetector
from monitor.drift.scores import ScoreKSDetector
from monitor.drift.severity import Severity
from monitor.events import InferenceEvent

ReferenceSource = Literal["first_events", "next_events", "uploaded"]
REFERENCE_NAMESPACE = uuid.UUID("0c7d5d2e-2b1f-4a8e-bb43-8a4f2d6f1c37")


class WindowDetector(Protocol):
    def fit(self, reference: object, /) -> object: ...

    def score(self, window: object, /) -> DriftResult: ...


_CLASSES: dict[str, type] = {
    "mmd": MMDDetector,
    "ks": KSDetector,
    "chi2": ChiSquareDetector,
    "score_ks": ScoreKSDetector,
    "missingness": MissingnessDetector,
    EMBEDDING_DETECTOR: EmbeddingMMDDetector,
}
NO_EMBEDDINGS = (
    "not run: the reference carries no embeddings (inference-event/v1, or v2 without one), "
    "so this stream is tested without it"
)


class ReferenceInfo(BaseModel):
    """Where a stream's reference came from; persisted, and shown by the API."""

    model_config = ConfigDict(extra="forbid")

    reference_id: uuid.UUID
    generation: int
    source: ReferenceSource
    requested_by: str | None = None
    reason: str | None = None
    requested_at: float | None = None
    """Wall-clock POSIX time of a re-baselining request (None for the automatic first one)."""
    frozen: bool = False
    n_events: int = 0
    first_event_at: float | None = None
    last_event_at: float | None = None
    not_run: dict[str, str] = {}
    """Detectors the frozen reference cannot feed, with the reason (e.g. no embeddings)."""


def reference_id_for(key: StreamKey, generation: int) -> uuid.UUID:
    return uuid.uuid5(REFERENCE_NAMESPACE, f"{key}|{generation}")


@dataclass
class OnlineBlock:
    """The online detector's events since its last check (see ``engine._online``)."""

    n_events: int = 0
    start: float = math.nan
    end: float = math.nan
    best: DriftResult | None = None
    """The result with the largest statistic in the block (an exceedance closes the block)."""

    def add(self, time: float) -> None:
        if self.n_events == 0:
            self.start = time
        self.n_events += 1
        self.end = time

    def close(self, key: StreamKey) -> Check:
        check = Check(
            key=key,
            detector=ONLINE_DETECTOR,
            window_start=to_datetime(self.start),
            window_end=to_datetime(self.end),
            n_window=self.n_events,
            result=self.best,
            skipped=None if self.best is not None else "online window still filling",
        )
        self.n_events, self.start, self.end, self.drift, self.best = (
            0,
            math.nan,
            math.nan,
            False,
            None,
        )
        return check


@dataclass
class StreamState:
    """Everything the engine keeps for one stream (see :mod:`monitor.drift.state` to persist)."""

    key: StreamKey
    schema: FeatureSchema
    vocabulary: Vocabulary
    reference: RowBuffer
    reference_info: ReferenceInfo
    window: RowBuffer
    alarms: dict[str, AlarmState]
    open_alerts: dict[str, uuid.UUID] = field(default_factory=dict)
    online_block: OnlineBlock = field(default_factory=OnlineBlock)
    detectors: dict[str, WindowDetector] = field(default_factory=dict)
    detector_configs: dict[str, DetectorConfig] = field(default_factory=dict)
    disabled: dict[str, str] = field(default_factory=dict)
    online: OnlineDriftDetector | None = None
    learned: dict[str, calibration.DetectorThresholds] = field(default_factory=dict)
    """Effect thresholds learned from the reference, by detector (empty when not configured,
    or when the reference is too short to learn from)."""
    directions: tuple[Direction, ...] | None = None
    """The known directions of the stream's embedding projection, as the engine last got them
    (not persisted: the engine asks its source before each window)."""
    reference_revision: int = 0
    """Counts changes to the reference rows in this process (not persisted): a store saves the
    rows again only when this moved since its last save."""
    _digest: tuple[int, str] | None = field(default=None, repr=False)

    @classmethod
    def new(cls, key: StreamKey, first: InferenceEvent, config: EngineConfig) -> StreamState:
        schema = FeatureSchema.for_event(first)
        names = [*config.batch_detectors(_unavailable(schema)), ONLINE_DETECTOR]
        return cls(
            key=key,
            schema=schema,
            vocabulary=Vocabulary.empty(len(schema.categorical)),
            reference=_buffer(schema),
            reference_info=ReferenceInfo(
                reference_id=reference_id_for(key, 0), generation=0, source="first_events"
            ),
            window=_buffer(schema),
            alarms={name: AlarmState() for name in names},
        )

    def row(self, event: InferenceEvent) -> tuple[NDArray[np.float64], NDArray[np.int32], float]:
        codes = self.vocabulary.encode(self.schema.categorical_row(event))
        return self.schema.numeric_row(event), codes, event.occurred_at.timestamp()

    def append_reference(self, event: InferenceEvent) -> None:
        if not len(self.reference):
            self._fix_embedding(event)
        numeric, codes, time = self.row(event)
        self.reference.append(numeric, codes, time)
        self.reference_revision += 1

    def _fix_embedding(self, event: InferenceEvent) -> None:
        """The reference's first event fixes the embedding layout (a re-baselined reference may
        bring one, or another projection); both buffers are empty at this point."""
        schema = self.schema.with_embedding_of(event)
        if schema != self.schema:
            self.schema = schema
            self.reference, self.window = _buffer(schema), _buffer(schema)
            self.directions = None

    def restart_reference(
        self, source: ReferenceSource, requested_by: str, reason: str, requested_at: float
    ) -> None:
        generation = self.reference_info.generation + 1
        self.reference_info = ReferenceInfo(
            reference_id=reference_id_for(self.key, generation),
            generation=generation,
            source=source,
            requested_by=requested_by,
            reason=reason,
            requested_at=requested_at,
        )
        self.reference.clear()
        self.reference_revision += 1
        self.window.clear()
        self.online_block = OnlineBlock()
        self.detectors, self.disabled, self.online, self.learned = {}, {}, None, {}
        for alarm in self.alarms.values():
            alarm.drifting_streak = alarm.quiet_streak = alarm.cooldown_left = 0
            alarm.in_episode, alarm.streak_started_at = False, None
            # The CUSUM's sums were standardised by the old reference's chunks.
            alarm.cusum, alarm.decision_asked = {}, False

    def reference_progress(self) -> ReferenceInfo:
        """The reference's provenance, with its events and time span so far while it is still
        being collected (a site manager's "monitoring starts when...")."""
        if self.reference_info.frozen or not len(self.reference):
            return self.reference_info
        times = self.reference.times
        return self.reference_info.model_copy(
            update={
                "n_events": len(self.reference),
                "first_event_at": float(times.min()),
                "last_event_at": float(times.max()),
            }
        )

    def freeze(self, config: EngineConfig) -> ReferenceInfo:
        """Fit every detector on the collected reference; the stream starts monitoring."""
        times = self.reference.times
        self.reference_info = self.reference_info.model_copy(
            update={
                "frozen": True,
                "n_events": len(self.reference),
                "first_event_at": float(times.min()),
                "last_event_at": float(times.max()),
            }
        )
        self.fit(config)
        self.reference_info = self.reference_info.model_copy(
            update={"not_run": dict(self.disabled)}
        )
        return self.reference_info

    def fit(
        self,
        config: EngineConfig,
        online: OnlineDriftDetector | None = None,
        learned: dict[str, calibration.DetectorThresholds] | None = None,
    ) -> None:
        """(Re)build the fitted detectors from the reference; ``online`` and ``learned`` when
        already restored (else the online detector is calibrated and, when configured, the
        effect thresholds learned here)."""
        self.detectors, self.disabled = {}, {}
        unavailable = _unavailable(self.schema)
        self.detector_configs = dict(config.batch_detectors(unavailable))
        configured = config.detectors.batch()
        self.disabled.update({name: NO_EMBEDDINGS for name in unavailable if name in configured})
        for name in self.detector_configs:
            self.alarms.setdefault(name, AlarmState())
        for name, detector_config in self.detector_configs.items():
            detector: WindowDetector = _CLASSES[name](detector_config)
            try:
                detector.fit(self.sample_for(name, self.reference))
            except (InsufficientDataError, ValueError) as exc:
                self.disabled[name] = f"not run: {exc}"
                continue
            self.detectors[name] = detector
        self.learned = learned if learned is not None else self._learn(config)
        self.online = online
        settings = config.detectors.online
        if online is None and settings is not None:
            try:
                self.online = OnlineDriftDetector(settings.detector).fit(
                    self.online_reference(config)
                )
            except (InsufficientDataError, ValueError) as exc:
                self.disabled[ONLINE_DETECTOR] = f"not run: {exc}"

    def _learn(self, config: EngineConfig) -> dict[str, calibration.DetectorThresholds]:
        """Each fitted window detector's thresholds from the reference's chunks."""
        if config.learned is None:
            return {}
        found = {}
        for name in self.detectors:
            learned = calibration.learn(
                name,
                partial(_CLASSES[name], self.detector_configs[name]),
                partial(self.sample_for, name),
                self.reference,
                config.chunk_size(),
                config.learned,
                config.chunk_duration_s(),
            )
            if learned is not None:
                found[name] = _with_decision_interval(learned, config)
        return found

    def score(self, name: str, buffer: RowBuffer) -> DriftResult:
        """Detector ``name``'s result on ``buffer`` (the embedding detector with the stream's
        known directions), decided with its learned thresholds."""
        detector, sample = self.detectors[name], self.sample_for(name, buffer)
        if isinstance(detector, EmbeddingMMDDetector):
            assert isinstance(sample, FeatureMatrix)
            return self.decided(name, detector.score(sample, self.directions or ()))
        return self.decided(name, detector.score(sample))

    def floor(self, detector: str) -> float:
        """The configured effect floor of ``detector`` (0 when it has none)."""
        return float(getattr(self.detector_configs.get(detector), "min_effect_size", 0.0))

    def decided(self, detector: str, result: DriftResult) -> DriftResult:
        """``result`` under the learned thresholds of ``detector``, if any were learned."""
        learned = self.learned.get(detector)
        return (
            result if learned is None else calibration.apply(result, learned, self.floor(detector))
        )

    def online_columns(self, config: EngineConfig) -> tuple[tuple[str, ...], slice]:
        settings = config.detectors.online
        if settings is not None and settings.features == "scores":
            return self.schema.findings, self.schema.finding_columns()
        return self.schema.pixels, self.schema.pixel_columns()

    def online_reference(self, config: EngineConfig) -> FeatureMatrix:
        """The reference rows complete in the online detector's features."""
        names, columns = self.online_columns(config)
        values = self.reference.numeric[:, columns]
        complete = values[np.isfinite(values).all(axis=1)]
        minimum = max(
            100, config.detectors.online.detector.window_size if config.detectors.online else 0
        )
        if len(complete) < minimum:
            raise InsufficientDataError(
                f"{len(complete)} reference events have every {ONLINE_DETECTOR} feature "
                f"(at least {minimum} needed)"
            )
        return FeatureMatrix(names, complete)

    def online_values(
        self, numeric: NDArray[np.float64], config: EngineConfig
    ) -> NDArray[np.float64]:
        return numeric[self.online_columns(config)[1]]

    def sample_for(self, name: str, buffer: RowBuffer) -> object:
        """The input detector ``name`` takes, cut from ``buffer``."""
        schema = self.schema
        if name == "mmd":
            return buffer.matrix(schema.pixels, schema.pixel_columns())
        if name == "ks":
            return buffer.matrix(schema.metadata, schema.metadata_columns())
        if name == EMBEDDING_DETECTOR:
            return buffer.matrix(schema.embedding, schema.embedding_columns())
        if name == "score_ks":
            scores = buffer.numeric[:, schema.finding_columns()]
            return {finding: scores[:, i] for i, finding in enumerate(schema.findings)}
        if name == "chi2":
            return buffer.categorical(schema.categorical, self.vocabulary)
        if name == "missingness":
            present = np.where(buffer.codes >= 0, buffer.codes, np.nan)
            values = np.hstack(
                [
                    buffer.numeric[:, schema.metadata_columns()],
                    present,
                    buffer.numeric[:, :1] if schema.pixels else np.zeros((len(buffer), 0)),
                ]
            )
            names = (
                *schema.metadata,
                *schema.categorical,
                *((PIXEL_FIELD,) if schema.pixels else ()),
            )
            return FeatureMatrix(names, values)
        raise ValueError(f"unknown window detector {name!r}")

    def end_episodes(self, at: float, reason: str) -> list[AlertUpdate]:
        updates = [
            AlertUpdate(alert_id=alert_id, kind="ended", at=to_datetime(at), reason=reason)
            for alert_id in self.open_alerts.values()
        ]
        self.open_alerts.clear()
        return updates

    def reference_digest(self) -> str:
        """SHA-256 of the reference rows (memoised per ``reference_revision``)."""
        if self._digest is None or self._digest[0] != self.reference_revision:
            digest = hashlib.sha256()
            for array in self.reference.arrays().values():
                digest.update(array.tobytes())
            self._digest = (self.reference_revision, digest.hexdigest())
        return self._digest[1]

    def nbytes(self) -> int:
        """Approximate memory of the buffers (the bulk of a stream's footprint)."""
        return self.reference.nbytes() + self.window.nbytes()


def open_alert(
    stream: StreamState,
    check: Check,
    result: DriftResult,
    alarm: AlarmState,
    config: EngineConfig,
    event_time: float,
) -> Alert:
    """The alert of the episode ``check`` just opened."""
    since = to_datetime(alarm.streak_started_at or check.window_start.timestamp())
    floor = stream.floor(check.detector)
    learned = stream.learned.get(check.detector)
    features = drifting_features(result, floor)
    per_feature = any(a.p_value is not None for a in result.attributions)
    # A multivariate result (MMD) has no per-feature thresholds: its features are its leading
    # contributors, which the filter below would empty.
    if learned is not None and result.threshold is not None and per_feature:
        drifting = calibration.drifting_features(result, learned, floor)
        features = tuple(feature for feature in features if feature in drifting)
    explanation = explain(stream.key, check, result, since)
    h = None if learned is None else learned.cusum_h
    accumulated = sequential.crossing(alarm.cusum, h)
    if accumulated and h is not None:
        features += tuple(feature for feature in accumulated if feature not in features)
        explanation += (
            f" The sequential rule's evidence for {', '.join(accumulated)} accumulated over "
            f"consecutive windows to its interval h = {h:.2f}: a sustained change, though no "
            "single window need pass its threshold."
        )
    return Alert(
        alert_id=alert_id_for(stream.key, check.detector, alarm.episodes),
        key=stream.key,
        detector=check.detector,
        features=features,
        occurred_at=to_datetime(event_time),
        since=since,
        window_start=check.window_start,
        window_end=check.window_end,
        statistic=result.statistic,
        p_value=result.p_value,
        effect_size=result.effect_size,
        effect_size_name=result.effect_size_name,
        explanation=explanation,
        config_fingerprint=result.config_fingerprint,
        reference_id=stream.reference_info.reference_id,
        severity=check.severity or Severity.WARNING,
    )


def _with_decision_interval(
    learned: calibration.DetectorThresholds, config: EngineConfig
) -> calibration.DetectorThresholds:
    """``learned`` with the sequential rule's ``h`` for the features it watches."""
    if config.sequential is None:
        return learned
    h = sequential.decision_interval(len(moments(learned)), config.sequential)
    return dataclasses.replace(learned, cusum_h=h)


def _watched(feature: str, learned: calibration.DetectorThresholds) -> bool:
    """Per-feature detectors are watched per feature; a multivariate one by its overall effect."""
    per_feature = any(name != calibration.OVERALL for name in learned.thresholds)
    return (feature != calibration.OVERALL) if per_feature else True


def moments(learned: calibration.DetectorThresholds) -> dict[str, tuple[float, float]]:
    """The chunk (mean, sd) of each feature the sequential rule watches (one with a spread)."""
    return {
        feature: (value.mean, value.sd)
        for feature, value in learned.thresholds.items()
        if _watched(feature, learned) and value.sd > 0
    }


def _unavailable(schema: FeatureSchema) -> tuple[str, ...]:
    """Window detectors the stream's layout cannot feed: the embedding detector without one."""
    return () if schema.embedding else (EMBEDDING_DETECTOR,)


def _buffer(schema: FeatureSchema) -> RowBuffer:
    return RowBuffer(len(schema.numeric), len(schema.categorical))
