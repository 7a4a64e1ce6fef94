"""The site drift page: what changed at a site, since when and how sure, built around its alerts.

For one stream (a model version at a site) the page puts first the features that drift now:
those named by its drifting alerts and those its latest checks flag, most severe first, each
with its meaning, the evidence in words (p-value against the detector's threshold, effect
against the threshold learned from the reference) and one reference-vs-current plot. Then the
alerts with links to the API's alert routes, the reference's and the current sample's dates,
the features that did not drift (collapsed), and a glossary. The Evidently page
(``GET /sites/{site_id}/report``) stays the detailed appendix, linked from here.

:func:`build_page` reads (the stream's saved state, its latest events, checks and alerts);
:func:`render` is values in, HTML out (Jinja2 with autoescape: category labels from events are
escaped like everything else). No script, stylesheet or font is fetched: the page is one file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Final
from urllib.parse import quote, urlencode

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy import Engine

from monitor.drift import calibration
from monitor.drift.alerts import DETECTOR_LABELS
from monitor.drift.config import EMBEDDING_DETECTOR, ONLINE_DETECTOR, EngineConfig
from monitor.drift.directions import DIRECTION_PREFIX
from monitor.drift.features import PIXEL_FIELD, RowBuffer
from monitor.drift.severity import Severity
from monitor.drift.stream import StreamState
from monitor.service.drift import alerts as alerts_store
from monitor.service.drift import charts, glossary
from monitor.service.drift.site_page_values import (
    AlertLine,
    Evidence,
    FeatureView,
    Period,
    SitePage,
)
from monitor.service.drift.site_report import StreamSamples, load_samples
from monitor.service.drift.streams import latest_checks
from monitor.service.models import AlertRow, DriftCheckRow

TEMPLATE: Final = "site_drift.html.j2"
MISSINGNESS: Final = "missingness"
_FEATURES_NAMED: Final = 3
"""A multivariate check (MMD, online) names its largest contributors, as its alert does."""


def build_page(
    engine: Engine,
    config: EngineConfig,
    site_id: str,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    current_size: int | None = None,
    now: datetime | None = None,
    appendix_link: str | None = None,
) -> SitePage:
    """The page's values for the most recently updated stream at ``site_id`` that matches.

    The current sample is the stream's latest ``current_size`` events (by default a window's
    worth), as in the Evidently appendix. Raises StreamNotFound like the appendix.
    """
    samples = load_samples(
        engine,
        config,
        site_id,
        model_name=model_name,
        model_version=model_version,
        current_size=current_size,
    )
    key, reference_id = samples.key, samples.stream.reference_info.reference_id
    # Checks against an earlier reference (before a re-baselining) say nothing about this one.
    checks = {
        check.detector: check
        for check in latest_checks(engine, site_id)
        if (check.model_name, check.model_version) == (key.model_name, key.model_version)
        and check.reference_id == reference_id
    }
    alert_rows = alerts_store.stream_alerts(engine, key)
    flagged = _flagged(samples.stream, checks, alert_rows)
    views = _feature_views(samples, checks, flagged) + _missing_views(samples, checks, flagged)
    drifting = sorted((v for v in views if v.drifting), key=lambda v: v.sort_key)
    query = {"model_name": key.model_name, "model_version": key.model_version}
    appendix_query = query if appendix_link is None else {**query, "link": appendix_link}
    return SitePage(
        key=key,
        generated_at=now or datetime.now(UTC),
        reference=Period.of(samples.stream.reference),
        reference_origin=_origin(samples.stream),
        current=Period.of(samples.current),
        alerts=tuple(_alert_line(row) for row in alert_rows),
        drifting=tuple(drifting),
        stable=tuple(v for v in views if not v.drifting and v.group != "missing field"),
        glossary=tuple(
            glossary.glossary(samples.stream.schema.findings, samples.stream.schema.embedding)
        ),
        appendix_url=f"/sites/{quote(key.site_id)}/report?{urlencode(appendix_query)}",
        alerts_url=f"/alerts?{urlencode({'site_id': key.site_id})}",
        checks=tuple(_check_summary(check) for check in checks.values()),
    )


def page_html(
    engine: Engine,
    config: EngineConfig,
    site_id: str,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    current_size: int | None = None,
    appendix_link: str | None = None,
) -> str:
    """:func:`build_page` and :func:`render` in one call (the API runs it in a thread)."""
    page = build_page(
        engine,
        config,
        site_id,
        model_name=model_name,
        model_version=model_version,
        current_size=current_size,
        appendix_link=appendix_link,
    )
    return render(page)


def render(page: SitePage) -> str:
    """The page as one self-contained HTML document."""
    template = _environment().get_template(TEMPLATE)
    return template.render(page=page, labels=DETECTOR_LABELS)


@dataclass
class _Flag:
    """Why a feature counts as drifting: the alerts and checks that name it."""

    detector: str
    severity: Severity | None = None
    since: datetime | None = None
    alert_ids: list[str] = field(default_factory=list)

    def add(self, severity: Severity | None, since: datetime | None) -> None:
        if severity is not None and (self.severity is None or severity.rank > self.severity.rank):
            self.severity = severity
        if since is not None and (self.since is None or since < self.since):
            self.since = since


def _flagged(
    stream: StreamState, checks: Mapping[str, DriftCheckRow], alerts: Sequence[AlertRow]
) -> dict[tuple[str, str], _Flag]:
    """(detector group, feature) -> why it drifts; the group is "missingness" for a missing
    field and "" for a feature's values."""
    flags: dict[tuple[str, str], _Flag] = {}
    for alert in alerts:
        if not alert.drift_active:
            continue
        for feature in alert.features:
            flag = flags.setdefault(_flag_key(alert.detector, feature), _Flag(alert.detector))
            flag.add(Severity(alert.severity), alert.since)
            flag.alert_ids.append(str(alert.alert_id))
    for detector, check in checks.items():
        if not check.is_drift:
            continue
        severity = Severity(check.severity) if check.severity else None
        for feature in _check_features(stream, check):
            flags.setdefault(_flag_key(detector, feature), _Flag(detector)).add(severity, None)
    return flags


