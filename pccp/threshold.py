"""The plan's threshold policy applied and checked: where a candidate's operating threshold
comes from, and the record that proves it.

The retraining job calls :func:`select_threshold` once the candidate is trained, with both
models' calibrated probabilities on the *tuning split* (the validation part of the candidate's
own training data; the locked test set is never part of it). The result is the threshold and
its :class:`ThresholdProvenance`, which the job stores on the model version (tag
``radsentry.threshold_provenance``, compact JSON). At gate time :func:`threshold_violations`
is part of the scope guard: a candidate whose threshold is not the one its provenance records,
was set by another rule than the plan's, or was selected on other data than its own tuning
split, is outside the plan.

Rules (``pccp.plan.ThresholdRule``):

* ``keep_champion``: the champion's threshold.
* ``hold_champion_sensitivity``: the champion's sensitivity (at its own threshold) is the
  target; the selected threshold is the highest at which the candidate's tuning-split
  sensitivity reaches it: the ``ceil(target * P)``-th highest score of the ``P`` positive
  tuning cases. Highest, so specificity is as good as that sensitivity allows. The policy's
  ``target_cases`` says where the target is measured: on the whole tuning split
  (``tuning_split``, plans up to 1.3.0), or only on the tuning cases the champion never saw
  (``unseen_by_champion``): those on neither side of the training manifest of the champion or
  of a version it was retrained from (:func:`seen_by_champion`). A champion measured on the
  cases it was trained on or whose threshold was selected on them scores optimistically
  there. The candidate's threshold is then selected on the tuning cases the champion's
  lineage never *trained* on: a candidate warm-started from the champion inherits its fit
  to those, so it too scores optimistically there, while the cases the champion only
  validated on are as fresh to the candidate as the unseen ones, and the more positives the
  less the selected threshold moves with the sample. With ``tuning_split`` the threshold is
  selected on every tuning case.
* ``target_sensitivity``: the same with the plan's stated target.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pccp.plan import Plan, TargetCases, ThresholdPolicy, ThresholdRule
from retrain.dataset import DatasetManifest, ManifestCase, Side

TOLERANCE: Final = 1e-9
"""Two thresholds closer than this are the same (they travel as JSON floats)."""


class ThresholdError(ValueError):
    """The policy cannot be applied to this tuning split (too few positive cases)."""


class ThresholdProvenance(BaseModel):
    """Where a candidate's operating threshold came from (first finding)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: ThresholdRule
    threshold: float = Field(ge=0.0, le=1.0)
    source: Literal["champion", "tuning_split"]
    """``tuning_split``: selected on the validation part of the candidate's training data."""
    plan_id: str | None
    """The plan whose policy was applied; None when no plan governed the model at training."""
    plan_version: str | None
    champion_version: str
    champion_threshold: float
    target_sensitivity: float | None
    """The sensitivity the rule aimed for (the champion's on the tuning split, or the plan's)."""
    target_cases: TargetCases | None = None
    """``hold_champion_sensitivity``: which tuning cases the champion's sensitivity was
    measured on (None in provenance recorded before plan 1.4.0: the whole tuning split)."""
    target_case_count: int | None = Field(None, ge=0)
    """How many tuning cases the target was measured on."""
    target_positives: int | None = Field(None, ge=0)
    """How many of them were positive."""
    excluded_cases: int | None = Field(None, ge=0)
    """``unseen_by_champion``: tuning cases left out of the target because they are in the
    champion's training manifests."""
    excluded_positives: int | None = Field(None, ge=0)
    champion_manifests: tuple[str, ...] | None = None
    """``unseen_by_champion``: the training manifests (SHA-256) of the champion and of the
    versions it was retrained from, the champion's first: what was left out."""
    selection_cases: int | None = Field(None, ge=0)
    """``unseen_by_champion``: the tuning cases the threshold was selected on (those no
    version of the champion's lineage trained on); None: every tuning case."""
    selection_positives: int | None = Field(None, ge=0)
    training_manifest_sha256: str | None
    """The training data's manifest (``radsentry.dataset_sha256``): the tuning split is its
    validation part."""
    tuning_cases: int = Field(ge=0)
    tuning_positives: int = Field(ge=0)
    tuning_sensitivity: float | None
    """The candidate's sensitivity at the selected threshold on the tuning cases it was
    selected on (``selection_cases``; the whole tuning split when None)."""
    tuning_specificity: float | None

    def to_tag(self) -> str:
        """Compact JSON for the model version's tag."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_tag(cls, text: str | None) -> ThresholdProvenance | None:
        """The provenance a tag holds; None for a missing or unreadable tag."""
        if not text:
            return None
        try:
            return cls.model_validate_json(text)
        except ValidationError:
            return None

    def sentence(self) -> str:
        """One line for the evidence page."""
        if self.source == "champion":
            return (
                f"threshold {self.threshold:.4g} is the champion's (version "
                f"{self.champion_version}), kept by rule {self.rule.value}"
            )
        tuned = (
            f"; there the candidate's sensitivity is {self.tuning_sensitivity:.3f} and "
            f"specificity {self.tuning_specificity:.3f}"
            if self.tuning_sensitivity is not None and self.tuning_specificity is not None
            else ""
        )
        measured = ""
        if self.target_cases is TargetCases.UNSEEN_BY_CHAMPION:
            measured = (
                f" (the champion's on the {self.target_case_count} tuning cases, "
                f"{self.target_positives} positive, it never trained or selected on; "
                f"{self.excluded_cases} of its own left out; the threshold selected on the "
                f"{self.selection_cases}, {self.selection_positives} positive, it never "
                "trained on)"
            )
        return (
            f"threshold {self.threshold:.4g} selected by rule {self.rule.value} for sensitivity "
            f"{self.target_sensitivity:.3f}{measured} on the tuning split "
            f"({self.tuning_cases} cases, "
            f"{self.tuning_positives} positive) of training manifest "
            f"{(self.training_manifest_sha256 or '?')[:12]}{tuned} (champion version "
            f"{self.champion_version} threshold {self.champion_threshold:.4g})"
        )


def _sensitivity(positive: NDArray[np.bool_], scores: NDArray[np.float64], cut: float) -> float:
    return float(np.count_nonzero(scores[positive] >= cut)) / max(
        int(np.count_nonzero(positive)), 1
    )


def _specificity(positive: NDArray[np.bool_], scores: NDArray[np.float64], cut: float) -> float:
    return float(np.count_nonzero(scores[~positive] < cut)) / max(
        int(np.count_nonzero(~positive)), 1
    )


def threshold_for_sensitivity(
    positive: NDArray[np.bool_], scores: NDArray[np.float64], target: float
) -> float:
    """The highest threshold at which the share of positive cases scoring at or above it is at
    least ``target`` (see the module docstring)."""
    ranked = np.sort(scores[positive])[::-1]
    if ranked.size == 0:
        raise ThresholdError("no positive case to select a threshold on")
    needed = min(max(math.ceil(target * ranked.size - TOLERANCE), 1), ranked.size)
    return float(ranked[needed - 1])


@dataclass(frozen=True, slots=True)
class TuningSplit:
    """Both models' calibrated probabilities (first finding) on the tuning split."""

    positive: NDArray[np.bool_]
    candidate_scores: NDArray[np.float64]
    champion_scores: NDArray[np.float64]
    training_manifest_sha256: str
    champion_seen: NDArray[np.bool_] | None = None
    """Per tuning case, whether the champion (or a version it was retrained from) trained or
    selected on it (:func:`seen_by_champion`); None: not looked up. Needed by
    ``target_cases: unseen_by_champion``."""
    champion_trained: NDArray[np.bool_] | None = None
    """Per tuning case, whether it is on the train side of one of those manifests (a subset of
    ``champion_seen``); None: not looked up."""
    champion_manifests: tuple[str, ...] = ()
    """The training manifests (SHA-256) ``champion_seen`` was read from, the champion's first."""


