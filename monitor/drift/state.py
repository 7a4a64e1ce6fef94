"""A stream's state as bytes and back, so a restart continues exactly where it stopped.

The format is two ``.npz`` archives (``numpy.savez``, loaded with ``allow_pickle=False``, so a
stored blob can never execute code): the reference rows in one (rewritten only when the
reference changes), and in the other the window rows (float64/int32 arrays restore bit for
bit) with one JSON document (``meta``) holding everything else: schema,
category vocabulary, reference provenance, alarm states, open alerts, the online detector's
calibrated threshold and window, and the fingerprint of the engine config that wrote it.

Fitted window detectors are not stored: they are refitted from the reference on load (a few
milliseconds). The online detector's threshold is stored, because calibrating it costs about a
second per stream; it is reused when config and reference are unchanged and recalibrated
otherwise.
"""

from __future__ import annotations

import dataclasses
import io
import math
import uuid
from typing import Any

import numpy as np
import orjson

from monitor.drift import calibration
from monitor.drift.alarms import AlarmState
from monitor.drift.alerts import StreamKey
from monitor.drift.base import DriftResult, FeatureAttribution, InsufficientDataError
from monitor.drift.config import EngineConfig
from monitor.drift.features import FeatureSchema, RowBuffer, Vocabulary
from monitor.drift.online import OnlineDriftDetector, OnlineState, StateMismatchError
from monitor.drift.stream import OnlineBlock, ReferenceInfo, StreamState

FORMAT_VERSION = 1


class StateFormatError(ValueError):
    """A stored blob is not a stream state this version can read."""


def dump(stream: StreamState, config: EngineConfig) -> bytes:
    """The stream's changing state (everything but the reference rows) as an ``.npz`` archive.

    The reference rows go separately (:func:`dump_reference`) because they change only while a
    reference is collected or replaced, while this part changes with every event: saving it
    alone keeps each batch's writes to the window and the small meta document.
    """
    meta = {
        "format": FORMAT_VERSION,
        "config_fingerprint": config.fingerprint(),
        "key": dataclasses.asdict(stream.key),
        "schema": dataclasses.asdict(stream.schema),
        "vocabulary": stream.vocabulary.values,
        "reference_info": stream.reference_info.model_dump(mode="json"),
        "reference_digest": stream.reference_digest(),
        "alarms": {name: alarm.model_dump() for name, alarm in stream.alarms.items()},
        "open_alerts": {name: str(alert_id) for name, alert_id in stream.open_alerts.items()},
        "online_block": _block_to_json(stream.online_block),
        "online_state": stream.online.state().model_dump() if stream.online else None,
        # Learning costs a fit and a score per reference chunk and detector: stored, and
        # reused while reference and config are unchanged (learned again otherwise).
        "learned": {name: learned.to_json() for name, learned in stream.learned.items()},
    }
    return _archive(meta, {f"window_{k}": v for k, v in stream.window.arrays().items()})


def dump_reference(stream: StreamState) -> bytes:
    """The stream's reference rows, tagged with the reference they belong to."""
    meta = {
        "format": FORMAT_VERSION,
        "reference_digest": stream.reference_digest(),
    }
    return _archive(meta, {f"reference_{k}": v for k, v in stream.reference.arrays().items()})


def load(blob: bytes, reference_blob: bytes, config: EngineConfig) -> StreamState:
    """A stream from :func:`dump` and :func:`dump_reference` bytes, fitted for ``config``.

    Raises StateFormatError for bytes that are not a state of this format, or a reference that
    is not the one the state was saved with.
    """
    meta, arrays = _unarchive(blob)
    reference_meta, reference_arrays = _unarchive(reference_blob)
    if reference_meta.get("reference_digest") != meta["reference_digest"]:
        raise StateFormatError("the reference rows do not belong to this state")
    stream = StreamState(
        key=StreamKey(**meta["key"]),
        schema=_schema(meta["schema"]),
        vocabulary=Vocabulary(meta["vocabulary"]),
        reference=_buffer(reference_arrays, "reference"),
        reference_info=ReferenceInfo.model_validate(meta["reference_info"]),
        window=_buffer(arrays, "window"),
        alarms={name: AlarmState.model_validate(a) for name, a in meta["alarms"].items()},
        open_alerts={name: uuid.UUID(a) for name, a in meta["open_alerts"].items()},
        online_block=_block_from_json(meta["online_block"]),
    )
    if stream.reference_info.frozen:
        stream.fit(
            config,
            online=_restore_online(stream, config, meta["online_state"]),
            learned=_restore_learned(meta, config),
        )
    return stream


