"""The performance configs (metrics, estimate, alert rules), apart from the calculation.

Settings import them at every start of the CLI, so this module stays light: the calculations
pull in statsmodels, scikit-learn and scipy.sparse.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from monitor.drift.base import DetectorConfig

AurocMethod = Literal["delong", "bootstrap"]
CalibrationMethod = Literal["isotonic", "platt"]


class PerformanceConfig(DetectorConfig):
    """How performance metrics are computed: interval methods, calibration bins, minimum counts.

    Frozen and fingerprinted like the drift detectors' configs (the fingerprint is stored in
    every :class:`BinaryMetrics`). The minimum counts decide when a metric is reported at all.
    """

    confidence_level: float = Field(default=0.95, gt=0.5, lt=1.0)
    auroc_ci: AurocMethod = "delong"
    """``"delong"`` (default, analytic, O(n log n)) or ``"bootstrap"`` (stratified percentile)."""
    n_bootstrap: int = Field(default=1000, ge=100)
    """Resamples for ``auroc_ci="bootstrap"``."""
    seed: int = Field(default=0, ge=0)
    """Seed of the bootstrap's generator: the same window always gets the same interval."""
    ece_bins: int = Field(default=10, ge=2, le=100)
    """Equal-width bins on [0, 1] for the ECE and the reliability diagram."""
    min_cases: int = Field(default=30, ge=1)
    """Fewest cases for the prevalence and the Brier score."""
    min_positives: int = Field(default=10, ge=2)
    """Fewest positive cases for AUROC, sensitivity and the calibration slope and intercept."""
    min_negatives: int = Field(default=10, ge=2)
    """Fewest negative cases for AUROC, specificity and the calibration slope and intercept."""
    min_predicted: int = Field(default=10, ge=1)
    """Fewest predicted positives for PPV, and predicted negatives for NPV."""
    min_calibration_cases: int = Field(default=100, ge=1)
    """Fewest cases for the ECE, the reliability bins and the calibration slope and intercept."""
    min_subgroup_count: int = Field(default=30, ge=1)
    """Fewest cases for a subgroup to be reported at all (``subgroups.subgroup_metrics``)."""


class EstimateConfig(DetectorConfig):
    """How the calibration map is fitted, and when its estimates are not to be trusted."""

    method: CalibrationMethod = "isotonic"
    min_reference: int = Field(200, ge=2)
    min_reference_per_class: int = Field(20, ge=1)
    """Fewest reference positives, and fewest negatives."""
    support_radius_logit: float = Field(0.25, gt=0)
    """Reference cases within this distance (in logits) of a window score support it."""
    min_support: int = Field(10, ge=1)
    """A score with fewer supporting reference cases lies where the map is a guess."""
    max_unsupported_share: float = Field(0.10, ge=0, le=1)
    max_out_of_range_share: float = Field(0.02, ge=0, le=1)
    """Share of window scores allowed outside [min, max] of the reference scores."""
    min_labelled: int = Field(30, ge=1)
    """Fewest labelled window cases before calibration is checked on them."""
    calibration_alpha: float = Field(0.01, gt=0, lt=1)
    """Level of the calibration check, split between its two tests (Bonferroni)."""
    probability_floor: float = Field(0.01, gt=0, lt=0.5)
    """The check holds calibrated probabilities this far from 0 and 1. Isotonic regression puts
    exactly 0 or 1 on its end blocks, fitted on a few dozen cases: that means "rare", not
    "impossible", and one surprising label there must not count as unbounded evidence."""


