"""The drift engine: per-stream references, windows, detectors and alarms, one event at a time.

A stream is one model version at one site (:class:`StreamKey`). Its first
``reference_size`` events become its reference (or an uploaded sample does, see
:meth:`DriftEngine.rebaseline`); after that every event joins a tumbling window scored by the
window detectors when full, and is scored at once by the online detector. Scored checks go
through the alarm layer (:mod:`monitor.drift.alarms`), which turns them into alerts and updates.

The engine is pure and deterministic: the same events in the same order give the same checks,
alerts and alert ids, whether they arrive in one run, in batches across restarts (state is
saved with :mod:`monitor.drift.state`) or from a file in ``radsentry backtest``. The live
consumer and the backtest both call :meth:`DriftEngine.process`; there is no second copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from monitor.drift import sequential, severity, state
from monitor.drift.alerts import Alert, AlertUpdate, Check, StreamKey, to_datetime
from monitor.drift.base import InsufficientDataError
from monitor.drift.config import EMBEDDING_DETECTOR, ONLINE_DETECTOR, EngineConfig
from monitor.drift.directions import Direction
from monitor.drift.stream import (
    NO_EMBEDDINGS,
    ReferenceInfo,
    ReferenceSource,
    StreamState,
    moments,
    open_alert,
)
from monitor.events import InferenceEvent

MIN_UPLOADED_REFERENCE = 50


class DirectionSource(Protocol):
    """The known directions (:mod:`monitor.drift.directions`) of a stream's embedding
    projection, ``embedding_id`` naming it; () when there are none. The engine asks before
    each window its embedding detector scores (a source caches: directions logged after the
    stream started are then picked up); the service's source reads them from MLflow
    (``monitor.service.drift.directions``)."""

    def __call__(self, key: StreamKey, embedding_id: str) -> tuple[Direction, ...]: ...


@dataclass
class Outcome:
    """What processing one event (or one re-baselining) produced."""

    checks: list[Check] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    updates: list[AlertUpdate] = field(default_factory=list)
    reference_frozen: ReferenceInfo | None = None

    def extend(self, other: Outcome) -> None:
        self.checks += other.checks
        self.alerts += other.alerts
        self.updates += other.updates
        self.reference_frozen = other.reference_frozen or self.reference_frozen


class DriftEngine:
    """Holds every stream's state and routes events to it."""

    def __init__(
        self, config: EngineConfig | None = None, directions: DirectionSource | None = None
    ) -> None:
        self.config = config or EngineConfig()
        self.streams: dict[StreamKey, StreamState] = {}
        self.directions = directions

    def process(self, event: InferenceEvent) -> Outcome:
        """Feed one accepted event; events of a stream must come in a fixed (arrival) order."""
        key = StreamKey(event.site_id, event.model_name, event.model_version)
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = StreamState.new(key, event, self.config)
        return _process(stream, event, self.config, self.directions)

    def export(self, key: StreamKey) -> bytes:
        """The changing state of stream ``key`` as bytes (:mod:`monitor.drift.state`)."""
        return state.dump(self.streams[key], self.config)

    def export_reference(self, key: StreamKey) -> bytes:
        """The reference rows of stream ``key`` (they change only with ``reference_revision``)."""
        return state.dump_reference(self.streams[key])

    def restore(self, blob: bytes, reference_blob: bytes) -> StreamKey:
        """Load a stream from :meth:`export` and :meth:`export_reference` bytes (replacing any
        in memory); return its key."""
        stream = state.load(blob, reference_blob, self.config)
        self.streams[stream.key] = stream
        return stream.key

    def rebaseline(
        self,
        key: StreamKey,
        *,
        requested_by: str,
        reason: str,
        requested_at: float,
        events: Iterable[InferenceEvent] | None = None,
    ) -> Outcome:
        """Replace a stream's reference: with ``events`` (uploaded), or with its next events.

        Open episodes end (their alerts are updated with the reason), windows and alarm streaks
        restart. ``requested_at`` is wall-clock POSIX time of the request. Raises
        InsufficientDataError for fewer than 50 uploaded events, KeyError for a stream never
        seen when no events are given.
        """
        uploaded = list(events) if events is not None else None
        # Checked before the stream is looked up: an empty upload for a new stream is too
        # small, not a stream never seen (it was a KeyError, an HTTP 500).
        if uploaded is not None and len(uploaded) < MIN_UPLOADED_REFERENCE:
            raise InsufficientDataError(
                f"an uploaded reference needs at least {MIN_UPLOADED_REFERENCE} events, "
                f"got {len(uploaded)}"
            )
        stream = self.streams.get(key)
        if stream is None:
            if uploaded is None:
                raise KeyError(f"no events seen for {key}; upload a reference to start it")
            stream = self.streams[key] = StreamState.new(key, uploaded[0], self.config)
        source: ReferenceSource = "uploaded" if uploaded is not None else "next_events"
        outcome = Outcome(updates=stream.end_episodes(requested_at, f"re-baselined: {reason}"))
        stream.restart_reference(source, requested_by, reason, requested_at)
        if uploaded is not None:
            for event in uploaded:
                stream.append_reference(event)
            outcome.reference_frozen = stream.freeze(self.config)
        return outcome


