"""Build every dashboard to Grafana's JSON model and write them as ``<uid>.json``.

``make dashboards`` (``radsentry dashboards export --out dashboards/generated``) writes the
checked-in copies; tests/unit/test_dashboards.py fails when they differ from :func:`build_all`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import fleet, governance, model_performance, site_overview
from dashboards.common import FOLDER

JsonObject = dict[str, object]


@dataclass(frozen=True)
class DashboardSource:
    """One dashboard: its stable uid, the Grafana folder it belongs in, and its builder."""

    uid: str
    folder: str
    build: Callable[[], Dashboard]


DASHBOARDS: tuple[DashboardSource, ...] = (
    DashboardSource(site_overview.UID, FOLDER, site_overview.build),
    DashboardSource(model_performance.UID, FOLDER, model_performance.build),
    DashboardSource(fleet.UID, FOLDER, fleet.build),
    DashboardSource(governance.UID, FOLDER, governance.build),
)


def to_json(builder: Dashboard) -> JsonObject:
    """The dashboard's JSON model, with panel ids numbered 1, 2, ... in layout order (stable
    as long as the order of the panels in the module is)."""
    document = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    if not isinstance(document, dict):
        raise TypeError("a dashboard encodes to a JSON object")
    _number_panels(document)
    return document


def _number_panels(document: JsonObject) -> None:
    next_id = 1
    panels = document.get("panels")
    stack = list(panels) if isinstance(panels, list) else []
    while stack:
        panel = stack.pop(0)
        if not isinstance(panel, dict):
            continue
        panel["id"] = next_id
        next_id += 1
        nested = panel.get("panels")
        if isinstance(nested, list):
            stack[0:0] = nested


def build_all() -> dict[str, JsonObject]:
    """uid -> JSON model of every dashboard."""
    return {source.uid: to_json(source.build()) for source in DASHBOARDS}


def dumps(document: JsonObject) -> str:
    """The file content: sorted keys, two-space indent, trailing newline (stable diffs)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_all(out_dir: Path) -> list[Path]:
    """Write ``<uid>.json`` for every dashboard into ``out_dir`` (created if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, document in build_all().items():
        path = out_dir / f"{uid}.json"
        path.write_text(dumps(document), encoding="utf-8")
        written.append(path)
    return written
