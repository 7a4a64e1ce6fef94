"""A per-site drift report a site manager can open: Evidently's data-drift preset as one HTML page.

Values in, an HTML string and a typed summary out; no file or network I/O of ours (Evidently
reads its bundled JavaScript and font from its package directory to inline them). The summary
comes from the same Evidently run as the page, so tests and the API can assert on what the page
shows without parsing HTML.

Evidently picks the test per column. Up to 1,000 reference rows: two-sample KS for numeric
columns, chi-square for categorical ones (a z-test for two values; numeric columns with at most
5 distinct values are treated so too), drift at p < 0.05. Above 1,000 rows: Wasserstein distance
(normed) and Jensen-Shannon distance, drift at >= 0.1. ``ColumnDrift.method`` says which ran.
"""

from __future__ import annotations

import html
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import pandas as pd  # type: ignore[import-untyped]
from evidently import DataDefinition, Dataset, Report  # type: ignore[import-untyped]
from evidently.presets import DataDriftPreset  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict

Row = Mapping[str, float | str | None]
"""One event: feature name -> value (None, or a key left out, = missing)."""

ColumnKind = Literal["numeric", "categorical"]


@dataclass(frozen=True, slots=True)
class ColumnDrift:
    """Evidently's verdict on one column.

    ``method`` is Evidently's test (e.g. ``"K-S p_value"``); ``score`` is its p-value (drift
    below ``threshold``) or distance (drift at or above it).
    """

    column: str
    kind: ColumnKind
    method: str
    score: float
    threshold: float
    is_drift: bool


@dataclass(frozen=True, slots=True)
class DroppedColumn:
    """A requested column that was left out of the report, and why."""

    column: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """What the report says, as values.

    ``share_drifted`` counts compared columns only (not dropped ones); ``dataset_drift`` is
    Evidently's dataset-level verdict: at least half of the compared columns drifted.
    """

    title: str
    n_reference: int
    n_current: int
    columns: tuple[ColumnDrift, ...]
    dropped: tuple[DroppedColumn, ...]
    n_drifted: int
    share_drifted: float
    dataset_drift: bool

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(column.column for column in self.columns if column.is_drift)


@dataclass(frozen=True, slots=True)
class DriftReport:
    """The page and its summary, from one Evidently run."""

    summary: ReportSummary
    html: str


def drift_report(
    reference: Sequence[Row],
    current: Sequence[Row],
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    title: str,
) -> DriftReport:
    """Compare ``current`` with ``reference`` column by column; return the page and its summary.

    Columns with no value at all on either side are left out and named in ``summary.dropped``.
    Raises ``ValueError`` for an empty sample, no columns, a column named twice, a numeric value
    that is not a number, or when no column is left to compare.
    """
    summary, snapshot = _run(reference, current, numeric, categorical, title)
    return DriftReport(summary, _standalone_page(snapshot.get_html_str(as_iframe=False), summary))


def drift_report_html(
    reference: Sequence[Row],
    current: Sequence[Row],
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    title: str,
) -> str:
    """The page of :func:`drift_report`: a full HTML document with its scripts inlined."""
    summary, snapshot = _run(reference, current, numeric, categorical, title)
    return _standalone_page(snapshot.get_html_str(as_iframe=False), summary)


def drift_report_summary(
    reference: Sequence[Row],
    current: Sequence[Row],
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    title: str,
) -> ReportSummary:
    """The summary of :func:`drift_report`, without rendering the (multi-megabyte) page."""
    return _run(reference, current, numeric, categorical, title)[0]


class _Snapshot(Protocol):
    """The part of ``evidently.Snapshot`` used here (Evidently ships no type hints)."""

    def json(self) -> str: ...

    def get_html_str(self, as_iframe: bool) -> str: ...


def _run(
    reference: Sequence[Row],
    current: Sequence[Row],
    numeric: Sequence[str],
    categorical: Sequence[str],
    title: str,
) -> tuple[ReportSummary, _Snapshot]:
    if not reference or not current:
        raise ValueError(f"empty sample: {len(reference)} reference, {len(current)} current rows")
    names = [*numeric, *categorical]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"name each column once, as numeric or categorical; got {names}")
    kinds: dict[str, ColumnKind] = {name: "numeric" for name in numeric}
    kinds |= {name: "categorical" for name in categorical}
    frames = _frame(reference, kinds), _frame(current, kinds)
    dropped = tuple(
        DroppedColumn(name, reason) for name in kinds if (reason := _empty_sides(name, *frames))
    )
    kept = [name for name in kinds if name not in {column.column for column in dropped}]
    if not kept:
        raise ValueError(f"no column has values in both samples: {dropped}")
    definition = DataDefinition(
        numerical_columns=[name for name in kept if kinds[name] == "numeric"],
        categorical_columns=[name for name in kept if kinds[name] == "categorical"],
    )
    # include_tests: each column's pass/fail is Evidently's own drift decision; reading it back
    # beats re-deriving it (p-values drift below the threshold, distances at or above).
    with warnings.catch_warnings():
        # Evidently divides by the spread of constant columns (bits stored, pixel spacing at
        # one scanner) while drawing them: numpy's warnings there say nothing about the data.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot: _Snapshot = Report([DataDriftPreset()], include_tests=True).run(
            current_data=Dataset.from_pandas(frames[1][kept], data_definition=definition),
            reference_data=Dataset.from_pandas(frames[0][kept], data_definition=definition),
        )
    parsed = _SnapshotDict.model_validate_json(snapshot.json())
    return _summarise(parsed, kinds, dropped, title, (len(reference), len(current))), snapshot