class ErrorRateCusum(DetectorConfig):
    """A Bernoulli CUSUM for an error rate of ``ratio`` times the reference's."""

    ratio: float = Field(default=2.0, gt=1.0)
    arl0: int = Field(default=20_000, ge=10, le=1_000_000)
    """In-control average run length in labelled cases: one false signal per this many.

    20,000 labelled cases is about three months of one chest X-ray model at a busy site: at
    2,000 the simulated healthy site of tests/integration/test_performance_tracking.py alarmed
    within 900 cases, because p0 estimated from a few hundred reference cases is itself off
    by about a percentage point, which a CUSUM tuned that tightly turns into a false alarm."""
    min_reference_cases: int = Field(default=200, ge=1)
    resolution: int = Field(default=20, ge=5, le=200)
    """Grid units for the smaller log-likelihood-ratio weight (rounding of the larger)."""
    hold_multiple: float = Field(default=2.0, ge=1.0)
    """The statistic is held at most this multiple of h, so that an episode can end soon after
    the error rate is back to normal."""


class AurocCusum(DetectorConfig):
    """A CUSUM on placement values, tuned to an AUROC ``drop`` from the reference's.

    The reference is the first ``reference_cases`` labelled cases the rule reads (more if a
    class has fewer than its minimum); every later case is monitored (``_auroc_cusum``)."""

    drop: float = Field(default=0.03, gt=0.0, lt=0.5)
    """The AUROC drop to detect fastest: the alternative's mean placement, per class, is the
    reference AUROC minus this."""
    arl0: int = Field(default=10_000, ge=10, le=10_000_000)
    """In-control average run length in monitored labelled cases, held with
    ``reference_confidence`` over the reference's sampling error. Chosen in
    benchmarks/seq_performance.py (docs/benchmarks.md): realised, 0.28 alerts per stable year
    at 16,000 labelled cases a year (NannyML's chunks of 500: 0.42), and delays 15-30% shorter
    than at 50,000 (0.02 alerts per year)."""
    reference_cases: int = Field(default=2000, ge=20)
    """Labelled cases that form the reference. 500 (the tracker's ``estimate_reference``) leaves
    the reference AUROC uncertain by about 0.03 (95%), as large as the drop to find: h then has
    to allow for it and the rule ends up slower and no quieter (docs/benchmarks.md)."""
    min_positives: int = Field(default=30, ge=2)
    """Fewest positive cases in the reference (it grows until it has them)."""
    min_negatives: int = Field(default=30, ge=2)
    """Fewest negative cases in the reference."""
    reference_confidence: float = Field(default=0.99, ge=0.5, lt=1.0)
    """The reference's placement distributions are estimates. ``h`` is set so that ``arl0`` holds
    for the least favourable per-class mean placements within this one-sided confidence of the
    reference's (0.5: for the reference's own distributions, no allowance)."""
    resolution: int = Field(default=100, ge=10, le=1000)
    """Grid units for the largest log-likelihood-ratio step of any placement."""
    hold_multiple: float = Field(default=2.0, ge=1.0)
    """The statistic is held at most this multiple of h, so an episode can end after recovery."""
    by_fields: tuple[str, ...] = ()
    """Metadata fields (e.g. ``ManufacturerModelName``) each of whose values gets a CUSUM of its
    own, on that value's cases against the same reference: a new unit whose cases rank worse is
    seen at its full drop from its first case, not diluted by the rest of the site's studies.
    The ``arl0`` then holds for the whole family (:attr:`cusum_arl0`)."""
    max_values: int = Field(default=16, ge=1, le=256)
    """Values tracked per field, the first seen after the reference; the cases of later values
    still count in the pooled CUSUM and are counted as untracked (the state stays bounded)."""
    new_values_only: bool = True
    """Only values new to the reference (under ``known_share`` of its cases) get a CUSUM: a
    unit that was part of the reference is the pooled CUSUM's alone. A
    unit that ranked worse than the pool from the start would otherwise signal on its own
    cases: in benchmarks/seq_performance.py, with one older unit at AUROC 0.87 among 0.90s,
    0.54 false alerts a year with every value against 0.14 with new values only, at the same
    delays (docs/performance.md). A reference collected before ``by_fields`` was set knows no
    values, so all count as new."""
    new_value_false_alarm: float = Field(default=0.01, ge=0.0, lt=1.0)
    """A new value's CUSUM starts with a head start, not at 0 (Lucas and Crosier's fast
    initial response, 1982): a new unit is either as good as the others from its first case or
    not, so its first cases are where a change is most likely, and from a head start a drop is
    found in fewer of them. Once the statistic falls to 0 the CUSUM is an ordinary one, so the
    head start adds at most one false signal per new value; the head start is the largest, up
    to half of ``h``, that keeps the probability of that signal at or below this (computed
    exactly at the least favourable reference means: the design's ``head_start_false_alarm``).
    Values of the reference (``known_share``) start at 0. 0: no head start."""
    known_share: float = Field(default=0.05, gt=0.0, le=1.0)
    """With ``new_values_only``, a value is part of the reference from this share of its cases
    on: a new unit whose first few studies were labelled early, among the reference's, is
    still new."""

    @property
    def cusum_arl0(self) -> float:
        """The in-control ARL each CUSUM is designed for, in its own monitored cases, so that the
        family (pooled, plus one per value of each of ``by_fields``) signals falsely once per
        ``arl0`` monitored cases. Each CUSUM's false signals come at a rate of about one per
        ``cusum_arl0`` of its own cases; a value with share ``p`` of the cases has ``p`` of them,
        and the shares of one field's values add up to at most 1. So the family's rate per
        monitored case is at most ``(1 + len(by_fields)) / cusum_arl0 = 1 / arl0`` (checked by
        simulation in benchmarks/seq_performance.py, docs/benchmarks.md)."""
        return float(self.arl0 * (1 + len(self.by_fields)))