def _process(
    stream: StreamState,
    event: InferenceEvent,
    config: EngineConfig,
    directions: DirectionSource | None = None,
) -> Outcome:
    if not stream.reference_info.frozen:
        stream.append_reference(event)
        times = stream.reference.times
        if config.reference_complete(len(times), float(times[-1] - times[0])):
            return Outcome(reference_frozen=stream.freeze(config))
        return Outcome()
    outcome = Outcome()
    numeric, codes, time = stream.row(event)
    window_config = config.window
    window = stream.window
    if (
        window_config.duration_s is not None
        and len(window) >= window_config.min_size
        and time - window.times[0] >= window_config.duration_s
    ):
        outcome.extend(_score_window(stream, config, time, directions))
    window.append(numeric, codes, time)
    if window_config.size is not None and len(window) >= window_config.size:
        outcome.extend(_score_window(stream, config, time, directions))
    outcome.extend(_online(stream, config, numeric, time))
    return outcome


def _score_window(
    stream: StreamState,
    config: EngineConfig,
    event_time: float,
    directions: DirectionSource | None = None,
) -> Outcome:
    embedding_id = stream.schema.embedding_id
    if directions is not None and embedding_id and EMBEDDING_DETECTOR in stream.detectors:
        stream.directions = tuple(directions(stream.key, embedding_id))
    window = stream.window
    start, end = to_datetime(float(window.times.min())), to_datetime(float(window.times.max()))
    outcome = Outcome()
    for name in stream.detectors:
        skipped = None
        result = None
        try:
            result = stream.score(name, window)
        except InsufficientDataError as exc:
            skipped = str(exc)
        outcome.checks.append(Check(stream.key, name, start, end, len(window), result, skipped))
    agreeing = sum(check.result is not None and check.result.is_drift for check in outcome.checks)
    outcome.checks = [_with_severity(stream, config, check, agreeing) for check in outcome.checks]
    for name, reason in stream.disabled.items():
        # A detector the stream's layout cannot feed is no skipped window: said once, in the
        # reference's ``not_run``, so a v1 stream's checks are those of an engine without it.
        if name != ONLINE_DETECTOR and reason != NO_EMBEDDINGS:
            outcome.checks.append(Check(stream.key, name, start, end, len(window), None, reason))
    window.clear()
    _alarm(stream, config, outcome, event_time)
    return outcome


