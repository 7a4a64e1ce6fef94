"""Champion against candidate after a retrain: AUROC overall and per site, checked against an
independent computation (the Mann-Whitney U statistic), and the groups that have no AUROC."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import mannwhitneyu

from retrain.compare import Comparison, GroupComparison, compare

SITES = ("site-01", "site-02", "site-03")


def mann_whitney_auroc(truth: npt.NDArray[np.int_], scores: npt.NDArray[np.float64]) -> float:
    """P(score of a positive > score of a negative), ties counted half: U / (n+ n-)."""
    positive, negative = scores[truth == 1], scores[truth == 0]
    statistic = mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(statistic) / float(positive.size * negative.size)


def pairwise_auroc(truth: npt.NDArray[np.int_], scores: npt.NDArray[np.float64]) -> float:
    """The same probability by counting every (positive, negative) pair."""
    positive, negative = scores[truth == 1], scores[truth == 0]
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float(greater + 0.5 * ties) / float(positive.size * negative.size)


def validation_side(
    seed: int, n: int = 600
) -> tuple[npt.NDArray[np.int_], npt.NDArray[np.float64], npt.NDArray[np.float64], list[str]]:
    """Labels, a weak champion, a stronger candidate (better at site-02) and sites, seeded."""
    rng = np.random.default_rng(seed)
    sites = rng.choice(SITES, size=n).tolist()
    truth = (rng.random(n) < 0.3).astype(int)
    boost = np.where(np.array(sites) == "site-02", 1.5, 0.6)
    champion = 1 / (1 + np.exp(-(0.5 * truth + rng.normal(size=n))))
    candidate = 1 / (1 + np.exp(-(boost * truth + rng.normal(size=n))))
    return truth, champion, candidate, sites


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overall_and_per_site_aurocs_match_the_mann_whitney_statistic(seed: int) -> None:
    truth, champion, candidate, sites = validation_side(seed)

    result = compare("lesion", truth, champion, candidate, sites)

    assert result.finding == "lesion"
    groups = {"overall": np.ones(truth.size, dtype=bool)} | {
        site: np.array(sites) == site for site in SITES
    }
    assert [scope for scope, _ in result.scopes()] == list(groups)
    for scope, group in result.scopes():
        mask = groups[scope]
        assert (group.n, group.positives) == (int(mask.sum()), int(truth[mask].sum()))
        for model, scores in (("champion", champion), ("candidate", candidate)):
            expected = mann_whitney_auroc(truth[mask], scores[mask])
            assert getattr(group, f"{model}_auroc") == pytest.approx(expected, abs=1e-12)
            assert expected == pytest.approx(pairwise_auroc(truth[mask], scores[mask]))


def test_the_candidate_better_at_one_site_shows_there() -> None:
    truth, champion, candidate, sites = validation_side(seed=7, n=3000)
    result = compare("lesion", truth, champion, candidate, sites)

    improved = result.sites["site-02"]
    assert improved.candidate_auroc is not None and improved.champion_auroc is not None
    assert improved.candidate_auroc > improved.champion_auroc + 0.1


def test_a_site_with_one_class_has_no_auroc_but_keeps_its_counts() -> None:
    truth = np.array([1, 0, 1, 0, 0, 0, 1, 1])
    sites = ["a", "a", "a", "a", "negatives", "negatives", "positives", "positives"]
    scores = np.array([0.9, 0.1, 0.8, 0.3, 0.5, 0.6, 0.7, 0.2])

    result = compare("lesion", truth, scores, 1 - scores, sites)

    assert result.sites["a"] == GroupComparison(4, 2, 1.0, 0.0)
    assert result.sites["negatives"] == GroupComparison(2, 0, None, None)
    assert result.sites["positives"] == GroupComparison(2, 2, None, None)
    assert result.overall.n == 8 and result.overall.positives == 4
    assert result.overall.champion_auroc == pytest.approx(pairwise_auroc(truth, scores))


def test_a_side_without_positives_has_no_auroc_anywhere() -> None:
    result = compare("lesion", np.zeros(5, dtype=int), np.linspace(0, 1, 5), np.ones(5), ["a"] * 5)

    assert result.overall == GroupComparison(5, 0, None, None)
    assert result.sites == {"a": GroupComparison(5, 0, None, None)}


def test_an_empty_side_compares_nothing() -> None:
    result = compare("lesion", np.array([]), np.array([]), np.array([]), [])

    assert result.overall == GroupComparison(0, 0, None, None)
    assert result.sites == {}
    assert result.scopes() == [("overall", result.overall)]


def test_tied_scores_give_one_half_and_float_labels_count_like_integers() -> None:
    truth = np.array([1.0, 0.0, 1.0, 0.0], dtype=np.float32)  # the job's label tensors
    result = compare("lesion", truth, np.full(4, 0.4), np.array([0.9, 0.1, 0.2, 0.3]), ["s"] * 4)

    assert result.overall.champion_auroc == 0.5
    assert result.overall.candidate_auroc == pytest.approx(0.75)
    assert isinstance(result.overall.positives, int) and result.overall.positives == 2


def test_sites_come_in_sorted_order() -> None:
    truth = np.array([0, 1, 0, 1, 0, 1])
    sites = ["site-b", "site-b", "site-c", "site-c", "site-a", "site-a"]
    scores = np.arange(6, dtype=float)

    result = compare("lesion", truth, scores, scores, sites)

    assert list(result.sites) == ["site-a", "site-b", "site-c"]
    assert [scope for scope, _ in result.scopes()] == ["overall", "site-a", "site-b", "site-c"]


def test_as_json_is_the_progress_document_the_job_stores() -> None:
    result = Comparison(
        finding="lesion",
        overall=GroupComparison(10, 4, 0.7, 0.8),
        sites={
            "site-01": GroupComparison(10, 4, 0.7, 0.8),
            "site-02": GroupComparison(1, 0, None, None),
        },
    )

    assert result.as_json() == {
        "finding": "lesion",
        "overall": {"n": 10, "positives": 4, "champion_auroc": 0.7, "candidate_auroc": 0.8},
        "sites": {
            "site-01": {"n": 10, "positives": 4, "champion_auroc": 0.7, "candidate_auroc": 0.8},
            "site-02": {"n": 1, "positives": 0, "champion_auroc": None, "candidate_auroc": None},
        },
    }


@pytest.mark.parametrize(
    ("truth", "champion", "candidate", "sites"),
    [
        ([0, 1, 0], [0.1, 0.2], [0.1, 0.2, 0.3], ["a", "a", "a"]),  # a score missing
        ([0, 1, 0], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], ["a", "a"]),  # a site missing
        ([[0, 1], [1, 0]], [[0.1, 0.2], [0.3, 0.4]], [[0.1, 0.2], [0.3, 0.4]], ["a", "a"]),
    ],
)
def test_misaligned_inputs_are_refused(
    truth: npt.ArrayLike, champion: npt.ArrayLike, candidate: npt.ArrayLike, sites: list[str]
) -> None:
    with pytest.raises(ValueError, match="1-D of one length"):
        compare("lesion", truth, champion, candidate, sites)


def test_labels_other_than_zero_and_one_are_refused() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        compare("lesion", [0, 2, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], ["a"] * 3)
