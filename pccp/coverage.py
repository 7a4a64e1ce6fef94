"""The content-coverage guard: does the locked test set cover what the sites now send?

The FDA PCCP guidance asks that a modification's performance evaluation be representative of
the device's intended use. A candidate retrained after a site changed what it sends (lateral
views added to a PA/AP stream, a paediatric ward) is evaluated on the locked test set; if that
set holds few or no studies of the new content, a passing gate says nothing about it. This
module compares, field by field (``ViewPosition``, ``PatientAgeBand``...), each site's recent
mix with the locked set's and refuses when a value that makes up at least ``min_share`` of a
site's recent studies has fewer than ``min_cases`` locked cases.

Values in, values out: the caller reads the sites' recent metadata
(``monitor.service.pccp.content``) and the locked cases' headers (``pccp.locked_cases``).
A value missing from a header counts as ``"unknown"``; it is listed but never required, since
a missing header field says nothing about the content (the missingness detector watches it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from pccp.plan import ContentCoverageCriterion
from pccp.report import CoverageRow, CriterionResult, Number

UNKNOWN: Final = "unknown"


def content_value(metadata: Mapping[str, object], field_name: str) -> str:
    """A study's value of a metadata field as text: multi-valued attributes joined by a
    backslash (DICOM's separator), missing or empty ones :data:`UNKNOWN`."""
    value = metadata.get(field_name)
    if isinstance(value, list | tuple):
        value = "\\".join(str(part) for part in value)
    if value is None or value == "":
        return UNKNOWN
    return str(value)


@dataclass(frozen=True, slots=True)
class ContentMix:
    """How many studies have each value of each field."""

    studies: int
    counts: Mapping[str, Mapping[str, int]]
    """field -> value -> studies."""

    def count(self, field_name: str, value: str) -> int:
        return self.counts.get(field_name, {}).get(value, 0)

    def share(self, field_name: str, value: str) -> float:
        return self.count(field_name, value) / self.studies if self.studies else 0.0


def content_mix(metadata: Iterable[Mapping[str, object]], fields: Sequence[str]) -> ContentMix:
    """The mix of ``fields`` over studies' metadata (as in ``inference_events.metadata``)."""
    counters: dict[str, Counter[str]] = {name: Counter() for name in fields}
    studies = 0
    for header in metadata:
        studies += 1
        for name in fields:
            counters[name][content_value(header, name)] += 1
    return ContentMix(studies, {name: dict(counter) for name, counter in counters.items()})


@dataclass(frozen=True, slots=True)
class SiteMix:
    """A site's recent studies: their mix, and the time span they cover."""

    site_id: str
    mix: ContentMix
    first_at: datetime | None = None
    last_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ContentFacts:
    """What a ``content_coverage`` criterion compares: the locked test set's mix and the mix of
    each site the candidate is for (none: no site sent studies in the window)."""

    locked: ContentMix
    sites: Sequence[SiteMix] = field(default_factory=tuple)


def evaluate_coverage(criterion: ContentCoverageCriterion, facts: ContentFacts) -> CriterionResult:
    """Pass unless some site's value with at least ``min_share`` of its recent studies has
    fewer than ``min_cases`` locked cases; the rows hold the whole site-vs-locked table."""
    rows: list[CoverageRow] = []
    skipped: list[str] = []
    for site in facts.sites:
        if site.mix.studies < criterion.min_recent_studies:
            skipped.append(
                f"{site.site_id} ({site.mix.studies} recent studies, fewer than "
                f"{criterion.min_recent_studies})"
            )
            continue
        for name in criterion.fields:
            rows.extend(_rows(criterion, name, site, facts.locked))
    uncovered = [row for row in rows if row.covered is False]
    evaluated = len(facts.sites) - len(skipped)
    numbers: dict[str, Number] = {
        "fields": ", ".join(criterion.fields),
        "min_share": criterion.min_share,
        "min_cases": criterion.min_cases,
        "locked_cases": facts.locked.studies,
        "sites_evaluated": evaluated,
        "sites_not_evaluated": len(skipped),
        "uncovered_values": len(uncovered),
    }
    return CriterionResult(
        id=criterion.id,
        kind=criterion.kind,
        description=criterion.description,
        passed=not uncovered,
        numbers=numbers,
        detail=_detail(criterion, facts, uncovered, evaluated, skipped),
        coverage=rows,
    )


def _rows(
    criterion: ContentCoverageCriterion, name: str, site: SiteMix, locked: ContentMix
) -> list[CoverageRow]:
    values = set(site.mix.counts.get(name, {})) | set(locked.counts.get(name, {}))
    rows = []
    for value in values:
        share = site.mix.share(name, value)
        locked_cases = locked.count(name, value)
        required = value != UNKNOWN and share >= criterion.min_share
        if value == UNKNOWN:
            note = "missing in the header: never required"
        elif not required:
            note = f"under {criterion.min_share:.0%} of the site's studies"
        elif locked_cases < criterion.min_cases:
            note = f"the locked test set needs >= {criterion.min_cases} cases"
        else:
            note = ""
        rows.append(
            CoverageRow(
                site_id=site.site_id,
                field=name,
                value=value,
                site_studies=site.mix.count(name, value),
                site_share=share,
                locked_cases=locked_cases,
                locked_share=locked.share(name, value),
                required=required,
                covered=locked_cases >= criterion.min_cases if required else None,
                note=note,
            )
        )
    return sorted(rows, key=lambda row: (-row.site_share, -row.locked_cases, row.value))


def _detail(
    criterion: ContentCoverageCriterion,
    facts: ContentFacts,
    uncovered: list[CoverageRow],
    evaluated: int,
    skipped: list[str],
) -> str:
    fields = ", ".join(criterion.fields)
    not_evaluated = f"; not evaluated: {', '.join(skipped)}" if skipped else ""
    if uncovered:
        reasons = "; ".join(
            f"{row.site_id} now sends {row.site_share:.0%} {row.field} {row.value} "
            f"({row.site_studies} of {_site(facts, row.site_id).mix.studies} recent studies); "
            f"the locked test set holds {row.locked_cases} {row.value} cases "
            f"(needs >= {criterion.min_cases})"
            for row in uncovered
        )
        return f"{reasons}: the candidate's evidence does not cover what the site sends"
    if not evaluated:
        return (
            f"no site sent {criterion.min_recent_studies} or more recent studies: nothing to "
            f"compare{not_evaluated}"
        )
    return (
        f"the locked test set ({facts.locked.studies} cases) has >= {criterion.min_cases} cases "
        f"of every {fields} value making up >= {criterion.min_share:.0%} of the recent studies "
        f"at {evaluated} site(s){not_evaluated}"
    )


def _site(facts: ContentFacts, site_id: str) -> SiteMix:
    return next(site for site in facts.sites if site.site_id == site_id)
