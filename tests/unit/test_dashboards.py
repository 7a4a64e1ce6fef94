"""The dashboards as code: generated JSON up to date, the shape Grafana and site managers need,
and every query within the data contract (the metrics and views tables of docs/dashboards.md).
The queries themselves run against a real Prometheus and PostgreSQL in the integration tests;
the traffic light's PromQL also runs here, in promtool (Prometheus' own engine)."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.build import DASHBOARDS, build_all, dumps
from dashboards.common import (
    FOLDER,
    POSTGRES_TYPE,
    POSTGRES_UID,
    PROMETHEUS_TYPE,
    PROMETHEUS_UID,
    TAG,
)
from dashboards.queries import PanelQuery, Substitution, panel_queries, render

ROOT = Path(__file__).parents[2]
GENERATED = ROOT / "dashboards" / "generated"
PROVISIONING = ROOT / "dashboards" / "provisioning"
CONTRACT_FILES = (ROOT / "docs" / "dashboards.md",)

BUILT = build_all()
DATASOURCE_VARIABLES = {"${prometheus}": PROMETHEUS_TYPE, "${postgres}": POSTGRES_TYPE}
REQUIRED_VARIABLES = {
    "radsentry-site-overview": {"prometheus", "postgres", "site", "model"},
    "radsentry-model-performance": {"prometheus", "postgres", "site", "model", "finding"},
    "radsentry-fleet": {"prometheus", "postgres", "model", "finding"},
    "radsentry-governance": {"prometheus", "postgres", "model"},
}


def _variables(document: dict[str, object]) -> dict[str, dict[str, object]]:
    templating = document["templating"]
    assert isinstance(templating, dict)
    return {variable["name"]: variable for variable in templating["list"]}


def _panels(document: dict[str, object]) -> list[dict[str, object]]:
    panels = document["panels"]
    assert isinstance(panels, list)
    return [*panels, *(inner for panel in panels for inner in panel.get("panels", []))]


def _contract() -> tuple[set[str], set[str], dict[str, set[str]]]:
    """Metric names, label names and view -> columns, from the contract's tables in
    docs/dashboards.md."""
    metrics: set[str] = set()
    labels: set[str] = set()
    views: dict[str, set[str]] = {}
    sources = [path for path in CONTRACT_FILES if path.exists()]
    for line in "\n".join(path.read_text(encoding="utf-8") for path in sources).splitlines():
        cells = [cell.strip() for cell in line.replace("`", "").strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("radsentry_"):
            metrics.update(name.strip() for name in cells[0].split(","))
            labels.update(re.findall(r"[a-z_]+", cells[2].replace("same as", "")))
        elif len(cells) >= 2 and cells[0].startswith("grafana."):
            columns = re.sub(r"\([^)]*\)", "", cells[1])
            views[cells[0].removeprefix("grafana.")] = {
                column.strip() for column in columns.split(",") if column.strip()
            }
    labels -= {"none", *metrics}
    return metrics, labels, views


def test_the_checked_in_json_is_what_the_code_builds() -> None:
    on_disk = {path.stem for path in GENERATED.glob("*.json")}
    assert on_disk == set(BUILT), "dashboards/generated/ is stale: run `make dashboards`"
    for uid, document in BUILT.items():
        text = (GENERATED / f"{uid}.json").read_text(encoding="utf-8")
        assert text == dumps(document), f"{uid}.json is stale: run `make dashboards`"


def test_uids_are_stable_and_unique() -> None:
    assert set(BUILT) == set(REQUIRED_VARIABLES)
    assert [source.uid for source in DASHBOARDS] == [doc["uid"] for doc in BUILT.values()]
    assert len({doc["title"] for doc in BUILT.values()}) == len(BUILT)


@pytest.mark.parametrize("uid", sorted(BUILT))
def test_each_dashboard_is_tagged_foldered_and_explained(uid: str) -> None:
    document = BUILT[uid]
    assert TAG in document["tags"]  # type: ignore[operator]
    assert {source.folder for source in DASHBOARDS if source.uid == uid} == {FOLDER}
    assert "id" not in document, "a provisioned dashboard must not carry a database id"
    texts = [panel for panel in _panels(document) if panel["type"] == "text"]
    assert texts, "every dashboard starts with a text panel that explains how to read it"
    options = texts[0]["options"]
    assert isinstance(options, dict) and options["mode"] == "markdown"
    assert len(str(options["content"])) > 200


@pytest.mark.parametrize("uid", sorted(BUILT))
def test_panel_ids_are_unique(uid: str) -> None:
    ids = [panel["id"] for panel in _panels(BUILT[uid])]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)


@pytest.mark.parametrize("uid", sorted(BUILT))
def test_every_query_reads_one_of_the_two_datasource_variables(uid: str) -> None:
    document = BUILT[uid]
    for panel in _panels(document):
        if panel["type"] in ("text", "row"):
            assert not panel.get("targets")
            continue
        source = panel["datasource"]
        assert isinstance(source, dict)
        assert DATASOURCE_VARIABLES.get(str(source["uid"])) == source["type"], panel["title"]
        for target in panel["targets"]:  # type: ignore[attr-defined]
            assert "datasource" not in target or target["datasource"] == source
    annotations = document["annotations"]
    assert isinstance(annotations, dict)
    for annotation in annotations.get("list", []):
        source = annotation["datasource"]
        assert DATASOURCE_VARIABLES.get(source["uid"]) == source["type"]


@pytest.mark.parametrize("uid", sorted(BUILT))
def test_variables_are_the_required_ones_and_all_used(uid: str) -> None:
    document = BUILT[uid]
    variables = _variables(document)
    assert set(variables) == REQUIRED_VARIABLES[uid]
    text = "\n".join(query.query for query in panel_queries(document))
    used = set(re.findall(r"\$\{?([a-z]\w*)", text)) | {"prometheus", "postgres"}
    assert used == set(variables), "a variable no query uses, or a query using an undefined one"
    assert variables["prometheus"]["current"]["value"] == PROMETHEUS_UID  # type: ignore[index]
    assert variables["postgres"]["current"]["value"] == POSTGRES_UID  # type: ignore[index]


def test_a_site_manager_sees_one_site_by_default() -> None:
    """No "All" and no multi-select on `site`, and no saved value: Grafana then selects the
    first site, so a dashboard never opens on every site at once."""
    for uid, document in BUILT.items():
        site = _variables(document).get("site")
        if site is None:
            continue
        assert site["includeAll"] is False and site["multi"] is False, uid
        assert "current" not in site, uid
        assert site["query"] == "label_values(radsentry_events_consumed_total, site_id)"


def test_queries_use_only_the_contracts_metrics_labels_and_views() -> None:
    metrics, labels, views = _contract()
    assert len(metrics) >= 17 and len(views) == 14  # the parser found the tables
    all_columns = set().union(*views.values())
    for uid, document in BUILT.items():
        for query in panel_queries(document):
            where = f"{uid} / {query.panel_title} ({query.ref_id})"
            if query.kind == "prometheus":
                assert set(re.findall(r"\bradsentry_\w+", query.query)) <= metrics, where
                used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", query.query))
                for group in re.findall(r"by \(([^)]*)\)", query.query):
                    used.update(label.strip() for label in group.split(","))
                assert used <= labels, (where, used - labels)
            else:
                read = set(re.findall(r"\bgrafana\.(\w+)", query.query))
                assert read and read <= set(views), where
                allowed = set().union(*(views[view] for view in read))
                # String literals and multi-word aliases ("delay p50") name no column.
                bare = re.sub(r"'[^']*'|\"[^\"]* [^\"]*\"", "", query.query)
                tokens = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", bare))
                assert tokens & all_columns <= allowed, (where, tokens & all_columns - allowed)
                assert not re.search(r'(?<!")\bwindow\b(?!")', query.query), (
                    f'{where}: `window` is reserved in SQL, write "window"'
                )


def _panel(uid: str, title: str) -> dict[str, Any]:
    (panel,) = [p for p in _panels(BUILT[uid]) if p["title"] == title]
    return panel


def _overrides(panel: dict[str, Any]) -> dict[str, dict[str, object]]:
    """Matcher option (a field name or regexp) -> its properties by id."""
    return {
        o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
        for o in panel["fieldConfig"]["overrides"]
    }


def test_the_site_overview_compares_effects_with_their_learned_thresholds() -> None:
    panel = _panel("radsentry-site-overview", "Effect vs learned threshold")
    assert panel["type"] == "timeseries"
    effect, threshold = (target["expr"] for target in panel["targets"])
    assert "radsentry_drift_effect_size" in effect and "radsentry_drift_effect_threshold" in effect
    assert threshold.startswith("radsentry_drift_effect_threshold")
    assert panel["targets"][1]["legendFormat"].endswith(" learned threshold")
    assert _overrides(panel)["/ learned threshold$/"]["custom.lineStyle"]["fill"] == "dash"
    assert "week-to-week" in panel["description"]
    assert '"N x its learned threshold"' in panel["description"]


def test_the_site_overview_plots_the_health_score_with_its_band_and_alert_episodes() -> None:
    document = BUILT["radsentry-site-overview"]
    panel = _panel("radsentry-site-overview", "Health score")
    assert panel["type"] == "timeseries" and panel["datasource"]["uid"] == "${prometheus}"
    health, lower, upper = (target["expr"] for target in panel["targets"])
    assert health.startswith("radsentry_health_score{")
    assert lower.startswith("radsentry_health_score_lower{")
    assert upper.startswith("radsentry_health_score_upper{")
    assert all('site_id="$site"' in e for e in (health, lower, upper)), health
    assert _overrides(panel)["/ (lower|upper)$/"]["custom.lineStyle"]["fill"] == "dash"
    defaults = panel["fieldConfig"]["defaults"]
    assert (defaults["min"], defaults["max"]) == (0, 100)
    steps = defaults["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [
        (None, "red"),
        (50, "orange"),
        (80, "green"),
    ]
    # The alert episodes: the dashboard's alert annotation marks them on every time chart.
    [alerts] = [a for a in document["annotations"]["list"] if a["name"] == "Alerts"]
    assert alerts["enable"] is True and alerts["datasource"]["uid"] == "${postgres}"
    assert "Red regions: alert episodes" in panel["description"]


def test_time_in_alarm_is_a_share_coloured_green_amber_red() -> None:
    panel = _panel("radsentry-site-overview", "Time in alarm")
    assert panel["type"] == "bargauge"
    (target,) = panel["targets"]
    assert target["expr"].startswith("radsentry_drift_time_in_alarm") and target["instant"]
    defaults = panel["fieldConfig"]["defaults"]
    assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percentunit", 0, 1)
    steps = [(step["value"], step["color"]) for step in defaults["thresholds"]["steps"]]
    assert steps == [(None, "green"), (0.1, "orange"), (0.3, "red")]
    assert "latest 50 checks" in panel["description"]
    assert "re-baselining" in panel["description"]


def test_alert_tables_colour_severity_and_show_decisions() -> None:
    colours = {"critical": "red", "warning": "orange", "info": "blue"}
    alerts = _panel("radsentry-site-overview", "Alerts not resolved")
    fleet = _panel("radsentry-fleet", "Open alerts by severity")
    for panel, column in ((alerts, "severity"), (fleet, "highest")):
        (mapping,) = _overrides(panel)[column]["mappings"]
        assert {value: shown["color"] for value, shown in mapping["options"].items()} == colours
    sql = alerts["targets"][0]["rawSql"]
    assert {"severity", "needs_decision", "decision_reason"} <= set(re.findall(r"\w+", sql))
    assert "do not notify" in alerts["description"]
    assert "needs_decision" in _overrides(alerts)
    assert "needs_decision" in fleet["targets"][0]["rawSql"]
    explanation = _panels(BUILT["radsentry-site-overview"])[0]["options"]["content"]
    for title in ("Effect vs learned threshold", "Time in alarm", "Alerts not resolved"):
        assert f"**{title}**" in explanation


def _query(uid: str, title: str, ref_id: str = "A") -> PanelQuery:
    (found,) = [
        q for q in panel_queries(BUILT[uid]) if q.panel_title == title and q.ref_id == ref_id
    ]
    return found


Samples = list[tuple[str, float]]
"""Expected result of an instant query: (labels as PromQL writes them, value)."""


def _promtool_expr_test(
    tmp_path: Path, series: dict[str, float], checks: list[tuple[str, Samples]]
) -> None:
    """Run each (PromQL, expected samples) of ``checks`` at 5 min in promtool, on ``series``
    (series -> a constant value) scraped every minute."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH (apt-get install prometheus; see test_alert_rules)")
    case = {
        "interval": "1m",
        "input_series": [
            {"series": name, "values": f"{value}x10"} for name, value in series.items()
        ],
        "promql_expr_test": [
            {
                "expr": expr,
                "eval_time": "5m",
                "exp_samples": [{"labels": labels, "value": value} for labels, value in samples],
            }
            for expr, samples in checks
        ],
    }
    path = tmp_path / "dashboard_queries.test.yaml"
    path.write_text(yaml.safe_dump({"tests": [case]}, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_warning_and_critical_alerts_turn_the_light_red_or_count_as_open(
    tmp_path: Path,
) -> None:
    """Info alerts do not notify (docs/drift.md, "Severity"): the status light and the open-alert
    counts leave them out; the alert tables list them. The queries as the dashboards hold them
    run in promtool on one site where cxr-lesion has only an open info alert (green),
    cxr-nodule an open warning (red) and cxr-pneumo an acknowledged critical beside open info
    alerts (amber); no detector's latest check drifts."""
    site = 'site_id="site-01"'
    alerts = {
        "cxr-lesion": [("open", "info", 1)],
        "cxr-nodule": [("open", "warning", 2), ("acknowledged", "info", 1)],
        "cxr-pneumo": [("acknowledged", "critical", 1), ("open", "info", 3)],
    }
    series: dict[str, float] = {}
    for model_name, counts in alerts.items():
        stream = f'{site}, model_name="{model_name}", detector="ks"'
        series[f"radsentry_drift_detected{{{stream}}}"] = 0
        for status, severity, count in counts:
            labels = f'{stream}, status="{status}", severity="{severity}"'
            series[f"radsentry_alerts_open{{{labels}}}"] = count
    lights = {"cxr-lesion": 0, "cxr-nodule": 2, "cxr-pneumo": 1}
    expected: list[tuple[PanelQuery, Samples]] = [
        (
            _query("radsentry-site-overview", "Status per model"),
            [(f'{{model_name="{name}"}}', light) for name, light in lights.items()],
        ),
        (_query("radsentry-site-overview", "Open alerts"), [("{}", 2)]),
        (
            _query("radsentry-fleet", "Status now: sites x models"),
            [(f'{{{site}, model_name="{name}"}}', light) for name, light in lights.items()],
        ),
        (
            _query("radsentry-fleet", "Sites and models by severity", "B"),  # open alerts
            [(f'{{{site}, model_name="cxr-nodule"}}', 2)],
        ),
    ]
    now = datetime.now(UTC)
    values = Substitution({"site": ["site-01"], "model": list(alerts)}, now, now)
    _promtool_expr_test(
        tmp_path, series, [(render(query, values), samples) for query, samples in expected]
    )


def test_panel_queries_lists_targets_and_annotations() -> None:
    queries = panel_queries(BUILT["radsentry-site-overview"])
    kinds = {query.kind for query in queries}
    assert kinds == {"prometheus", "postgres"}
    assert any(q.panel_title == "annotation: Alerts" and q.kind == "postgres" for q in queries)
    status = next(q for q in queries if q.panel_title == "Status per model")
    assert status.instant and "radsentry_drift_detected" in status.query
    total = sum(len(panel_queries(document)) for document in BUILT.values())
    assert total >= 40


def test_render_substitutes_like_grafana() -> None:
    end = datetime(2026, 3, 8, tzinfo=UTC)
    values = Substitution(
        {"site": ["site-01"], "model": ["cxr", "cxr.v2"], "finding": ["nodule"]},
        end - timedelta(days=7),
        end,
    )
    prom = PanelQuery("p", "A", "prometheus", 'x{site_id="$site", model_name=~"$model"}[$__range]')
    assert render(prom, values) == 'x{site_id="site-01", model_name=~"(cxr|cxr\\.v2)"}[604800s]'
    sql = PanelQuery(
        "s", "A", "postgres", "WHERE site_id = ${site:sqlstring} AND $__timeFilter(day::date)"
    )
    assert render(sql, values) == (
        "WHERE site_id = 'site-01' AND day::date BETWEEN "
        "'2026-03-01T00:00:00+00:00' AND '2026-03-08T00:00:00+00:00'"
    )
    quoted = Substitution({"site": ["o'hare"]}, end, end)
    assert "'o''hare'" in render(PanelQuery("s", "A", "postgres", "${site:sqlstring}"), quoted)
    for document in BUILT.values():
        for query in panel_queries(document):
            assert "$" not in render(query, values)


def test_provisioning_files_give_grafana_what_it_needs() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "radsentry.yaml").read_text())
    assert datasources["apiVersion"] == 1
    by_uid = {source["uid"]: source for source in datasources["datasources"]}
    for source in by_uid.values():
        assert {"name", "type", "uid", "url"} <= set(source)
    assert by_uid[PROMETHEUS_UID]["type"] == PROMETHEUS_TYPE
    postgres = by_uid[POSTGRES_UID]
    assert postgres["type"] == POSTGRES_TYPE
    assert postgres["user"] == "radsentry_grafana"
    assert postgres["secureJsonData"]["password"] == "$RADSENTRY_GRAFANA_DB_PASSWORD"

    dashboards = yaml.safe_load((PROVISIONING / "dashboards" / "radsentry.yaml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert provider["folder"] == FOLDER