def _online(
    stream: StreamState, config: EngineConfig, numeric: NDArray[np.float64], time: float
) -> Outcome:
    """Score the event online; every ``window_size`` events, or at an exceedance, one check.

    After an exceedance the detector's window is emptied, so the next check is made on a window
    of entirely new events: under no change the confirming check the alarm layer asks for is
    then independent of the first exceedance, instead of sharing most of its events.
    """
    online = stream.online
    settings = config.detectors.online
    if online is None or settings is None:
        return Outcome()
    block = stream.online_block
    statistic = online.update_statistic(stream.online_values(numeric, config))
    block.add(time)
    if statistic is not None and (block.best is None or statistic > block.best.statistic):
        block.best = online.result()  # only for a new maximum: attributions cost ~10x the test
    exceeded = statistic is not None and statistic > online.threshold
    if not exceeded and block.n_events < settings.detector.window_size:
        return Outcome()
    if exceeded:
        online.reset()
    outcome = Outcome(checks=[_with_severity(stream, config, block.close(stream.key), 1)])
    _alarm(stream, config, outcome, time)
    return outcome


def _with_severity(stream: StreamState, config: EngineConfig, check: Check, agreeing: int) -> Check:
    """``check`` with the severity of its result (None for a quiet or skipped check)."""
    if check.result is None:
        return check
    level = severity.of_check(
        check.detector, check.result, stream.floor(check.detector), agreeing, config.severity
    )
    return dataclasses.replace(check, severity=level)


def _alarm(stream: StreamState, config: EngineConfig, outcome: Outcome, event_time: float) -> None:
    """Run this event's checks through the alarm layer, adding alerts and updates."""
    for check in outcome.checks:
        if check.result is None:
            continue
        alarm = stream.alarms[check.detector]
        crossed = _crossed(stream, config, check)  # updated on every check, drifting or not
        transition = alarm.observe(
            check.result.is_drift or crossed,
            check.window_start.timestamp(),
            config.alarm_config(check.detector),
        )
        if transition == "opened":
            alert = open_alert(stream, check, check.result, alarm, config, event_time)
            stream.open_alerts[check.detector] = alert.alert_id
            outcome.alerts.append(alert)
        elif transition in ("continued", "ended"):
            alert_id = stream.open_alerts.get(check.detector)
            if alert_id is None:  # pragma: no cover - an episode always has its alert
                continue
            outcome.updates.append(
                AlertUpdate(
                    alert_id=alert_id,
                    kind="continued" if transition == "continued" else "ended",
                    at=to_datetime(event_time),
                    effect_size=check.result.effect_size,
                    reason=None if transition == "continued" else "no drift in recent checks",
                    severity=check.severity if transition == "continued" else None,
                )
            )
            if transition == "ended":
                del stream.open_alerts[check.detector]
        _ask_for_decision(stream, config, outcome, check)


def _crossed(stream: StreamState, config: EngineConfig, check: Check) -> bool:
    """Whether the sequential rule's CUSUM, updated with this check, reaches ``h``."""
    learned = stream.learned.get(check.detector)
    if config.sequential is None or learned is None or learned.cusum_h is None:
        return False
    assert check.result is not None  # _alarm skips checks without one
    alarm = stream.alarms[check.detector]
    peak = sequential.update(
        alarm.cusum, check.result, moments(learned), config.sequential.k, learned.cusum_h
    )
    return peak >= learned.cusum_h


def _ask_for_decision(
    stream: StreamState, config: EngineConfig, outcome: Outcome, check: Check
) -> None:
    """An episode open for ``decision_after_s`` asks, once, for a person's decision."""
    alarm = stream.alarms[check.detector]
    alert_id = stream.open_alerts.get(check.detector)
    at = check.window_end.timestamp()
    if alert_id is None or not alarm.needs_decision(at, config.alarm_config(check.detector)):
        return
    assert alarm.streak_started_at is not None  # needs_decision checked it
    days = (at - alarm.streak_started_at) / 86_400
    outcome.updates.append(
        AlertUpdate(
            alert_id=alert_id,
            kind="sustained",
            at=check.window_end,
            reason=f"sustained for {days:.0f} days: acknowledge and re-baseline if this is the "
            "new normal, or investigate",
        )
    )


__all__ = ["DirectionSource", "DriftEngine", "Outcome", "ReferenceInfo", "StreamKey"]
