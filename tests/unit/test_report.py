"""The Evidently drift report: its summary on same and shifted samples, the page, edge cases.

Seeded samples; each Evidently run takes ~0.3 s, so the shifted report is built once per module
and read by several tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from monitor.service.drift.report import (
    ReportSummary,
    Row,
    drift_report,
    drift_report_html,
    drift_report_summary,
)

NUMERIC = ("KVP", "ExposureTime", "PatientAge")
CATEGORICAL = ("Modality", "Manufacturer")
MODALITY = {"CT": 0.6, "MR": 0.3, "CR": 0.1}
MANUFACTURER = {"GE": 0.5, "Siemens": 0.3, "Philips": 0.2}
TITLE = "Site north-3: reference vs current window"

Event = dict[str, float | str | None]

# A window with a category the reference never had makes scipy's chi-square divide by a zero
# expected count (Evidently still reports p = 0, i.e. drift); the warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")


def events(
    rng: np.random.Generator,
    n: int,
    *,
    kvp_shift_sd: float = 0.0,
    modality: dict[str, float] = MODALITY,
) -> list[Event]:
    kvp = rng.normal(120.0 + 10.0 * kvp_shift_sd, 10.0, n)
    exposure = rng.lognormal(3.0, 0.4, n)
    age = rng.normal(60.0, 15.0, n)
    modalities = rng.choice(list(modality), size=n, p=list(modality.values()))
    makers = rng.choice(list(MANUFACTURER), size=n, p=list(MANUFACTURER.values()))
    return [
        {
            "KVP": float(kvp[i]),
            "ExposureTime": float(exposure[i]),
            "PatientAge": float(age[i]),
            "Modality": str(modalities[i]),
            "Manufacturer": str(makers[i]),
        }
        for i in range(n)
    ]


def summary_of(reference: list[Event], current: list[Event]) -> ReportSummary:
    return drift_report_summary(
        reference, current, numeric=NUMERIC, categorical=CATEGORICAL, title=TITLE
    )


@pytest.fixture(scope="module")
def shifted() -> tuple[ReportSummary, str]:
    rng = np.random.default_rng(1)
    reference = events(rng, 300)
    current = events(rng, 150, kvp_shift_sd=2.0, modality={"CT": 0.3, "MR": 0.3, "DX": 0.4})
    report = drift_report(reference, current, numeric=NUMERIC, categorical=CATEGORICAL, title=TITLE)
    return report.summary, report.html


def test_same_distribution_drifts_little() -> None:
    rng = np.random.default_rng(0)
    summary = summary_of(events(rng, 300), events(rng, 150))

    assert [column.column for column in summary.columns] == [*NUMERIC, *CATEGORICAL]
    assert summary.n_drifted <= 1  # five tests at 5% each: one false alarm is possible
    assert not summary.dataset_drift
    assert summary.dropped == ()
    assert (summary.n_reference, summary.n_current) == (300, 150)


def test_shift_flags_the_shifted_columns(shifted: tuple[ReportSummary, str]) -> None:
    summary, _ = shifted
    verdicts = {column.column: column for column in summary.columns}

    assert {"KVP", "Modality"} <= set(summary.drifted_columns)
    assert verdicts["KVP"].kind == "numeric" and verdicts["KVP"].method == "K-S p_value"
    assert verdicts["Modality"].kind == "categorical"
    assert not verdicts["PatientAge"].is_drift
    assert summary.n_drifted == len(summary.drifted_columns)
    assert summary.share_drifted == pytest.approx(summary.n_drifted / len(summary.columns))
    for column in summary.columns:  # all p-value tests at this size: drift below the threshold
        assert column.is_drift == (column.score < column.threshold)


def test_page_is_a_full_document_with_title_and_columns(
    shifted: tuple[ReportSummary, str],
) -> None:
    _, page = shifted

    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    assert f"<title>{TITLE}</title>" in page
    assert f"<h1>{TITLE}</h1>" in page
    for name in (*NUMERIC, *CATEGORICAL):
        assert name in page


def test_labels_cannot_break_out_of_the_page_script() -> None:
    rng = np.random.default_rng(2)
    hostile = "</script><script>alert(1)</script>"
    reference: list[Row] = [{"Modality": "CT", "KVP": float(v)} for v in rng.normal(size=40)]
    current: list[Row] = [{"Modality": hostile, "KVP": float(v)} for v in rng.normal(size=20)]

    page = drift_report_html(
        reference, current, numeric=["KVP"], categorical=["Modality"], title="<b>site</b>"
    )

    assert hostile not in page
    assert "<title>&lt;b&gt;site&lt;/b&gt;</title>" in page


def test_columns_without_values_are_dropped_and_named() -> None:
    rng = np.random.default_rng(3)
    reference, current = events(rng, 100), events(rng, 50)
    for row in current:
        del row["ExposureTime"]  # a key left out counts as missing, like None
    for row in reference:
        row["Manufacturer"] = None

    summary = summary_of(reference, current)

    assert [(d.column, d.reason) for d in summary.dropped] == [
        ("ExposureTime", "no values in the current window"),
        ("Manufacturer", "no values in the reference sample"),
    ]
    assert [column.column for column in summary.columns] == ["KVP", "PatientAge", "Modality"]


def test_partly_missing_values_are_compared() -> None:
    rng = np.random.default_rng(4)
    reference, current = events(rng, 100), events(rng, 50)
    for row in current[::2]:
        row["KVP"] = None

    summary = summary_of(reference, current)

    assert "KVP" in [column.column for column in summary.columns]
    assert summary.dropped == ()


@pytest.mark.parametrize(
    ("reference", "current", "numeric", "message"),
    [
        ([], [{"KVP": 1.0}], ["KVP"], "empty sample"),
        ([{"KVP": 1.0}], [], ["KVP"], "empty sample"),
        ([{"KVP": 1.0}], [{"KVP": 1.0}], [], "name each column once"),
        ([{"KVP": 1.0}], [{"KVP": 1.0}], ["KVP", "KVP"], "name each column once"),
        ([{"KVP": "high"}], [{"KVP": 1.0}], ["KVP"], "non-numeric value 'high'"),
        ([{"KVP": None}], [{"KVP": 1.0}], ["KVP"], "no column has values in both samples"),
    ],
)
def test_unusable_input_is_a_value_error(
    reference: list[Row], current: list[Row], numeric: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        drift_report_summary(reference, current, numeric=numeric, categorical=[], title=TITLE)