def _flag_key(detector: str, feature: str) -> tuple[str, str]:
    return (MISSINGNESS if detector == MISSINGNESS else "", feature)


def _check_features(stream: StreamState, check: DriftCheckRow) -> list[str]:
    """The features a drifting check names: significant ones beyond their effect threshold,
    or a multivariate test's largest contributors (the rule its alert follows)."""
    attributions = check.attributions
    tested = [a for a in attributions if a.get("p_value") is not None]
    if tested and check.threshold is not None:
        learned, floor = stream.learned.get(check.detector), stream.floor(check.detector)
        return [
            a["feature"]
            for a in tested
            if a["p_value"] <= check.threshold
            and a["effect_size"] >= calibration.effect_threshold(learned, a["feature"], floor)[0]
        ]
    ranked = sorted(attributions, key=lambda a: abs(a.get("effect_size") or 0.0), reverse=True)
    return [a["feature"] for a in ranked[:_FEATURES_NAMED]]


def _feature_views(
    samples: StreamSamples,
    checks: Mapping[str, DriftCheckRow],
    flagged: Mapping[tuple[str, str], _Flag],
) -> list[FeatureView]:
    stream, current = samples.stream, samples.current
    schema = stream.schema
    views: list[FeatureView] = []
    groups = (
        (schema.pixels, "pixel statistic", ("mmd", ONLINE_DETECTOR)),
        (schema.metadata, "DICOM metadata", ("ks",)),
        (schema.findings, "model score", ("score_ks",)),
        (schema.embedding, "embedding component", (EMBEDDING_DETECTOR,)),
    )
    names = schema.numeric
    for features, group, detectors in groups:
        for feature in features:
            column = names.index(feature)
            chart = charts.numeric_chart(
                stream.reference.numeric[:, column], current.numeric[:, column]
            )
            views.append(_view(stream, feature, group, detectors, checks, flagged, chart))
    for index, feature in enumerate(schema.categorical):
        chart = charts.categorical_chart(
            stream.vocabulary.decode(index, stream.reference.codes[:, index]),
            stream.vocabulary.decode(index, current.codes[:, index]),
        )
        views.append(_view(stream, feature, "DICOM metadata", ("chi2",), checks, flagged, chart))
    return views


