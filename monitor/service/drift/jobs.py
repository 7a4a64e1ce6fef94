"""The drift domain's scheduled job: every stream's site drift page (what `radsentry report`
writes), written nightly, with its Evidently appendix beside it when configured
(``reports.evidently_appendix``).

Entry points that the scheduler stores by reference are in ``monitor/service/jobs.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import structlog
from sqlalchemy import Engine, select

from monitor.drift.alerts import StreamKey
from monitor.drift.config import EngineConfig
from monitor.service.drift.site_page import build_page, render
from monitor.service.drift.site_report import site_report
from monitor.service.drift.streams import StreamNotFound
from monitor.service.logging import job_boundary
from monitor.service.models import DriftStreamRow
from monitor.service.settings import Settings

log = structlog.get_logger(__name__)


@job_boundary("nightly drift reports failed")
def nightly_drift_reports(engine: Engine, settings: Settings, reports_dir: Path) -> None:
    """Write today's drift report of every monitored stream under ``reports_dir``."""
    written = write_drift_reports(
        engine,
        settings.drift,
        reports_dir,
        evidently_appendix=settings.reports.evidently_appendix,
    )
    log.info("nightly drift reports written", reports=len(written), reports_dir=str(reports_dir))


def write_drift_reports(
    engine: Engine,
    config: EngineConfig,
    reports_dir: Path,
    day: date | None = None,
    *,
    evidently_appendix: bool = False,
) -> list[Path]:
    """One site drift page per stream: ``<reports_dir>/<site>/<day>/<model>-<version>.html``,
    and with ``evidently_appendix`` the stream's Evidently report beside it
    (``<model>-<version>.evidently.html``), which the page then links to.

    A stream still collecting its reference is skipped; any other failure is logged with the
    stream and the next stream is tried (a failed appendix leaves the page, linking to the
    API's appendix instead). Returns the files written.
    """
    day = day or datetime.now(UTC).date()
    query = select(
        DriftStreamRow.site_id, DriftStreamRow.model_name, DriftStreamRow.model_version
    ).order_by(DriftStreamRow.site_id, DriftStreamRow.model_name, DriftStreamRow.model_version)
    with engine.connect() as connection:
        streams = connection.execute(query).all()
    written: list[Path] = []
    for site_id, model_name, model_version in streams:
        key = StreamKey(site_id, model_name, model_version)
        context = {"site_id": site_id, "model_name": model_name, "model_version": model_version}
        try:
            written += _write_stream(
                engine,
                config,
                key,
                reports_dir / _safe(site_id) / day.isoformat(),
                evidently_appendix=evidently_appendix,
            )
        except StreamNotFound as exc:
            log.info("no drift report yet", reason=str(exc), **context)
        except Exception:
            log.exception("drift report failed", **context)
    return written


def _write_stream(
    engine: Engine, config: EngineConfig, key: StreamKey, folder: Path, *, evidently_appendix: bool
) -> list[Path]:
    """The stream's page in ``folder``, and its appendix if asked for; the files written."""
    page = build_page(
        engine, config, key.site_id, model_name=key.model_name, model_version=key.model_version
    )
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{_safe(key.model_name)}-{_safe(key.model_version)}"
    appendix = None
    if evidently_appendix:
        appendix = _write_appendix(engine, config, key, folder / f"{stem}.evidently.html")
        if appendix is not None:
            page = replace(page, appendix_url=appendix.name)  # the file beside the page
    written = [_write(folder / f"{stem}.html", render(page))]
    return written if appendix is None else [*written, appendix]


def _write_appendix(
    engine: Engine, config: EngineConfig, key: StreamKey, path: Path
) -> Path | None:
    """The stream's Evidently report at ``path``; None (logged) if it could not be built."""
    try:
        _, html = site_report(
            engine, config, key.site_id, model_name=key.model_name, model_version=key.model_version
        )
    except Exception:  # the page is the report; the appendix is a nice-to-have beside it
        log.exception("Evidently appendix failed; the page links to the API's", stream=str(key))
        return None
    return _write(path, html)


def _write(path: Path, html: str) -> Path:
    partial = path.with_suffix(".html.partial")
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, path)  # readers never see half a page
    return path


def _safe(part: str) -> str:
    """A path component from an identifier: no separators, never '.' or '..'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", part)
    return cleaned if cleaned.strip(".") else "_" + cleaned
