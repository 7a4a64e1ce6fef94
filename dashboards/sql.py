"""Typed PostgreSQL queries for panels and annotations.

grafana-foundation-sdk 11.6 has typed query builders for Prometheus, Loki, Tempo and others but
none for Grafana's SQL data sources, so this module is the one place that writes their query
model: ``{"refId", "datasource", "rawSql", "format", "rawQuery", "editorMode"}`` (what Grafana's
PostgreSQL query editor saves in code mode). :class:`Sql` plugs into any panel builder's
``with_target`` like ``prometheus.Dataquery``; :class:`SqlAnnotation` does the same for an
annotation's ``target``.
"""

from __future__ import annotations

from typing import Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as model

SqlFormat = Literal["table", "time_series"]


class SqlQuery(cogvariants.Dataquery):
    """One raw SQL query of a Grafana SQL data source (code mode)."""

    def __init__(
        self,
        raw_sql: str,
        ref_id: str = "",
        format_val: SqlFormat = "table",
        datasource: model.DataSourceRef | None = None,
    ) -> None:
        self.raw_sql = raw_sql
        self.ref_id = ref_id
        self.format_val: SqlFormat = format_val
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "editorMode": "code",
            "format": self.format_val,
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        return payload


class Sql(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder of a :class:`SqlQuery`, in the SDK's fluent style."""

    def __init__(self, raw_sql: str) -> None:
        self._internal = SqlQuery(raw_sql.strip())

    def build(self) -> SqlQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def time_series(self) -> Self:
        """Rows of (time, [string label columns], value columns) become time series."""
        self._internal.format_val = "time_series"
        return self

    def table(self) -> Self:
        self._internal.format_val = "table"
        return self

    def datasource(self, datasource: model.DataSourceRef) -> Self:
        self._internal.datasource = datasource
        return self


class SqlAnnotationTarget(model.AnnotationTarget):
    """An annotation query on a SQL data source. The SDK types ``AnnotationQuery.target`` as the
    built-in Grafana annotation target; a SQL annotation's target is a SQL query instead, whose
    columns ``time``, ``timeend``, ``text`` and ``tags`` Grafana reads."""

    def __init__(self, raw_sql: str) -> None:
        super().__init__()
        self.query = SqlQuery(raw_sql.strip(), ref_id="Anno", format_val="table")

    def to_json(self) -> dict[str, object]:
        return self.query.to_json()


class SqlAnnotation(cogbuilder.Builder[model.AnnotationTarget]):
    """Builder of a :class:`SqlAnnotationTarget` for ``AnnotationQuery.target``."""

    def __init__(self, raw_sql: str) -> None:
        self._internal = SqlAnnotationTarget(raw_sql)

    def build(self) -> SqlAnnotationTarget:
        return self._internal