def _restore_learned(
    meta: dict[str, Any], config: EngineConfig
) -> dict[str, calibration.DetectorThresholds] | None:
    """The stored learned thresholds when the state was written with this config (its reference
    digest was checked by :func:`load`); None: learn them again."""
    if meta.get("config_fingerprint") != config.fingerprint() or "learned" not in meta:
        return None
    return {
        name: calibration.DetectorThresholds.from_json(document)
        for name, document in meta["learned"].items()
    }


def stored_learned(blob: bytes) -> dict[str, calibration.DetectorThresholds]:
    """The learned thresholds a :func:`dump` blob holds (empty when none were learned), without
    restoring the stream: the health score reads their chunk moments."""
    meta, _ = _unarchive(blob)
    return {
        name: calibration.DetectorThresholds.from_json(document)
        for name, document in meta.get("learned", {}).items()
    }


def _schema(document: dict[str, Any]) -> FeatureSchema:
    """The stored schema; states written before embeddings have neither field (none)."""
    embedding_id = document.get("embedding_id")
    columns = {name: tuple(v) for name, v in document.items() if name != "embedding_id"}
    return FeatureSchema(**columns, embedding_id=embedding_id)


def _archive(meta: dict[str, Any], arrays: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(orjson.dumps(meta), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def _unarchive(blob: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        archive = np.load(io.BytesIO(blob), allow_pickle=False)
        meta: dict[str, Any] = orjson.loads(archive["meta"].tobytes())
        arrays = {name: archive[name] for name in archive.files if name != "meta"}
    except (ValueError, OSError, KeyError, orjson.JSONDecodeError) as exc:
        raise StateFormatError(f"not a stream state: {exc}") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise StateFormatError(f"stream state format {meta.get('format')!r} is not supported")
    return meta, arrays


def _restore_online(
    stream: StreamState, config: EngineConfig, stored: dict[str, Any] | None
) -> OnlineDriftDetector | None:
    settings = config.detectors.online
    if stored is None or settings is None:
        return None
    try:
        state = OnlineState.model_validate(stored)
        return OnlineDriftDetector.restore(
            settings.detector, stream.online_reference(config), state
        )
    except (StateMismatchError, InsufficientDataError, ValueError):
        return None  # config or reference changed: StreamState.fit recalibrates


def _buffer(arrays: dict[str, Any], prefix: str) -> RowBuffer:
    return RowBuffer.from_arrays(
        arrays[f"{prefix}_numeric"], arrays[f"{prefix}_codes"], arrays[f"{prefix}_times"]
    )


def _block_to_json(block: OnlineBlock) -> dict[str, Any]:
    return {
        "n_events": block.n_events,
        "start": None if math.isnan(block.start) else block.start,
        "end": None if math.isnan(block.end) else block.end,
        "best": dataclasses.asdict(block.best) if block.best is not None else None,
    }


def _block_from_json(document: dict[str, Any]) -> OnlineBlock:
    best = document["best"]
    return OnlineBlock(
        n_events=document["n_events"],
        start=math.nan if document["start"] is None else document["start"],
        end=math.nan if document["end"] is None else document["end"],
        best=None if best is None else _result(best),
    )


def _result(document: dict[str, Any]) -> DriftResult:
    attributions = tuple(FeatureAttribution(**a) for a in document["attributions"])
    return DriftResult(**{**document, "attributions": attributions})
