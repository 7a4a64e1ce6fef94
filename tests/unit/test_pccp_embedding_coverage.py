"""Embedding-space coverage (``pccp.embedding_coverage``): about 5% of a site's embeddings lie
outside the locked set's radius when the site sends the locked set's content, most when it
sends something else."""

from __future__ import annotations

import numpy as np
import pytest

from pccp.embedding_coverage import embedding_coverage


def draws(seed: int, n: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8)) + np.array([shift] + [0.0] * 7)


def test_a_site_sending_the_locked_sets_content_shows_about_the_nominal_share() -> None:
    shares = [
        embedding_coverage(
            draws(seed, 300), draws(1000 + seed, 500), embedding_id="m@1/pca8-x", sites=["s"]
        ).share_outside
        for seed in range(20)
    ]
    # The quantile's own rate is 5%; a new draw is a little farther from n points than a
    # locked point from the other n - 1, so slightly more, never a large share.
    assert 0.03 < float(np.mean(shares)) < 0.09 and max(shares) < 0.12


def test_a_shifted_site_lies_mostly_outside_and_the_sentence_says_so() -> None:
    result = embedding_coverage(
        draws(0, 300), draws(1, 500, shift=4.0), embedding_id="m@1/pca8-x", sites=["site-02"]
    )
    assert result.share_outside > 0.5 and result.outside == round(result.share_outside * 500)
    assert result.expected_share == pytest.approx(0.05)
    assert result.sentence.startswith(f"{result.share_outside:.0%} of 500 recent embeddings")
    assert "from site-02" in result.sentence


def test_embeddings_of_another_shape_or_too_few_are_refused() -> None:
    with pytest.raises(ValueError, match="another shape"):
        embedding_coverage(draws(0, 30), draws(1, 5)[:, :4], embedding_id="e", sites=["s"])
    with pytest.raises(ValueError, match="need 10"):
        embedding_coverage(draws(0, 5), draws(1, 5), embedding_id="e", sites=["s"])
