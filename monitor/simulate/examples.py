"""Paired examples of a content shift: the same studies rendered without and with it.

``content_examples(kind, n, seed)`` gives ``n`` baseline studies and the ``n`` studies the same
seeds give when every study is shifted to ``kind``, across the catalogue rooms. Projected with a
model's embedding, the pairs fit known directions ("towards lateral views", "towards smaller
anatomy") that explain an embedding alert (issue 23).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Final

from monitor.simulate.content import ContentShift, ContentShiftKind
from monitor.simulate.profiles import CATALOGUE
from monitor.simulate.stream import RenderedStudy, SimulationConfig, StudyScorer, rendered_studies

_START: Final = datetime(2024, 6, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ContentExamples:
    """``baseline[i]`` and ``shifted[i]`` are the same study (seed, site, index, truth)."""

    kind: ContentShiftKind
    baseline: tuple[RenderedStudy, ...]
    shifted: tuple[RenderedStudy, ...]


def content_examples(
    kind: ContentShiftKind,
    n: int,
    seed: int,
    *,
    image_size: int = 256,
    scorer: StudyScorer | None = None,
) -> ContentExamples:
    """``n`` studies on the catalogue rooms (one site per room, taking turns) without and with
    ``kind``. ``scorer`` scores them, and decides which cases are hard for ``harder``."""
    if n < 1:
        raise ValueError("n must be at least 1")
    sites = len(CATALOGUE)
    baseline = SimulationConfig(
        seed=seed,
        start=_START,
        sites=sites,
        studies_per_site=math.ceil(n / sites),
        image_size=image_size,
    )
    shifts = tuple(ContentShift(kind=kind, site_id=site, share=1.0) for site in baseline.site_ids())
    shifted = baseline.model_copy(update={"content_shifts": shifts})
    return ContentExamples(
        kind=kind,
        baseline=tuple(islice(rendered_studies(baseline, scorer), n)),
        shifted=tuple(islice(rendered_studies(shifted, scorer), n)),
    )
