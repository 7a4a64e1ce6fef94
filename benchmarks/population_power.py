"""How much a population change shows in a window at all: per-window power of single raw tests.

Issue 20's evaluation injects a new population (older AP patients, 30 % of the studies) into
real header tables. The engine finds it late or not at all on NIH and CheXpert
(docs/benchmarks.md, "Choosing the defaults"). This asks what the data allow, before any
learned threshold, persistence rule or correction across features: windows of ``--window``
studies drawn i.i.d. from a template's stable pool, with and without the change, each tested
against a 1,500-study reference with the single tests that could see it, at level 0.01:

* chi-square on PatientAgeBand (10 bands) and on ViewPosition, as the ``chi2`` detector does;
* Mann-Whitney and KS on the age band's index (age treated as ordinal).

A test whose power is low here cannot be made to find the change within that many studies by
any threshold choice without raising its false alarms. PadChest is never read (held out).

    .venv/bin/python -m benchmarks.population_power --window 100 250
"""

from __future__ import annotations

import argparse
import os
import platform
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray
from scipy.stats import chi2_contingency, ks_2samp, mannwhitneyu

from monitor.simulate.realistic.config import PopulationShift
from monitor.simulate.realistic.pool import SitePool, load_pool

TESTS = ("chi2 age band", "chi2 view", "Mann-Whitney age", "KS age")


def _table(reference: NDArray[np.generic], window: NDArray[np.generic]) -> NDArray[np.int64]:
    categories = sorted(set(reference.tolist()) | set(window.tolist()))
    return np.array([[np.sum(side == c) for c in categories] for side in (reference, window)])


def p_values(
    pool: SitePool, reference: NDArray[np.int64], window: NDArray[np.int64]
) -> list[float]:
    age_r, age_w = pool.age_band[reference], pool.age_band[window]
    age_r, age_w = age_r[~np.isnan(age_r)], age_w[~np.isnan(age_w)]
    return [
        float(chi2_contingency(_table(age_r, age_w), correction=False).pvalue),
        float(
            chi2_contingency(
                _table(pool.view[reference], pool.view[window]), correction=False
            ).pvalue
        ),
        float(mannwhitneyu(age_r, age_w).pvalue),
        float(ks_2samp(age_r, age_w).pvalue),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", nargs="+", default=["openi", "nih", "chexpert"])
    parser.add_argument("--window", type=int, nargs="+", default=[100, 250])
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--level", type=float, default=0.01)
    args = parser.parse_args()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {args.trials} windows per cell, level {args.level}\n"
    )
    print("| template | window | share | " + " | ".join(TESTS) + " |")
    print("|---|---:|---:|" + "---:|" * len(TESTS))
    for template in args.templates:
        rng = np.random.default_rng(0)
        pool = load_pool(template)
        position = {row: i for i, row in enumerate(pool.stable)}
        changed = np.array([position[r] for r in pool.population_rows(PopulationShift())])
        everyone = np.flatnonzero(~np.isnan(pool.age_band))
        reference = rng.choice(everyone, 1500)
        for size in args.window:
            for share in (0.0, args.share):
                rejected = np.zeros(len(TESTS))
                for _ in range(args.trials):
                    k = rng.binomial(size, share)
                    window = np.concatenate(
                        [rng.choice(everyone, size - k), rng.choice(changed, k)]
                    )
                    rejected += np.array(p_values(pool, reference, window)) < args.level
                cells = " | ".join(f"{r / args.trials:.2f}" for r in rejected)
                print(f"| {template} | {size} | {share:.0%} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