def seen_by_champion(
    tuning_cases: Sequence[ManifestCase],
    champion_manifests: Sequence[DatasetManifest],
    sides: frozenset[Side] = frozenset(Side),
) -> NDArray[np.bool_]:
    """Per tuning case, True when it is on one of ``sides`` (default: either) of one of
    ``champion_manifests``: the same study, or the same image under another study key (its
    content hash)."""
    known = [case for m in champion_manifests for case in m.cases if case.side in sides]
    keys = {case.study_key for case in known}
    images = {case.content_sha256 for case in known}
    return np.array(
        [case.study_key in keys or case.content_sha256 in images for case in tuning_cases],
        dtype=bool,
    )


@dataclass(frozen=True, slots=True)
class _Target:
    value: float
    cases: int
    positives: int
    excluded_cases: int | None = None
    excluded_positives: int | None = None


def _trained(tuning: TuningSplit, champion_version: str) -> NDArray[np.bool_]:
    if tuning.champion_trained is None:
        raise ThresholdError(
            f"which tuning cases champion version {champion_version}'s lineage trained on is "
            "not known (TuningSplit.champion_trained): the threshold is selected on the others"
        )
    return np.asarray(tuning.champion_trained, dtype=bool)


def _champion_target(
    policy: ThresholdPolicy, tuning: TuningSplit, champion_version: str, champion_threshold: float
) -> _Target:
    """The champion's sensitivity on the tuning cases ``policy.target_cases`` names."""
    positive = np.asarray(tuning.positive, dtype=bool)
    if policy.target_cases is TargetCases.TUNING_SPLIT:
        value = _sensitivity(positive, tuning.champion_scores, champion_threshold)
        return _Target(value, int(positive.size), int(np.count_nonzero(positive)))
    if tuning.champion_seen is None:
        raise ThresholdError(
            f"the plan measures the champion's sensitivity on tuning cases it never trained or "
            f"selected on, and which cases champion version {champion_version} saw is not "
            "known: its training manifest (MLflow artifact dataset/manifest.json, tag "
            "radsentry.dataset_sha256) is missing; register the champion with its manifest "
            "(`radsentry train-initial` and the retraining job log it)"
        )
    seen = np.asarray(tuning.champion_seen, dtype=bool)
    unseen_positive = positive & ~seen
    positives = int(np.count_nonzero(unseen_positive))
    excluded_positives = int(np.count_nonzero(positive & seen))
    if positives < policy.min_tuning_positives:
        raise ThresholdError(
            f"{positives} positive tuning cases are unseen by champion version "
            f"{champion_version} ({excluded_positives} more are in its training manifests and "
            f"cannot measure its sensitivity); the plan's rule {policy.rule.value} needs at "
            f"least {policy.min_tuning_positives}: label more of the sites' recent studies (the "
            "cases the champion never saw) and retrain"
        )
    value = float(np.count_nonzero(tuning.champion_scores[unseen_positive] >= champion_threshold))
    return _Target(
        value / positives,
        int(np.count_nonzero(~seen)),
        positives,
        excluded_cases=int(np.count_nonzero(seen)),
        excluded_positives=excluded_positives,
    )


