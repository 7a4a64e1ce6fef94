"""The gate's evidence report as files: canonical JSON, and a self-contained HTML page.

The JSON (:func:`report_json`) is the record: sorted keys, two-space indent, so one report
always gives the same bytes and a hash of it identifies it. The HTML (:func:`report_html`) is
for the people who approve: the outcome in big letters, every regression beyond the noise
highlighted with a sentence, the operating threshold and where it came from, the decision
record (read from the change log, with the entries it was rendered from and how to verify
them), each criterion with its numbers, the per-site and subgroup tables, and two plots (ROC
curves and the reliability diagram of champion and candidate) inlined as SVG, so the page
needs no other file. Text from the plan and
the registry is escaped (Jinja2 autoescape). The plots are drawn on matplotlib ``Figure``
objects, never ``pyplot``, so no interactive backend or global figure state is touched.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Final

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from matplotlib import rc_context
from matplotlib.figure import Figure

from pccp.gate import GateOutcome, GateReport, ModelSummary

TEMPLATE: Final = "evidence.html.j2"
OUT_OF_SCOPE_SENTENCE: Final = "outside the PCCP: requires a new regulatory submission"
_COLOURS: Final = {"champion": "#7f7f7f", "candidate": "#1f77b4"}


def report_json(report: GateReport) -> bytes:
    """The report's canonical JSON: sorted keys, indent 2, a final newline."""
    document = report.model_dump(mode="json")
    return (json.dumps(document, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


@dataclass(frozen=True, slots=True)
class Signature:
    """An electronic signature as 21 CFR 11.50 asks it to be shown: the signer's identity and
    printed name, the date and time (UTC), and the meaning; with the change-log entry that
    records it."""

    signer: str
    signer_name: str | None
    decision: str
    meaning: str
    reason: str
    signed_at: datetime
    change_log_seq: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change-log entry about the candidate, as the decision record shows it."""

    seq: int
    recorded_at: datetime
    action: str
    actor: str
    sentence: str
    entry_hash: str
    authentic: bool
    """Its hash recomputes and a trusted audit key signed it (or it predates signing)."""


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """What was decided on the candidate since the gate ran, as of ``as_of``: its status, the
    signatures, the promotion and the rollback, read from the change-log entries ``history``
    (about ``subject``), which ``verify_command`` checks."""

    as_of: datetime
    status: str
    approvals_required: int | None
    signatures: Sequence[Signature]
    promoted_at: datetime | None = None
    promoted_by: str | None = None
    previous_champion: str | None = None
    rolled_back_at: datetime | None = None
    rolled_back_by: str | None = None
    subject: str | None = None
    history: Sequence[HistoryEntry] = ()
    verify_command: str = "radsentry audit verify"


def report_html(report: GateReport, decision: DecisionRecord | None = None) -> str:
    """The report as one self-contained HTML page; with ``decision``, also the decision record
    (signatures, promotion, rollback) below the outcome."""
    template = _environment().get_template(TEMPLATE)
    return template.render(
        report=report,
        decision=decision,
        out_of_scope=report.outcome is GateOutcome.OUT_OF_SCOPE,
        out_of_scope_sentence=OUT_OF_SCOPE_SENTENCE,
        group_fields=_sites_first(group.field for group in report.groups),
        roc_svg=Markup(_roc_svg(report)),
        calibration_svg=Markup(_calibration_svg(report)),
    )


@cache
def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("pccp", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = _number
    return environment


def _number(value: float | int | str | bool | None) -> str:
    """Floats to four significant digits; None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _sites_first(fields: Iterable[str]) -> list[str]:
    """Each field once, ``site`` first, the others as they came."""
    unique = list(dict.fromkeys(fields))
    return sorted(unique, key=lambda field: field != "site")


def _models(report: GateReport) -> tuple[tuple[str, ModelSummary], ...]:
    return (("champion", report.champion), ("candidate", report.candidate))


def _roc_svg(report: GateReport) -> str:
    figure = Figure(figsize=(4.8, 4.4))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="#bbbbbb", label="chance")
    for role, model in _models(report):
        axes.plot(
            model.roc_false_positive_rate,
            model.roc_true_positive_rate,
            color=_COLOURS[role],
            label=f"{role} {model.version} (AUROC {model.auroc:.3f})",
        )
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    axes.set_title("ROC on the locked test set")
    axes.legend(loc="lower right", fontsize="small")
    return _svg(figure)


def _calibration_svg(report: GateReport) -> str:
    figure = Figure(figsize=(4.8, 4.4))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="#bbbbbb", label="perfect calibration")
    for role, model in _models(report):
        points = [
            (b.mean_score, b.observed_rate)
            for b in model.reliability
            if b.mean_score is not None and b.observed_rate is not None
        ]
        ece = f"ECE {model.ece:.3f}" if model.ece is not None else "ECE –"
        axes.plot(
            [predicted for predicted, _ in points],
            [observed for _, observed in points],
            marker="o",
            color=_COLOURS[role],
            label=f"{role} {model.version} ({ece})",
        )
    axes.set(xlabel="mean predicted probability", ylabel="observed rate", xlim=(0, 1))
    axes.set(ylim=(0, 1.01))
    axes.set_title("Reliability (10 bins)")
    axes.legend(loc="upper left", fontsize="small")
    return _svg(figure)


def _svg(figure: Figure) -> str:
    """The figure as an inline ``<svg>`` element (the XML prologue and doctype removed)."""
    buffer = io.StringIO()
    # Text stays text (smaller, searchable); a fixed salt makes the element ids reproducible.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "radsentry-evidence"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]
