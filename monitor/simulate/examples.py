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

import numpy as np
import numpy.typing as npt

from monitor.drift.directions import DirectionSet
from monitor.simulate.content import ContentShift, ContentShiftKind
from monitor.simulate.model_scores import TrainedModelScorer
from monitor.simulate.profiles import CATALOGUE
from monitor.simulate.stream import RenderedStudy, SimulationConfig, StudyScorer, rendered_studies
from retrain.embedding import Projection, direction_set, fit_direction_on_images
from retrain.images import modality_values, to_training_image
from retrain.model import TrainedModel

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


DIRECTION_DESCRIPTIONS: Final[dict[ContentShiftKind, str]] = {
    ContentShiftKind.LATERAL: "towards lateral views",
    ContentShiftKind.PAEDIATRIC: "towards smaller anatomy (paediatric chests)",
    ContentShiftKind.HARDER: "towards cases the model finds hard",
    ContentShiftKind.POSITIONING: "towards off-centre, tightly collimated positioning",
    ContentShiftKind.SCANNER: "towards the degraded portable reader's images",
}
"""How an alert names each simulated content shift ("the window mean moved ...")."""
DIRECTION_EXAMPLES: Final = 48
"""Example pairs per known direction: the mean difference of 48 pairs has a standard error of
about a seventh of the image-to-image spread, far below the shifts it names (separation 1-6)."""


def simulated_directions(
    model: TrainedModel, projection: Projection, *, n: int = DIRECTION_EXAMPLES, seed: int = 0
) -> DirectionSet:
    """Known directions of ``projection`` from the simulator's content shifts: for each kind,
    ``n`` studies without and with it, embedded by ``model`` (``retrain.embedding``), fitted as
    their normalised mean difference (``monitor.drift.directions.fit_direction``).

    What a site would fit from its own labelled examples (e.g. PA and lateral studies); the
    demo's initial model logs these beside its projection so embedding alerts name the
    content that moved."""
    scorer = TrainedModelScorer(model, "1")  # decides the ``harder`` examples

    def images(studies: tuple[RenderedStudy, ...]) -> npt.NDArray[np.float32]:
        size = model.spec.input_size
        return np.stack(
            [to_training_image(modality_values(s.dataset), size)[None] for s in studies]
        )

    directions = []
    for kind, description in DIRECTION_DESCRIPTIONS.items():
        examples = content_examples(kind, n, seed, scorer=scorer)
        directions.append(
            fit_direction_on_images(
                model,
                projection,
                kind.value,
                description,
                images(examples.baseline),
                images(examples.shifted),
            )
        )
    return direction_set(projection, directions)