def select_threshold(
    policy: ThresholdPolicy,
    tuning: TuningSplit,
    *,
    champion_version: str,
    champion_threshold: float,
    plan: Plan | None,
) -> ThresholdProvenance:
    """Apply ``policy`` (see the module docstring); :class:`ThresholdError` when a re-selecting
    rule has fewer than ``policy.min_tuning_positives`` positive tuning cases, or, measuring
    the target on the cases the champion never saw, fewer such positives or no record of
    which cases it saw."""
    positive = np.asarray(tuning.positive, dtype=bool)
    positives = int(np.count_nonzero(positive))
    target: float | None
    measured: _Target | None = None
    selected = np.ones_like(positive)
    if policy.rule is ThresholdRule.KEEP_CHAMPION:
        threshold, source, target = champion_threshold, "champion", None
    else:
        if positives < policy.min_tuning_positives:
            raise ThresholdError(
                f"the tuning split has {positives} positive cases; the plan's threshold rule "
                f"{policy.rule.value} needs at least {policy.min_tuning_positives}"
            )
        if policy.rule is ThresholdRule.HOLD_CHAMPION_SENSITIVITY:
            measured = _champion_target(policy, tuning, champion_version, champion_threshold)
            target = measured.value
            if policy.target_cases is TargetCases.UNSEEN_BY_CHAMPION:
                selected = ~_trained(tuning, champion_version)
        else:
            target = policy.target_sensitivity
        assert target is not None  # the plan's validator requires it for this rule
        threshold = threshold_for_sensitivity(positive & selected, tuning.candidate_scores, target)
        source = "tuning_split"
    unseen = measured is not None and policy.target_cases is TargetCases.UNSEEN_BY_CHAMPION
    on = positive[selected]
    scores = tuning.candidate_scores[selected]
    has_both = 0 < int(np.count_nonzero(on)) < on.size
    return ThresholdProvenance(
        rule=policy.rule,
        threshold=threshold,
        source=source,
        plan_id=None if plan is None else plan.plan_id,
        plan_version=None if plan is None else plan.plan_version,
        champion_version=champion_version,
        champion_threshold=champion_threshold,
        target_sensitivity=target,
        target_cases=None if measured is None else policy.target_cases,
        target_case_count=None if measured is None else measured.cases,
        target_positives=None if measured is None else measured.positives,
        excluded_cases=None if measured is None else measured.excluded_cases,
        excluded_positives=None if measured is None else measured.excluded_positives,
        champion_manifests=tuning.champion_manifests if unseen else None,
        selection_cases=int(on.size) if unseen else None,
        selection_positives=int(np.count_nonzero(on)) if unseen else None,
        training_manifest_sha256=tuning.training_manifest_sha256,
        tuning_cases=int(positive.size),
        tuning_positives=positives,
        tuning_sensitivity=_sensitivity(on, scores, threshold) if has_both else None,
        tuning_specificity=_specificity(on, scores, threshold) if has_both else None,
    )


