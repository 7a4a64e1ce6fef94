"""Pure performance-metric library: labels and scores in, typed results out; no I/O.

:func:`monitor.performance.metrics.binary_metrics` computes, for one window of one site, model
version and finding, AUROC with a DeLong (or bootstrap) interval, sensitivity, specificity, PPV,
NPV and prevalence with Wilson intervals, the confusion counts, the Brier score, the binned
expected calibration error, the calibration slope and intercept and reliability-diagram bins.
:func:`monitor.performance.subgroups.subgroup_metrics` does the same per value of any metadata
field (sex, age band, manufacturer, modality ...). A metric that the data cannot support is
``None`` with the reason, never a made-up number. Definitions: ``docs/performance.md``.
"""
