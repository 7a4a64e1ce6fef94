"""Pure drift-detector library: values in, typed results out; no I/O.

Every detector follows one contract (:class:`monitor.drift.base.Detector`): ``fit`` on a
reference sample, ``score`` a window, get a :class:`DriftResult` with the statistic, p-value or
threshold, an effect size, per-feature attributions and ``is_drift``.
"""
