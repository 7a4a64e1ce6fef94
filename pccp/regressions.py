"""Regressions flagged even where no criterion covers them: the evidence's list of every metric,
overall and in every site and subgroup, in which the candidate is worse than the champion
beyond the noise of the locked test set.

For each scope (all cases, then every value of every group field) and each metric, the paired
difference ``candidate - champion`` on the same cases gets a two-sided 95% interval:

* AUROC: paired DeLong (``monitor.performance``), ``d +- z * se``; needs two cases per class;
* sensitivity and specificity at each model's own threshold: Newcombe's paired interval
  (:func:`pccp.criteria.paired_difference`) over the positive or the negative cases;
* ECE (10 bins, lower is better): a seeded paired bootstrap (the same resampled cases for both
  models), the 2.5th and 97.5th percentiles.

A metric is flagged when the whole interval lies on the worse side of zero. Each flag carries
one sentence a signer can read without the tables ("2.5 times as many normal studies would be
recalled"). With a 95% interval per metric and scope, a candidate equal to the champion is
flagged somewhere now and then by chance; the list is a prompt to look, the criteria decide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from monitor.performance._auroc import paired_delong
from pccp.criteria import paired_difference
from pccp.report import FlaggedRegression

CONFIDENCE_LEVEL: Final = 0.95
BOOTSTRAP_RESAMPLES: Final = 1000
BOOTSTRAP_SEED: Final = 20261206
ECE_BINS: Final = 10
MIN_ECE_CASES: Final = 30
"""Fewer cases than this: the ECE of a group is too coarse to compare."""


def flag_regressions(
    positive: NDArray[np.bool_],
    groups: dict[str, NDArray[np.str_]],
    candidate: tuple[NDArray[np.float64], float],
    champion: tuple[NDArray[np.float64], float],
) -> list[FlaggedRegression]:
    """Every flagged regression (see the module docstring), overall first, then by field and
    value; ``candidate`` and ``champion`` are (scores, threshold)."""
    found: list[FlaggedRegression] = []
    for field, value, rows in _scopes(positive, groups):
        truth = positive[rows]
        cand_scores, champ_scores = candidate[0][rows], champion[0][rows]
        found.extend(
            flag
            for flag in (
                _auroc(field, value, truth, cand_scores, champ_scores),
                _proportion(
                    field,
                    value,
                    "sensitivity",
                    truth,
                    cand_scores >= candidate[1],
                    champ_scores >= champion[1],
                ),
                _proportion(
                    field,
                    value,
                    "specificity",
                    ~truth,
                    cand_scores < candidate[1],
                    champ_scores < champion[1],
                ),
                _ece(field, value, truth, cand_scores, champ_scores),
            )
            if flag is not None
        )
    return found


def _scopes(
    positive: NDArray[np.bool_], groups: dict[str, NDArray[np.str_]]
) -> Iterator[tuple[str | None, str | None, NDArray[np.bool_]]]:
    yield None, None, np.ones(positive.shape, dtype=bool)
    for field, values in groups.items():
        as_text = np.asarray(values).astype(str)
        for value in np.unique(as_text):
            yield field, str(value), as_text == value


def _where(field: str | None, value: str | None) -> str:
    if field is None:
        return "On the whole locked test set"
    return f"At {value}" if field == "site" else f"At {field} {value}"


def _auroc(
    field: str | None,
    value: str | None,
    truth: NDArray[np.bool_],
    candidate: NDArray[np.float64],
    champion: NDArray[np.float64],
) -> FlaggedRegression | None:
    positives = int(np.count_nonzero(truth))
    if min(positives, truth.size - positives) < 2:
        return None
    paired = paired_delong(truth, champion, candidate)
    half = float(norm.ppf(0.5 + CONFIDENCE_LEVEL / 2)) * float(np.sqrt(paired.variance))
    lower, upper = paired.difference - half, paired.difference + half
    if upper >= 0:
        return None
    sentence = (
        f"{_where(field, value)}, AUROC is {paired.auroc_b:.3f} against the champion's "
        f"{paired.auroc_a:.3f} ({paired.difference:+.3f}, 95% CI {lower:+.3f} to {upper:+.3f}): "
        "the candidate ranks lesions below normal studies more often."
    )
    return FlaggedRegression(
        field=field,
        value=value,
        metric="auroc",
        cases=int(truth.size),
        candidate=paired.auroc_b,
        champion=paired.auroc_a,
        difference=paired.difference,
        lower=lower,
        upper=upper,
        method="paired DeLong",
        sentence=sentence,
    )


def _proportion(
    field: str | None,
    value: str | None,
    metric: str,
    rows: NDArray[np.bool_],
    candidate_hits: NDArray[np.bool_],
    champion_hits: NDArray[np.bool_],
) -> FlaggedRegression | None:
    if not rows.any():
        return None
    diff = paired_difference(
        candidate_hits[rows], champion_hits[rows], confidence_level=CONFIDENCE_LEVEL
    )
    if diff.upper >= 0:
        return None
    misses = (
        "lesions would be missed"
        if metric == "sensitivity"
        else ("normal studies would be flagged as possible lesions")
    )
    champion_errors, candidate_errors = 1 - diff.champion, 1 - diff.candidate
    ratio = (
        f"{candidate_errors / champion_errors:.1f} times as many {misses}"
        if champion_errors > 0
        else f"{misses} where the champion missed none"
    )
    sentence = (
        f"{_where(field, value)}, {metric} is {diff.candidate:.3f} against the champion's "
        f"{diff.champion:.3f} ({diff.difference:+.3f}, 95% CI {diff.lower:+.3f} to "
        f"{diff.upper:+.3f}, {diff.cases} cases): {ratio}."
    )
    return FlaggedRegression(
        field=field,
        value=value,
        metric=metric,
        cases=diff.cases,
        candidate=diff.candidate,
        champion=diff.champion,
        difference=diff.difference,
        lower=diff.lower,
        upper=diff.upper,
        method="Newcombe paired",
        sentence=sentence,
    )


def ece_many(
    truth: NDArray[np.bool_], scores: NDArray[np.float64], samples: NDArray[np.intp]
) -> NDArray[np.float64]:
    """ECE (``ECE_BINS`` equal-width bins, a score on an edge in the lower bin, as
    ``monitor.performance``) of each row of case indices in ``samples``."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bin_of = np.searchsorted(edges[1:-1], scores)[samples]  # (resamples, n)
    resampled_scores, resampled_truth = scores[samples], truth[samples].astype(np.float64)
    offsets = (np.arange(samples.shape[0]) * ECE_BINS)[:, None]
    flat = (bin_of + offsets).ravel()
    size = samples.shape[0] * ECE_BINS
    score_sums = np.bincount(flat, weights=resampled_scores.ravel(), minlength=size)
    truth_sums = np.bincount(flat, weights=resampled_truth.ravel(), minlength=size)
    gaps = np.abs(score_sums - truth_sums).reshape(-1, ECE_BINS)
    # Per bin: count/n * |mean score - observed rate| = |score sum - positive sum| / n.
    return np.asarray(gaps.sum(axis=1) / samples.shape[1], dtype=np.float64)