def _empty_sides(name: str, reference: pd.DataFrame, current: pd.DataFrame) -> str:
    sides = [
        side
        for side, frame in (("reference sample", reference), ("current window", current))
        if frame[name].isna().all()
    ]
    return f"no values in the {' or the '.join(sides)}" if sides else ""


def _frame(rows: Sequence[Row], kinds: Mapping[str, ColumnKind]) -> pd.DataFrame:
    # Explicit dtypes so Evidently never guesses: float64 with NaN for numeric columns, object
    # with None for categorical ones (labels as strings, so 1 and "1" are one category).
    columns: dict[str, pd.Series] = {}
    for name, kind in kinds.items():
        values = [row.get(name) for row in rows]
        if kind == "numeric":
            columns[name] = pd.Series([_number(name, value) for value in values], dtype="float64")
        else:
            labels = [None if value is None else str(value) for value in values]
            columns[name] = pd.Series(labels, dtype="object")
    return pd.DataFrame(columns)


def _number(column: str, value: float | str | None) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"numeric column {column!r} has a non-numeric value {value!r}") from None


class _Model(BaseModel):
    # Only the snapshot fields read here; Evidently may add others without breaking this.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _MetricConfig(_Model):
    type: str
    column: str | None = None
    method: str | None = None
    threshold: float | None = None


class _Metric(_Model):
    id: str
    config: _MetricConfig
    value: float | dict[str, float]


class _TestMetric(_Model):
    metric_id: str


class _Test(_Model):
    metric_config: _TestMetric
    status: Literal["SUCCESS", "FAIL", "WARNING", "ERROR", "SKIPPED"]


class _SnapshotDict(_Model):
    metrics: list[_Metric]
    tests: list[_Test]


def _summarise(
    snapshot: _SnapshotDict,
    kinds: Mapping[str, ColumnKind],
    dropped: tuple[DroppedColumn, ...],
    title: str,
    sizes: tuple[int, int],
) -> ReportSummary:
    failed = {test.metric_config.metric_id: test.status == "FAIL" for test in snapshot.tests}
    columns: list[ColumnDrift] = []
    counts: list[tuple[dict[str, float], bool]] = []
    for metric in snapshot.metrics:
        config, value, drifted = metric.config, metric.value, failed.get(metric.id)
        if drifted is None:
            continue
        if config.type.endswith(":ValueDrift") and isinstance(value, float):
            if config.column is None or config.method is None or config.threshold is None:
                raise RuntimeError(f"Evidently's ValueDrift result lacks its config: {config}")
            kind = kinds[config.column]
            columns.append(
                ColumnDrift(config.column, kind, config.method, value, config.threshold, drifted)
            )
        elif config.type.endswith(":DriftedColumnsCount") and isinstance(value, dict):
            counts.append((value, drifted))
    if len(columns) != len(kinds) - len(dropped) or len(counts) != 1:
        raise RuntimeError(f"Evidently's snapshot lacks drift results: {snapshot}")
    count, dataset_drift = counts[0]
    return ReportSummary(
        title, *sizes, tuple(columns), dropped, int(count["count"]), count["share"], dataset_drift
    )


# Evidently's page embeds the report data (column names, category labels) raw in an inline
# <script>; a label such as "</script><script>..." would end that script and run as code in the
# site manager's browser. JSON has no raw newline: the data block ends at the first "\n</script>".
_DATA_BLOCK = re.compile(r"<script>\s*var metric_\w+ = (.*?)\n</script>", re.DOTALL)
_HEAD_END = re.compile(r"</head>\n\s*<body>")


def _standalone_page(page: str, summary: ReportSummary) -> str:
    data = _DATA_BLOCK.search(page)
    head_end = _HEAD_END.search(page)
    if data is None or head_end is None or "<head>" not in page[: data.start()]:
        raise RuntimeError(
            "Evidently's HTML template changed; update monitor/service/drift/report.py"
        )
    # Edit back to front so that each edit leaves the positions of the earlier ones valid.
    page = page[: head_end.end()] + _header(summary) + page[head_end.end() :]
    # "\u003c" is "<" to JavaScript, but can no longer close the script.
    safe_data = data.group(1).replace("<", "\\u003c")
    page = page[: data.start(1)] + safe_data + page[data.end(1) :]
    return page.strip().replace("<head>", f"<head>\n<title>{html.escape(summary.title)}</title>", 1)


def _header(summary: ReportSummary) -> str:
    # Evidently's page has no title of its own; name the site, the sizes and what was left out.
    lines = [
        f"<h1>{html.escape(summary.title)}</h1>",
        f"<p>Reference: {summary.n_reference} events. Current window: {summary.n_current} events."
        f" Drifted columns: {summary.n_drifted} of {len(summary.columns)}.</p>",
    ]
    if summary.dropped:
        left_out = "; ".join(f"{d.column} ({d.reason})" for d in summary.dropped)
        lines.append(f"<p>Left out: {html.escape(left_out)}.</p>")
    return '\n<header style="font-family: sans-serif; margin: 1em">' + "".join(lines) + "</header>"
