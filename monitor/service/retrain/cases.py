"""What the retraining job trains on: the labels in force joined to the model's inference events.

One :class:`~retrain.dataset.LabelledCase` per study that has a label in force (not expired) for
every finding of the model's spec and at least one inference event: the labels come from the
``labels_current`` table (the label in force per study and finding), the image and prediction
time from the study's latest event. A label
whose prediction has not arrived yet is left out silently (it will match later); a study
labelled for only some findings is left out and counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from sqlalchemy import Engine, Row, select

from monitor.events import LabelSource
from monitor.service.db import as_utc, table_of
from monitor.service.models import CurrentLabelRow, InferenceEventRow
from retrain.dataset import LabelledCase

StudyKey: TypeAlias = tuple[str, str]
"""(site_id, study_key)"""
_Row: TypeAlias = "Row[*tuple[Any, ...]]"
"""A result row of any columns, read by attribute."""


@dataclass(frozen=True)
class Cases:
    """The labelled studies of a model, and how many were left out and why."""

    cases: list[LabelledCase]
    incomplete: int = 0
    """Studies without a label in force for every finding of the spec."""


def load_cases(engine: Engine, model_name: str, findings: Sequence[str]) -> Cases:
    """One case per labelled study of ``model_name``: its labels in force (not expired) for
    every finding, and its latest inference event's image and time."""
    label_rows, events = _read(engine, model_name, findings)
    latest = _latest_events(events)
    by_study: dict[StudyKey, list[_Row]] = defaultdict(list)
    for label in label_rows:
        by_study[(label.site_id, label.study_key)].append(label)
    cases: list[LabelledCase] = []
    incomplete = 0
    for key, rows in sorted(by_study.items()):
        if key not in latest:  # a label waiting for its prediction
            continue
        if {row.finding for row in rows} != set(findings):
            incomplete += 1
            continue
        cases.append(_case(key, model_name, rows, latest[key]))
    return Cases(cases, incomplete)


def _read(
    engine: Engine, model_name: str, findings: Sequence[str]
) -> tuple[Sequence[_Row], Sequence[_Row]]:
    """The model's labels in force for ``findings``, and its inference events."""
    labels = table_of(CurrentLabelRow)
    with engine.connect() as connection:
        label_rows = connection.execute(
            select(labels).where(
                labels.c.model_name == model_name,
                labels.c.expired_at.is_(None),
                labels.c.finding.in_(list(findings)),
            )
        ).all()
        events = connection.execute(
            select(
                InferenceEventRow.site_id,
                InferenceEventRow.study_key,
                InferenceEventRow.occurred_at,
                InferenceEventRow.dicom_uri,
            ).where(InferenceEventRow.model_name == model_name)
        ).all()
    return label_rows, events


def _latest_events(events: Sequence[_Row]) -> dict[StudyKey, _Row]:
    """Each study's latest inference event."""
    latest: dict[StudyKey, _Row] = {}
    for event in events:
        key = (event.site_id, event.study_key)
        if key not in latest or as_utc(event.occurred_at) > as_utc(latest[key].occurred_at):
            latest[key] = event
    return latest


def _case(key: StudyKey, model_name: str, rows: Sequence[_Row], prediction: _Row) -> LabelledCase:
    """The study's case: its labels, the source and time of its newest label, its image."""
    newest = max(rows, key=lambda row: as_utc(row.labelled_at))
    return LabelledCase(
        study_key=key[1],
        site_id=key[0],
        model_name=model_name,
        labels={row.finding: int(row.label) for row in rows},
        label_source=LabelSource(newest.source),
        predicted_at=as_utc(prediction.occurred_at),
        labelled_at=as_utc(newest.labelled_at),
        dicom_uri=prediction.dicom_uri,
    )