def _ece(
    field: str | None,
    value: str | None,
    truth: NDArray[np.bool_],
    candidate: NDArray[np.float64],
    champion: NDArray[np.float64],
) -> FlaggedRegression | None:
    n = truth.size
    if n < MIN_ECE_CASES:
        return None
    everything = np.arange(n)[None, :]
    cand_ece, champ_ece = (float(ece_many(truth, s, everything)[0]) for s in (candidate, champion))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    samples = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    differences = ece_many(truth, candidate, samples) - ece_many(truth, champion, samples)
    tail = (1 - CONFIDENCE_LEVEL) / 2 * 100
    lower, upper = (float(x) for x in np.percentile(differences, [tail, 100 - tail]))
    if lower <= 0:
        return None
    sentence = (
        f"{_where(field, value)}, calibration error (ECE) is {cand_ece:.3f} against the "
        f"champion's {champ_ece:.3f} ({cand_ece - champ_ece:+.3f}, 95% CI {lower:+.3f} to "
        f"{upper:+.3f}, {n} cases): the candidate's probabilities are further from the "
        "observed rates."
    )
    return FlaggedRegression(
        field=field,
        value=value,
        metric="ece",
        cases=n,
        candidate=cand_ece,
        champion=champ_ece,
        difference=cand_ece - champ_ece,
        lower=lower,
        upper=upper,
        method=f"paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples)",
        sentence=sentence,
    )