class SensitivityFloor(DetectorConfig):
    """Breach when the sensitivity's upper confidence bound is below ``floor``."""

    floor: float = Field(default=0.8, gt=0.0, lt=1.0)
    min_positives: int = Field(default=30, ge=1)


class AurocDrop(DetectorConfig):
    """Breach when AUROC has dropped from the reference by more than ``margin``, confidently."""

    margin: float = Field(default=0.05, ge=0.0, lt=0.5)
    min_positives: int = Field(default=30, ge=2)
    """Fewest positive cases, in the window and in the reference."""
    min_negatives: int = Field(default=30, ge=2)
    """Fewest negative cases, in the window and in the reference."""


class CalibrationLimit(DetectorConfig):
    """Breach when the ECE, less a sampling-noise allowance, is above ``max_ece``."""

    max_ece: float = Field(default=0.1, gt=0.0, lt=1.0)
    min_cases: int = Field(default=200, ge=1)
    null_draws: int = Field(default=2000, ge=200)
    """Simulated calibrated windows behind the noise allowance."""
    seed: int = Field(default=0, ge=0)


class RulesConfig(DetectorConfig):
    """Which performance rules run and how; ``None`` switches a rule off."""

    sensitivity_floor: SensitivityFloor | None = Field(default_factory=SensitivityFloor)
    auroc_drop: AurocDrop | None = Field(default_factory=AurocDrop)
    calibration_limit: CalibrationLimit | None = Field(default_factory=CalibrationLimit)
    error_rate_cusum: ErrorRateCusum | None = Field(default_factory=ErrorRateCusum)
    auroc_cusum: AurocCusum | None = None
    """Off by default (ADR 0011): it also signals when every score moves up with the AUROC
    unchanged (a recalibration), needs 2,000 labelled cases before it runs, and its state (the
    reference's scores) is read and written at every refresh; in benchmarks/seq_performance.py
    it halves NannyML's delay on an abrupt change but not on ramps, which its CUSUMs per
    scanner model (``by_fields``) do when the change comes with a new unit. Switch it on with
    ``RADSENTRY_PERFORMANCE__RULES__AUROC_CUSUM__DROP=0.03`` (or any of its fields;
    ``..._BY_FIELDS='["ManufacturerModelName"]'`` for the CUSUMs per value)."""
