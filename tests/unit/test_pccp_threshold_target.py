"""Where ``hold_champion_sensitivity`` measures its target (plan 1.4.0, ``target_cases``):
only on the tuning cases the champion never trained or selected on. A champion whose
threshold was chosen on some tuning cases scores optimistically there; measured on the rest,
its sensitivity is unbiased. The candidate's threshold is selected on the tuning cases the
champion never trained on: warm-started, the candidate inherits the champion's fit to those.
Both tested both ways, with the provenance counts, the failures that say what to do, and the
scope guard's view of the new provenance."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.special import expit
from scipy.stats import norm

from monitor.events import LabelSource
from pccp.gate import ThresholdFacts
from pccp.plan import TargetCases, ThresholdPolicy, ThresholdRule, load_plan
from pccp.threshold import (
    ThresholdError,
    ThresholdProvenance,
    TuningSplit,
    seen_by_champion,
    select_threshold,
    threshold_for_sensitivity,
    threshold_violations,
)
from retrain.dataset import DatasetManifest, ManifestCase, Side

ROOT = Path(__file__).resolve().parents[2]
UNSEEN = ThresholdPolicy(
    rule=ThresholdRule.HOLD_CHAMPION_SENSITIVITY, target_cases=TargetCases.UNSEEN_BY_CHAMPION
)
WHOLE = ThresholdPolicy(rule=ThresholdRule.HOLD_CHAMPION_SENSITIVITY)


def select(policy: ThresholdPolicy, split: TuningSplit, cut: float) -> ThresholdProvenance:
    return select_threshold(policy, split, champion_version="3", champion_threshold=cut, plan=None)


def champion_split(
    rng: np.random.Generator, true_sensitivity: float = 0.85, seen: int = 150, unseen: int = 150
) -> tuple[TuningSplit, float]:
    """A champion whose threshold was chosen on its own ``seen`` validation cases (the first
    ones) for sensitivity 0.9, while it detects ``true_sensitivity`` of fresh positives: the
    rehearsal case. Half the cases positive; the candidate's scores are independent."""
    size = seen + unseen
    positive = np.arange(size) % 2 == 0
    logit = rng.normal(np.where(positive, 1.0, 0.0), 1.0)
    own = np.arange(size) < seen
    # The champion's threshold reaches 0.9 on its own selection cases by construction.
    cut = threshold_for_sensitivity(positive & own, logit, 0.9)
    # Fresh positives: shifted so that ``true_sensitivity`` is their expected rate above it.
    fresh = positive & ~own
    logit[fresh] += cut - (1.0 + float(norm.ppf(1 - true_sensitivity)))
    candidate = expit(rng.normal(np.where(positive, 1.2, 0.0), 1.0))
    nothing = np.zeros(size, dtype=bool)  # the champion only validated on its own cases
    split = TuningSplit(positive, candidate, expit(logit), "b" * 64, own, nothing, ("c" * 64,))
    return split, float(expit(cut))


def test_the_target_leaves_out_the_champions_own_cases_and_counts_them() -> None:
    split, cut = champion_split(np.random.default_rng(1))
    assert split.champion_seen is not None
    unseen_positive = split.positive & ~split.champion_seen

    held = select(UNSEEN, split, cut)

    assert held.target_sensitivity == pytest.approx(
        np.mean(split.champion_scores[unseen_positive] >= cut)
    )
    assert held.target_cases is TargetCases.UNSEEN_BY_CHAMPION
    assert (held.target_case_count, held.excluded_cases) == (150, 150)
    assert (held.target_positives, held.excluded_positives) == (75, 75)
    assert held.champion_manifests == ("c" * 64,)
    # The champion trained on none of them: the threshold is selected on every tuning case.
    assert held.tuning_positives == held.selection_positives == 150
    assert held.target_sensitivity is not None
    assert held.threshold == threshold_for_sensitivity(
        split.positive, split.candidate_scores, held.target_sensitivity
    )
    assert "75 positive, it never trained or selected on; 150 of its own left out" in (
        held.sentence()
    )
    assert "selected on the 300, 150 positive, it never trained on" in held.sentence()
    assert ThresholdProvenance.from_tag(held.to_tag()) == held
    # Measured on the whole tuning split (plan 1.3.0), the champion's own cases are in it.
    whole = select(WHOLE, split, cut)
    assert whole.target_cases is TargetCases.TUNING_SPLIT and whole.excluded_cases is None
    assert whole.target_positives == 150


