"""The drift domain's scheduled job: every stream's Evidently drift report, written nightly.

Entry points that the scheduler stores by reference are in ``monitor/service/jobs.py``.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime
from pathlib import Path

import structlog
from sqlalchemy import Engine, select

from monitor.drift.config import EngineConfig
from monitor.service.drift.site_report import site_report
from monitor.service.drift.streams import StreamNotFound
from monitor.service.logging import job_boundary
from monitor.service.models import DriftStreamRow
from monitor.service.settings import Settings

log = structlog.get_logger(__name__)


@job_boundary("nightly drift reports failed")
def nightly_drift_reports(engine: Engine, settings: Settings, reports_dir: Path) -> None:
    """Write today's drift report of every monitored stream under ``reports_dir``."""
    written = write_drift_reports(engine, settings.drift, reports_dir)
    log.info("nightly drift reports written", reports=len(written), reports_dir=str(reports_dir))


def write_drift_reports(
    engine: Engine, config: EngineConfig, reports_dir: Path, day: date | None = None
) -> list[Path]:
    """One Evidently report per stream: ``<reports_dir>/<site>/<day>/<model>-<version>.html``.

    A stream still collecting its reference is skipped; any other failure is logged with the
    stream and the next stream is tried. Returns the files written.
    """
    day = day or datetime.now(UTC).date()
    query = select(
        DriftStreamRow.site_id, DriftStreamRow.model_name, DriftStreamRow.model_version
    ).order_by(DriftStreamRow.site_id, DriftStreamRow.model_name, DriftStreamRow.model_version)
    with engine.connect() as connection:
        streams = connection.execute(query).all()
    written: list[Path] = []
    for site_id, model_name, model_version in streams:
        context = {"site_id": site_id, "model_name": model_name, "model_version": model_version}
        try:
            _, html = site_report(
                engine, config, site_id, model_name=model_name, model_version=model_version
            )
        except StreamNotFound as exc:
            log.info("no drift report yet", reason=str(exc), **context)
            continue
        except Exception:
            log.exception("drift report failed", **context)
            continue
        folder = reports_dir / _safe(site_id) / day.isoformat()
        path = folder / f"{_safe(model_name)}-{_safe(model_version)}.html"
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".html.partial")
        partial.write_text(html, encoding="utf-8")
        os.replace(partial, path)  # readers never see half a page
        written.append(path)
    return written


def _safe(part: str) -> str:
    """A path component from an identifier: no separators, never '.' or '..'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", part)
    return cleaned if cleaned.strip(".") else "_" + cleaned