def _view(
    stream: StreamState,
    feature: str,
    group: str,
    detectors: Sequence[str],
    checks: Mapping[str, DriftCheckRow],
    flagged: Mapping[tuple[str, str], _Flag],
    chart: charts.Chart,
    flag_group: str = "",
) -> FeatureView:
    flag = flagged.get((flag_group, feature))
    if flag is not None:
        detectors = [flag.detector, *detectors]
    evidence = next(
        (e for d in detectors if d in checks and (e := _evidence(stream, checks[d], feature))),
        None,
    )
    title = f"{feature} missing" if flag_group == MISSINGNESS else feature
    return FeatureView(
        name=feature,
        title=title,
        meaning=glossary.describe(feature, stream.schema.findings),
        group=group,
        chart=chart,
        evidence=evidence,
        drifting=flag is not None,
        severity=flag.severity if flag else None,
        since=flag.since if flag else None,
        alert_ids=tuple(dict.fromkeys(flag.alert_ids)) if flag else (),
    )


def _missing_views(
    samples: StreamSamples,
    checks: Mapping[str, DriftCheckRow],
    flagged: Mapping[tuple[str, str], _Flag],
) -> list[FeatureView]:
    """A view of each field whose missingness drifts (share of events missing it)."""
    stream, current = samples.stream, samples.current
    views = []
    for group, feature in flagged:
        if group != MISSINGNESS:
            continue
        chart = charts.missing_chart(
            _missing_share(stream, stream.reference, feature),
            _missing_share(stream, current, feature),
        )
        views.append(
            _view(stream, feature, "missing field", (MISSINGNESS,), checks, flagged, chart, group)
        )
    return views


def _missing_share(stream: StreamState, buffer: RowBuffer, feature: str) -> float:
    if not len(buffer):
        return math.nan
    schema = stream.schema
    if feature in schema.categorical:
        return float((buffer.codes[:, schema.categorical.index(feature)] < 0).mean())
    column = 0 if feature == PIXEL_FIELD else schema.numeric.index(feature)
    return float(np.isnan(buffer.numeric[:, column]).mean())


def _evidence(stream: StreamState, check: DriftCheckRow, feature: str) -> Evidence | None:
    attribution = next((a for a in check.attributions if a.get("feature") == feature), None)
    if attribution is None:
        return None
    p_value = attribution.get("p_value")
    learned = stream.learned.get(check.detector)
    if p_value is not None:
        limit, found = calibration.effect_threshold(learned, feature, stream.floor(check.detector))
        effect_name = check.effect_size_name
    else:  # a multivariate test: the feature's own shift, no threshold of its own
        limit, found, effect_name = 0.0, None, "shift in reference standard deviations"
    return Evidence(
        detector=check.detector,
        p_value=p_value,
        p_threshold=check.threshold,
        effect_size=attribution.get("effect_size"),
        effect_name=effect_name,
        effect_threshold=limit or None,
        threshold_learned=found is not None,
        sentence=attribution.get("explanation"),
        joint_p_value=check.p_value if p_value is None else None,
    )


def _check_summary(check: DriftCheckRow) -> tuple[str, str]:
    label = DETECTOR_LABELS.get(check.detector, check.detector)
    window = (
        f"{check.n_window} events from {check.window_start:%Y-%m-%d %H:%M} to "
        f"{check.window_end:%Y-%m-%d %H:%M} UTC"
    )
    if check.skipped:
        return label, f"skipped ({check.skipped}); {window}"
    verdict = "drift" if check.is_drift else "no drift"
    p_value = f", p-value {check.p_value:.2g}" if check.p_value is not None else ""
    severity = f", {check.severity}" if check.severity else ""
    direction = next(
        (
            f"; {a.get('explanation')}"
            for a in check.attributions
            if str(a.get("feature", "")).startswith(DIRECTION_PREFIX)
        ),
        "",
    )
    return label, f"{verdict}{severity}{p_value}{direction}; {window}"


def _alert_line(row: AlertRow) -> AlertLine:
    return AlertLine(
        alert_id=str(row.alert_id),
        detector=row.detector,
        severity=row.severity,
        status=row.status,
        drift_active=row.drift_active,
        since=row.since,
        window_start=row.window_start,
        window_end=row.window_end,
        features=tuple(row.features),
        explanation=row.explanation,
        url=f"/alerts/{row.alert_id}",
    )


def _origin(stream: StreamState) -> str:
    info = stream.reference_info
    if info.source == "first_events":
        return "the stream's first events"
    by = f" by {info.requested_by}" if info.requested_by else ""
    why = f" ({info.reason})" if info.reason else ""
    how = "an uploaded sample" if info.source == "uploaded" else "the events after a re-baselining"
    return f"{how}{by}{why}"


def _when(value: datetime | None) -> str:
    return "–" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


@cache
def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("monitor.service.drift", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["when"] = _when
    return environment