def test_the_unseen_target_is_unbiased_where_the_whole_split_is_optimistic() -> None:
    """Over 300 seeded tuning splits, the champion's true sensitivity is 0.85. On its own
    selection cases it is 0.9 by construction, so the whole split's target averages about
    0.875 (detected: far beyond its Monte Carlo error); on the unseen cases the target's mean
    is 0.85 within three standard errors (no false alarm)."""
    rng = np.random.default_rng(7)
    unseen, whole = [], []
    for _ in range(300):
        split, cut = champion_split(rng)
        unseen.append(select(UNSEEN, split, cut).target_sensitivity)
        whole.append(select(WHOLE, split, cut).target_sensitivity)
    error = math.sqrt(0.85 * 0.15 / 75 / 300)
    assert abs(np.mean(unseen) - 0.85) < 3 * error, np.mean(unseen)
    assert np.mean(whole) - 0.85 > 10 * error, np.mean(whole)


def test_the_threshold_is_selected_on_the_cases_the_champion_never_trained_on() -> None:
    """A candidate warm-started from the champion scores the champion's training positives
    higher (its inherited fit: logit mean 2 against 1 on fresh positives). Over 300 seeded
    tuning splits (200 such cases, 100 the champion only validated on, 100 unseen; half
    positive), the candidate's true sensitivity on fresh positives at the selected threshold
    reaches the target within Monte Carlo error and the rule's order-statistic bias when those
    cases are left out (no false alarm), and falls clearly short when the threshold is
    selected on every case (detected)."""
    rng = np.random.default_rng(5)
    size = 400
    positive = np.arange(size) % 2 == 0
    trained, seen = np.arange(size) < 200, np.arange(size) < 300
    kept, everything = [], []
    for _ in range(300):
        champion = expit(rng.normal(np.where(positive, 1.0, -0.5), 1.0))
        logit = rng.normal(np.where(positive, np.where(trained, 2.0, 1.0), 0.0), 1.0)
        split = TuningSplit(positive, expit(logit), champion, "b" * 64, seen, trained, ("c" * 64,))
        held = select(UNSEEN, split, 0.5)
        assert held.target_sensitivity is not None
        assert (held.selection_cases, held.selection_positives) == (200, 100)
        every = threshold_for_sensitivity(positive, split.candidate_scores, held.target_sensitivity)
        for cut, found in ((held.threshold, kept), (every, everything)):
            fresh = 1 - norm.cdf(np.log(cut / (1 - cut)) - 1.0)  # true sensitivity there
            found.append(fresh - held.target_sensitivity)
    # The k-th highest of P positive scores has expected true sensitivity k / (P + 1), so the
    # rule itself runs under its target by at most 1 / (P + 1) on average (P = 100 here).
    error = float(np.std(kept)) / math.sqrt(300)
    assert np.mean(kept) > -1 / 101 - 3 * error, np.mean(kept)
    assert np.mean(everything) < -0.05, np.mean(everything)


def test_too_few_unseen_positives_or_no_manifest_fail_and_say_what_to_do() -> None:
    split, cut = champion_split(np.random.default_rng(2), seen=280, unseen=30)
    with pytest.raises(ThresholdError, match=r"15 positive tuning cases are unseen") as info:
        select(UNSEEN, split, cut)
    assert "140 more are in its training manifests" in str(info.value)
    assert "needs at least 20" in str(info.value) and "label more" in str(info.value)
    # The whole split has 155 positives: the old rule would have gone on.
    assert select(WHOLE, split, cut).target_positives == 155
    unknown = TuningSplit(split.positive, split.candidate_scores, split.champion_scores, "b" * 64)
    with pytest.raises(ThresholdError, match="training manifest"):
        select(UNSEEN, unknown, cut)
    assert split.champion_seen is not None
    half = TuningSplit(
        split.positive, split.candidate_scores, split.champion_scores, "b" * 64,
        np.zeros_like(split.champion_seen),
    )  # fmt: skip
    with pytest.raises(ThresholdError, match="trained on is not known"):
        select(UNSEEN, half, cut)


def manifest_case(n: int, side: Side, image: int | None = None) -> ManifestCase:
    moment = datetime(2026, 11, 1, tzinfo=UTC)
    return ManifestCase(
        study_key=f"{n:064x}",
        site_id="site-01",
        side=side,
        labels={"lesion": n % 2},
        label_source=LabelSource.RADIOLOGIST,
        predicted_at=moment,
        labelled_at=moment,
        content_sha256=f"{image if image is not None else 1000 + n:064x}",
    )