@dataclass(frozen=True, slots=True)
class ThresholdFacts:
    """What the scope guard knows about a candidate's threshold at gate time."""

    candidate_threshold: float
    champion_threshold: float
    champion_version: str
    provenance: ThresholdProvenance | None
    training_manifest_sha256: str | None
    """The candidate version's ``radsentry.dataset_sha256`` tag."""


def threshold_violations(policy: ThresholdPolicy, facts: ThresholdFacts) -> list[str]:
    """Each way the candidate's threshold breaks the plan's policy, in words (empty: none)."""
    provenance = facts.provenance
    if provenance is None:
        return [
            f"the candidate's threshold {facts.candidate_threshold:.4g} has no recorded "
            "provenance: the plan's threshold policy cannot be shown to have set it"
        ]
    found = []
    if abs(provenance.threshold - facts.candidate_threshold) > TOLERANCE:
        found.append(
            f"the candidate's threshold {facts.candidate_threshold:.4g} is not the "
            f"{provenance.threshold:.4g} its provenance records: it was changed after selection"
        )
    if provenance.rule is not policy.rule:
        found.append(
            f"the threshold was set by rule {provenance.rule.value}, not the plan's "
            f"{policy.rule.value}"
        )
    if policy.rule is ThresholdRule.KEEP_CHAMPION:
        if abs(facts.candidate_threshold - facts.champion_threshold) > TOLERANCE:
            found.append(
                f"the plan keeps the champion's threshold {facts.champion_threshold:.4g}; the "
                f"candidate's is {facts.candidate_threshold:.4g}"
            )
    else:
        if provenance.source != "tuning_split" or (
            provenance.training_manifest_sha256 is None
            or provenance.training_manifest_sha256 != facts.training_manifest_sha256
        ):
            found.append(
                "the threshold was not selected on the tuning split of the candidate's own "
                "training data (its provenance names other data)"
            )
        if (
            policy.rule is ThresholdRule.HOLD_CHAMPION_SENSITIVITY
            and policy.target_cases is TargetCases.UNSEEN_BY_CHAMPION
        ):
            found.extend(_unseen_target_violations(policy, provenance))
        if (
            policy.rule is ThresholdRule.TARGET_SENSITIVITY
            and provenance.target_sensitivity is not None
            and policy.target_sensitivity is not None
            and abs(provenance.target_sensitivity - policy.target_sensitivity) > TOLERANCE
        ):
            found.append(
                f"the threshold aimed for sensitivity {provenance.target_sensitivity:.3f}, not "
                f"the plan's {policy.target_sensitivity:.3f}"
            )
    return found


def _unseen_target_violations(
    policy: ThresholdPolicy, provenance: ThresholdProvenance
) -> list[str]:
    """The plan measures the target on the tuning cases the champion never saw: the
    provenance must say so, with counts that add up and enough positives."""
    if provenance.target_cases is not TargetCases.UNSEEN_BY_CHAMPION:
        recorded = provenance.target_cases or TargetCases.TUNING_SPLIT
        return [
            "the threshold's target sensitivity was not measured on the tuning cases the "
            "champion never trained or selected on, as the plan's threshold policy requires "
            f"(its provenance: {recorded.value})"
        ]
    counts = (
        provenance.target_case_count,
        provenance.target_positives,
        provenance.excluded_cases,
        provenance.excluded_positives,
    )
    if None in counts or not provenance.champion_manifests:
        return ["the threshold's provenance does not record which tuning cases its target left out"]
    cases, positives, excluded, excluded_positives = (int(c or 0) for c in counts)
    found = []
    selection = (provenance.selection_cases, provenance.selection_positives)
    if None in selection:
        found.append("the threshold's provenance does not record the cases it was selected on")
    elif not (
        cases <= int(selection[0] or 0) <= provenance.tuning_cases
        and positives <= int(selection[1] or 0) <= provenance.tuning_positives
    ):
        found.append(
            f"the threshold's provenance does not add up: selected on {selection[0]} cases "
            f"({selection[1]} positive), fewer than its target's or more than the tuning split's"
        )
    if cases + excluded != provenance.tuning_cases or (
        positives + excluded_positives != provenance.tuning_positives
    ):
        found.append(
            f"the threshold's provenance does not add up: {cases} target cases and {excluded} "
            f"left out against {provenance.tuning_cases} tuning cases ({positives} and "
            f"{excluded_positives} positives against {provenance.tuning_positives})"
        )
    if positives < policy.min_tuning_positives:
        found.append(
            f"the target sensitivity was measured on {positives} positive cases; the plan "
            f"needs at least {policy.min_tuning_positives}"
        )
    return found
