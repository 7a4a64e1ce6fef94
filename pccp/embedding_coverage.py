"""Embedding-space coverage: how much of what a site now sends lies outside the locked test set,
as the deployed model sees it. Reported in the gate's evidence; it decides nothing.

The metadata guard (:mod:`pccp.coverage`) sees only what the headers say. A change the headers
do not name (collimation, positioning, harder cases) shows in the deployed model's embeddings
(``inference-event/v2``). The locked test set is embedded with the same model and projection;
its radius is the 95th percentile of each locked case's distance to its nearest other locked
case. A site embedding farther than that from every locked case lies outside what the locked
set covers. For a site sending what the locked set holds, about 5% lie outside (the quantile's
own rate); a much larger share says the evidence does not cover part of the site's content.
Values in, values out (numpy and scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray
from sklearn.neighbors import NearestNeighbors  # type: ignore[import-untyped]

from pccp.report import EmbeddingCoverage

QUANTILE: Final = 0.95
MIN_LOCKED: Final = 10
"""Fewer locked embeddings make the radius a guess."""


def embedding_coverage(
    locked: NDArray[np.float64],
    site: NDArray[np.float64],
    *,
    embedding_id: str,
    sites: Sequence[str],
) -> EmbeddingCoverage:
    """The share of ``site`` embeddings (``[m, k]``) outside the locked set's (``[n, k]``)
    95th-percentile nearest-neighbour radius."""
    if locked.ndim != 2 or site.ndim != 2 or locked.shape[1] != site.shape[1]:
        raise ValueError(f"embeddings of another shape: locked {locked.shape}, site {site.shape}")
    if len(locked) < MIN_LOCKED or not len(site):
        raise ValueError(
            f"{len(locked)} locked and {len(site)} site embeddings: need {MIN_LOCKED}+ and 1+"
        )
    neighbours = NearestNeighbors(n_neighbors=2).fit(locked)
    own = neighbours.kneighbors(locked, n_neighbors=2, return_distance=True)[0][:, 1]
    radius = float(np.quantile(own, QUANTILE))
    distance = neighbours.kneighbors(site, n_neighbors=1, return_distance=True)[0][:, 0]
    outside = int(np.count_nonzero(distance > radius))
    share = outside / len(site)
    where = ", ".join(sites)
    sentence = (
        f"{share:.0%} of {len(site)} recent embeddings from {where} lie farther from every "
        f"locked case than the locked set's own {QUANTILE:.0%} nearest-neighbour distance "
        f"({radius:.3g}); about {1 - QUANTILE:.0%} would for content the locked set covers"
    )
    return EmbeddingCoverage(
        embedding_id=embedding_id,
        sites=list(sites),
        site_embeddings=len(site),
        locked_cases=len(locked),
        radius=radius,
        outside=outside,
        share_outside=share,
        expected_share=1 - QUANTILE,
        sentence=sentence,
    )