def manifest(cases: list[ManifestCase]) -> DatasetManifest:
    return DatasetManifest(
        model_name="cxr-lesion",
        seed=0,
        validation_share=0.2,
        locked_test_sha256="0" * 64,
        dropped_without_uri=0,
        cases=tuple(cases),
    )


def test_seen_by_champion_reads_both_sides_of_every_manifest_and_the_image_hash() -> None:
    parent = manifest([manifest_case(1, Side.TRAIN)])
    champion = manifest([manifest_case(2, Side.TRAIN), manifest_case(3, Side.VALIDATION)])
    tuning = [
        manifest_case(1, Side.VALIDATION),  # the parent trained on it
        manifest_case(2, Side.VALIDATION),  # the champion trained on it
        manifest_case(3, Side.VALIDATION),  # the champion selected on it
        manifest_case(4, Side.VALIDATION, image=1003),  # champion's image 3, another key
        manifest_case(5, Side.VALIDATION),  # never seen
    ]
    seen: NDArray[np.bool_] = seen_by_champion(tuning, [champion, parent])
    assert seen.tolist() == [True, True, True, True, False]
    assert seen_by_champion(tuning, [champion]).tolist() == [False, True, True, True, False]
    trained = seen_by_champion(tuning, [champion, parent], frozenset({Side.TRAIN}))
    assert trained.tolist() == [True, True, False, False, False]


def facts(provenance: ThresholdProvenance) -> ThresholdFacts:
    return ThresholdFacts(
        candidate_threshold=provenance.threshold,
        champion_threshold=0.45,
        champion_version="3",
        provenance=provenance,
        training_manifest_sha256="b" * 64,
    )


def test_the_scope_guard_accepts_the_unseen_target_and_refuses_tampering() -> None:
    shipped = load_plan(ROOT / "pccp" / "plans" / "cxr-lesion.yaml")
    policy = shipped.protocol.threshold_policy
    assert policy.target_cases is TargetCases.UNSEEN_BY_CHAMPION  # plan 1.4.0
    split, cut = champion_split(np.random.default_rng(3))
    held = select(policy, split, cut)
    assert threshold_violations(policy, facts(held)) == []
    whole = select(WHOLE, split, cut)
    assert threshold_violations(WHOLE, facts(whole)) == []  # 1.3.0's plan, its provenance
    tampered: list[tuple[dict[str, Any], str]] = [
        ({"target_cases": TargetCases.TUNING_SPLIT}, "not measured on the tuning cases"),
        ({"target_cases": None}, "not measured on the tuning cases"),
        ({"excluded_cases": 10}, "does not add up"),
        ({"target_positives": 70}, "does not add up"),
        ({"champion_manifests": ()}, "does not record which tuning cases"),
        ({"excluded_positives": None}, "does not record which tuning cases"),
        ({"selection_cases": None}, "does not record the cases it was selected on"),
        ({"selection_positives": 70}, "selected on 300 cases (70 positive)"),
        ({"selection_cases": 301}, "fewer than its target's or more than the tuning split's"),
        (
            {
                "target_positives": 15,
                "excluded_positives": 135,
                "target_case_count": 30,
                "excluded_cases": 270,
            },
            "needs at least 20",
        ),
    ]
    for change, words in tampered:
        found = threshold_violations(policy, facts(held.model_copy(update=change)))
        assert any(words in violation for violation in found), (change, found)
    # Provenance recorded before 1.4.0 (no target fields) still reads, and is refused.
    old = ThresholdProvenance.from_tag(whole.to_tag().replace(',"target_cases":"tuning_split"', ""))
    assert old is not None and old.target_cases is None
    assert any("not measured" in v for v in threshold_violations(policy, facts(old)))


def test_target_cases_belongs_to_the_hold_champion_rule() -> None:
    with pytest.raises(ValueError, match="target_cases"):
        ThresholdPolicy(
            rule=ThresholdRule.TARGET_SENSITIVITY,
            target_sensitivity=0.9,
            target_cases=TargetCases.UNSEEN_BY_CHAMPION,
        )
    assert WHOLE.target_cases is TargetCases.TUNING_SPLIT  # a plan that says nothing: 1.3.0's
