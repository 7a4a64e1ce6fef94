"""Every query of every dashboard, and Grafana's variable substitution for running them
outside Grafana (the integration test sends each PromQL to a real Prometheus and each SQL to
PostgreSQL).

:func:`panel_queries` walks a dashboard's JSON model: the targets of every panel (rows
included) and every annotation query; variable queries (``label_values(...)``) are Grafana's
own syntax, not PromQL, and are left out. :func:`render` substitutes what the queries use:

* PromQL: ``$site``, ``$model``, ``$finding`` (one value as is; several as ``(a|b)`` with
  regex characters escaped, as Grafana does for multi-value variables), ``$__rate_interval``,
  ``$__interval``, ``$__range``;
* SQL: ``${site:sqlstring}`` etc. (``'a','b'``, quotes doubled), ``$__timeFilter(expr)``
  (``expr BETWEEN 'from' AND 'to'``), ``$__timeFrom()``, ``$__timeTo()``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from dashboards.common import POSTGRES_TYPE, PROMETHEUS_TYPE

QueryKind = Literal["prometheus", "postgres"]
_KINDS: dict[str, QueryKind] = {PROMETHEUS_TYPE: "prometheus", POSTGRES_TYPE: "postgres"}


@dataclass(frozen=True)
class PanelQuery:
    """One query as a dashboard holds it (variables not substituted)."""

    panel_title: str
    """The panel's title, or ``annotation: <name>`` for an annotation query."""
    ref_id: str
    kind: QueryKind
    query: str
    instant: bool = False
    """A Prometheus instant query (stat panels, tables); False for range queries and SQL."""


class UnresolvedVariable(ValueError):
    """A query still holds a ``$`` after substitution: a variable :func:`render` lacks."""


def panel_queries(dashboard: Mapping[str, object]) -> list[PanelQuery]:
    """Every panel target and annotation query of ``dashboard`` (a JSON model)."""
    found: list[PanelQuery] = []
    for panel in _panels(dashboard.get("panels")):
        title = str(panel.get("title", ""))
        for target in _objects(panel.get("targets")):
            datasource = target.get("datasource") or panel.get("datasource")
            found.append(_query(title, target, datasource))
    annotations = dashboard.get("annotations")
    if isinstance(annotations, dict):
        for annotation in _objects(annotations.get("list")):
            query = annotation.get("target")
            if isinstance(query, dict) and ("rawSql" in query or "expr" in query):
                title = f"annotation: {annotation.get('name', '')}"
                found.append(_query(title, query, annotation.get("datasource")))
    return found


def _objects(value: object) -> list[dict[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _panels(value: object) -> list[dict[str, object]]:
    panels = []
    for panel in _objects(value):
        panels.append(panel)
        panels.extend(_panels(panel.get("panels")))
    return panels


def _query(title: str, target: dict[str, object], datasource: object) -> PanelQuery:
    source_type = datasource.get("type") if isinstance(datasource, dict) else None
    kind = _KINDS.get(str(source_type))
    if kind is None:
        raise ValueError(f"panel {title!r}: data source type {source_type!r} is not ours")
    text = target.get("expr") if kind == "prometheus" else target.get("rawSql")
    return PanelQuery(
        panel_title=title,
        ref_id=str(target.get("refId", "")),
        kind=kind,
        query=str(text),
        instant=kind == "prometheus" and target.get("instant") is True,
    )


@dataclass(frozen=True)
class Substitution:
    """Values for the dashboard variables and the time range of one rendering."""

    variables: Mapping[str, Sequence[str]]
    """site, model, finding -> selected values (one or more)."""
    time_from: datetime
    time_to: datetime
    rate_interval: str = "5m"


_SQL_VARIABLE = re.compile(r"\$\{(\w+):sqlstring\}")
_PROM_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_TIME_FILTER = re.compile(r"\$__timeFilter\(([^)]*)\)")
_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")


def render(query: PanelQuery, substitution: Substitution) -> str:
    """``query`` as Grafana would send it to its data source for these values."""
    if query.kind == "postgres":
        text = _render_sql(query.query, substitution)
    else:
        text = _render_promql(query.query, substitution)
    if "$" in text:
        raise UnresolvedVariable(f"{query.panel_title} ({query.ref_id}): {text}")
    return text


def _values(substitution: Substitution, name: str) -> Sequence[str]:
    values = substitution.variables.get(name)
    if not values:
        raise UnresolvedVariable(f"no value for ${name}")
    return values


def _render_sql(text: str, substitution: Substitution) -> str:
    time_from = f"'{substitution.time_from.isoformat()}'"
    time_to = f"'{substitution.time_to.isoformat()}'"
    text = _TIME_FILTER.sub(lambda m: f"{m.group(1)} BETWEEN {time_from} AND {time_to}", text)
    text = text.replace("$__timeFrom()", time_from).replace("$__timeTo()", time_to)
    return _SQL_VARIABLE.sub(
        lambda m: ",".join(
            "'" + value.replace("'", "''") + "'" for value in _values(substitution, m.group(1))
        ),
        text,
    )


def _render_promql(text: str, substitution: Substitution) -> str:
    seconds = int((substitution.time_to - substitution.time_from).total_seconds())
    builtins = {
        "__rate_interval": substitution.rate_interval,
        "__interval": substitution.rate_interval,
        "__range": f"{seconds}s",
    }

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in builtins:
            return builtins[name]
        values = _values(substitution, name)
        if len(values) == 1:
            return values[0]
        return "(" + "|".join(_REGEX_SPECIAL.sub(r"\\\1", value) for value in values) + ")"

    return _PROM_VARIABLE.sub(replace, text)
