"""Can a population change be told from a stable site's wander at all? (issue 20's open gap)

``benchmarks/population_power.py`` asks what one window shows on exchangeable rows. A site's
stable months are not exchangeable: the census and the winter move its AP share and age mix
(``monitor.simulate.realistic``, ``Wander``), and a detector that alerts on a population change
alerts on the same movement in a stable month. This measures, on the streams of
``benchmarks/drift_realistic.py`` (same sites, seeds, reference and onsets), how far the age
mix and the AP share of the ``--window`` studies after an onset move from the reference, against
how far every window of that size moves in the stable months:

* the stable windows (tumbling, after the reference) give the effect a detector must stay below
  to raise at most ``--per-year`` alerts per site-year (its ``1 - per_year / windows a year``
  quantile, pooled over the sites: a threshold no tighter than any rule allows);
* the changed windows (the ``--window`` studies from each onset; 30 % older AP patients) give
  the share of changes that one window of that size shows beyond that threshold.

Effects, each of the window against the reference: the mean age band's shift in reference sd
(the ``chi2`` detector's ordinal effect), the AP share's difference in points, and the larger of
the two standardised by the stable windows' own sd (both fields at once). No p-value, learned
threshold or persistence rule: an upper bound on what any rule on these fields can do at that
false-alarm rate. PadChest is never read (held out).

``--within-room`` scores each study against its own room's reference instead (the ceiling of a
test stratified by acquisition signature: a room mix that moves shows no effect).
``--within-view weighted`` measures the age shift within each view (``ViewPosition``; a missing
view is a stratum of its own): per view the window's mean age band minus the reference's, in that
view's reference sd, averaged with the window's counts per view as weights (the effect a
stratified rank test such as van Elteren's would carry); ``--within-view largest`` takes the
largest of the per-view shifts instead (views with at least 20 window ages), which a change
confined to one view dilutes less. The AP share stays the marginal one either way.
``--age-wander 0`` (a diagnostic, not the evaluation) turns the simulator's direct age tilt
off, to show how much of the stable windows' age shift it makes.

``--baseline recent --recent-weeks 2 4 8 --gap 0 1`` (pooled fields only) compares each window
with the ``--recent-weeks`` weeks of studies that end ``--gap`` windows before it, instead of the
fixed reference: a ceiling for a detector whose baseline moves with the site, so a slow wander
cancels between adjacent weeks while a step is a step. The fixed reference's rows come from the
same run, and the two rules are also combined, each at half the alert budget, so the pair
stays within ``--per-year``. In every mode a change is also scored on each window of that size,
aligned to its onset, that ends within ``--within`` studies of it (the issue's criterion; a
later window's recent baseline may hold the change's first studies, as a real detector's
would), next to the share of stable runs as long with a window beyond (chance). ``--ramp``
grows the change's share over that many studies instead of a step.

    .venv/bin/python -m benchmarks.population_wander --window 100 250
    .venv/bin/python -m benchmarks.population_wander --window 100 250 --baseline recent
"""

from __future__ import annotations

import argparse
import os
import platform
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from monitor.drift.config import EngineConfig
from monitor.simulate.realistic import (
    Change,
    ChangeKind,
    RealisticStream,
    RealisticStreamConfig,
    SitePool,
    SiteTemplate,
    Wander,
    load_pool,
)

Effects = NDArray[np.float64]  # rows: windows; columns: age shift (sd), AP share difference


def _effects(
    pool: SitePool,
    rows: NDArray[np.int64],
    reference: int,
    starts: list[int],
    size: int,
    within_room: bool = False,
    within_view: str | None = None,
) -> Effects:
    """Each window's (age shift in reference sd, AP share minus the reference's).

    ``within_room``: each study against its own room's reference mean age band and AP share
    (the pooled within-room sd for the age), so a window whose room mix moved but whose rooms
    did not shows no effect: the ceiling of a test stratified by acquisition signature.
    """
    position = np.searchsorted(pool.stable, rows)
    age, ap = pool.age_band[position], (pool.view[position] == "AP").astype(np.float64)
    room = pool.room[position]
    present = ~np.isnan(age)
    ref = slice(0, reference)
    if within_view is not None:
        largest = within_view == "largest"
        return _within_view(pool.view[position], age, ap, reference, starts, size, largest)
    if within_room:
        expected_age = np.full(pool.rooms, np.nan)
        expected_ap = np.full(pool.rooms, np.nan)
        for code in range(pool.rooms):
            in_room = room[ref] == code
            if (in_room & present[ref]).any():
                expected_age[code] = age[ref][in_room & present[ref]].mean()
            if in_room.any():
                expected_ap[code] = ap[ref][in_room].mean()
        overall_age, overall_ap = age[ref][present[ref]].mean(), ap[ref].mean()
        age = age - np.where(np.isnan(expected_age), overall_age, expected_age)[room]
        ap = ap - np.where(np.isnan(expected_ap), overall_ap, expected_ap)[room]
        mean, ref_ap = 0.0, 0.0
        sd = float(age[ref][present[ref]].std())
    else:
        ref_age = age[ref][present[ref]]
        mean, sd, ref_ap = ref_age.mean(), ref_age.std(), ap[ref].mean()
    out = []
    for start in starts:
        window_age = age[start : start + size]
        window_age = window_age[~np.isnan(window_age)]
        out.append(
            (abs(window_age.mean() - mean) / sd, abs(ap[start : start + size].mean() - ref_ap))
        )
    return np.asarray(out, dtype=np.float64)


def _within_view(
    view: NDArray[np.str_],
    age: NDArray[np.float64],
    ap: NDArray[np.float64],
    reference: int,
    starts: list[int],
    size: int,
    largest: bool = False,
    min_reference: int = 30,
    min_window: int = 20,
) -> Effects:
    """Each window's (|weighted mean of the per-view age shifts in that view's reference sd|,
    AP share minus the reference's); views with fewer than ``min_reference`` reference ages, or
    one age band only, are left out. ``largest``: the largest |per-view shift| of the views with
    at least ``min_window`` window ages instead of the weighted mean."""
    present = ~np.isnan(age)
    reference_stats: dict[str, tuple[float, float]] = {}
    for value in np.unique(view[:reference]):
        ages = age[:reference][(view[:reference] == value) & present[:reference]]
        if len(ages) >= min_reference and ages.std() > 0:
            reference_stats[str(value)] = (float(ages.mean()), float(ages.std()))
    ref_ap = ap[:reference].mean()
    out = []
    for start in starts:
        window = slice(start, start + size)
        shifts, weights = [], []
        for value, (mean, sd) in reference_stats.items():
            ages = age[window][(view[window] == value) & present[window]]
            if len(ages) >= (min_window if largest else 1):
                shifts.append((ages.mean() - mean) / sd)
                weights.append(len(ages))
        if not weights:
            shift = 0.0
        elif largest:
            shift = float(np.abs(shifts).max())
        else:
            shift = abs(float(np.average(shifts, weights=weights)))
        out.append((shift, abs(ap[window].mean() - ref_ap)))
    return np.asarray(out, dtype=np.float64)


def _recent_effects(
    pool: SitePool, rows: NDArray[np.int64], starts: list[int], size: int, length: int, gap: int
) -> Effects:
    """Each window's (age shift in the baseline's sd, AP share minus the baseline's), the
    baseline being the ``length`` studies that end ``gap`` studies before the window starts."""
    position = np.searchsorted(pool.stable, rows)
    age, ap = pool.age_band[position], (pool.view[position] == "AP").astype(np.float64)
    present = ~np.isnan(age)
    known = np.where(present, age, 0.0)
    sums = {
        name: np.concatenate(([0.0], np.cumsum(values)))
        for name, values in (("n", present), ("age", known), ("age2", known**2), ("ap", ap))
    }

    def mean(name: str, lo: int, hi: int) -> float:
        count = sums["n"][hi] - sums["n"][lo] if name.startswith("age") else hi - lo
        return float((sums[name][hi] - sums[name][lo]) / count)

    out = []
    for start in starts:
        lo, hi = start - gap - length, start - gap
        if lo < 0:
            raise ValueError(
                f"the recent baseline of the window at {start} starts before the stream"
            )
        base_mean = mean("age", lo, hi)
        base_sd = np.sqrt(max(mean("age2", lo, hi) - base_mean**2, 0.0))
        shift = abs(mean("age", start, start + size) - base_mean) / base_sd
        out.append((shift, abs(mean("ap", start, start + size) - mean("ap", lo, hi))))
    return np.asarray(out, dtype=np.float64)


def _baseline_effects(
    pool: SitePool,
    rows: NDArray[np.int64],
    reference: int,
    starts: list[int],
    size: int,
    recent: int,
    gap: int,
    strata: tuple[bool, str | None],
) -> Effects:
    """Against the fixed reference (``recent`` 0) or the ``recent`` studies that end ``gap``
    windows before each window."""
    if not recent:
        return _effects(pool, rows, reference, starts, size, *strata)
    return _recent_effects(pool, rows, starts, size, recent, gap * size)


def _chance(alarm: NDArray[np.bool_], runs: int) -> float:
    """The share of runs of ``runs`` consecutive stable windows with a window beyond the
    threshold: what "found within" scores on a stream without a change (the sites' windows
    are concatenated, so a few runs straddle two sites)."""
    if len(alarm) < runs:
        return float("nan")
    counts = np.convolve(alarm.astype(np.float64), np.ones(runs), mode="valid")
    return float((counts > 0).mean())


def _mode(within_room: bool, within_view: str | None) -> str:
    if within_room:
        return "within each room"
    if within_view is not None:
        return f"within each view ({within_view})"
    return "pooled"


def _summary(
    stable: Effects, changed: NDArray[np.float64], quantile: float
) -> tuple[list[float], list[float], NDArray[np.bool_], NDArray[np.bool_]]:
    """The stable threshold per field, the changes' median effects in their first window,
    and which change windows lie beyond (rows: changes; columns: windows; last axis: age, AP,
    either field standardised by the stable windows' sd)."""
    limits = np.quantile(stable, quantile, axis=0)
    scale = stable.std(axis=0)
    either_limit = np.quantile((stable / scale).max(axis=1), quantile)
    beyond = np.concatenate(
        [changed > limits, ((changed / scale).max(axis=2) > either_limit)[..., None]], axis=2
    )
    stable_beyond = (stable / scale).max(axis=1) > np.quantile(
        (stable / scale).max(axis=1), quantile
    )
    return (
        [float(limits[0]), float(limits[1])],
        [float(np.median(changed[:, 0, 0])), float(np.median(changed[:, 0, 1]))],
        beyond,
        stable_beyond,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--templates", nargs="+", default=["nih", "chexpert"])
    parser.add_argument("--window", type=int, nargs="+", default=[100, 250])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--months", type=float, default=12.0)
    parser.add_argument("--onsets", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=1500)
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--per-year", type=float, default=1.0)
    parser.add_argument(
        "--ramp", type=int, default=0, help="studies over which the share grows (0: a step)"
    )
    parser.add_argument(
        "--within-room",
        action="store_true",
        help="each study against its own room's reference (a test stratified by room)",
    )
    parser.add_argument(
        "--within-view",
        choices=("weighted", "largest"),
        help="the age shift within each view, their weighted mean or the largest",
    )
    parser.add_argument(
        "--age-wander",
        type=float,
        default=1.0,
        help="a diagnostic, not the evaluation: scale the simulator's age tilt (age_sd, "
        "seasonal_age) by this, to see how much of the stable windows' age shift it makes",
    )
    parser.add_argument(
        "--baseline",
        choices=("fixed", "recent"),
        default="fixed",
        help="recent: also each window against the weeks before it (pooled fields only)",
    )
    parser.add_argument("--recent-weeks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument(
        "--gap", type=int, nargs="+", default=[0, 1], help="windows between baseline and window"
    )
    parser.add_argument(
        "--within", type=int, default=250, help="a change counts as found within this many studies"
    )
    args = parser.parse_args()
    if args.within_room and args.within_view is not None:
        parser.error("--within-room and --within-view are separate runs")
    if args.baseline == "recent" and (args.within_room or args.within_view is not None):
        parser.error("--baseline recent compares the pooled fields only")
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {args.sites} sites per template, {args.onsets} onsets each, "
        f"{args.share:.0%} older AP patients (ramp {args.ramp}), "
        f"at most {args.per_year:g} alert per site-year; "
        f"age shift {_mode(args.within_room, args.within_view)}; "
        f"age tilt x {args.age_wander:g}; a change found within {args.within} studies: any "
        "window of that size that ends by then, aligned to the onset\n"
    )
    print(
        "| template | background | window | baseline | stable windows "
        "| threshold: age shift (sd) | AP share (points) | change, median: age shift | AP share "
        f"| first window beyond: age | AP | either (standardised) | within {args.within}: age "
        "| AP | either | stable runs as long: either |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    per_day = 50.0
    reference = EngineConfig().reference_events(86_400 / per_day)
    strata = (args.within_room, args.within_view)
    baselines: list[tuple[str, int, int]] = [("fixed reference (13 weeks)", 0, 0)]
    if args.baseline == "recent":
        baselines += [
            (f"recent {weeks} weeks, gap {gap}", weeks, gap)
            for weeks in args.recent_weeks
            for gap in args.gap
        ]
    for template in args.templates:
        pool = load_pool(template)
        for background, size in [
            (b, s) for b in ("wandering", "exchangeable") for s in args.window
        ]:
            stable: dict[str, list[Effects]] = {name: [] for name, _, _ in baselines}
            changed: dict[str, list[Effects]] = {name: [] for name, _, _ in baselines}
            per_week = 0
            for site in range(args.sites):
                config = RealisticStreamConfig(
                    template=SiteTemplate(template),
                    site_id=f"{template}-{site + 1:02d}",
                    seed=site,
                    studies_per_day=per_day,
                    pixel_stats=False,
                    exchangeable=background == "exchangeable",
                    n_studies=reference + round(args.months * per_day * 365.25 / 12),
                    wander=Wander(
                        age_sd=Wander().age_sd * args.age_wander,
                        seasonal_age=Wander().seasonal_age * args.age_wander,
                    ),
                )
                per_week = config.studies_per_week

                rows = RealisticStream(config, pool).plan.rows
                n = config.n_studies
                starts = list(range(reference, n - size + 1, size))
                for name, weeks, gap in baselines:
                    stable[name].append(
                        _baseline_effects(
                            pool, rows, reference, starts, size, weeks * per_week, gap, strata
                        )
                    )
                span = n - reference - args.horizon
                for k in range(args.onsets):
                    onset = reference + round((k + 0.5) * span / args.onsets)
                    change = Change(
                        kind=ChangeKind.POPULATION, onset=onset, share=args.share, ramp=args.ramp
                    )
                    changed_config = RealisticStreamConfig.model_validate(
                        config.model_dump() | {"changes": (change,)}
                    )
                    changed_rows = RealisticStream(changed_config, pool).plan.rows
                    after = [onset + j * size for j in range(max(1, args.within // size))]
                    for name, weeks, gap in baselines:
                        changed[name].append(
                            _baseline_effects(
                                pool,
                                changed_rows,
                                reference,
                                after,
                                size,
                                weeks * per_week,
                                gap,
                                strata,
                            )
                        )
            windows_a_year = 365.25 * per_day / size
            quantile = 1.0 - args.per_year / windows_a_year
            half = 1.0 - args.per_year / 2 / windows_a_year
            fixed_name = baselines[0][0]
            for name, _, _ in baselines:
                stable_all, changed_all = np.concatenate(stable[name]), np.stack(changed[name])
                limits, medians, beyond, alarm = _summary(stable_all, changed_all, quantile)
                first, within = beyond[:, 0, :].mean(axis=0), beyond.any(axis=1).mean(axis=0)
                runs = changed_all.shape[1]
                print(
                    f"| {template} | {background} | {size} | {name} | {len(stable_all)} "
                    f"| {limits[0]:.2f} | {100 * limits[1]:.1f} | {medians[0]:.2f} "
                    f"| {100 * medians[1]:.1f} | {first[0]:.0%} | {first[1]:.0%} | {first[2]:.0%} "
                    f"| {within[0]:.0%} | {within[1]:.0%} | {within[2]:.0%} "
                    f"| {_chance(alarm, runs):.0%} |",
                    flush=True,
                )
                if name == fixed_name:
                    continue
                # The fixed and the recent rule together, each at half the alert budget.
                fixed_stable = np.concatenate(stable[fixed_name])
                fixed_changed = np.stack(changed[fixed_name])
                *_, fixed_beyond, fixed_alarm = _summary(fixed_stable, fixed_changed, half)
                *_, recent_beyond, recent_alarm = _summary(stable_all, changed_all, half)
                found = (fixed_beyond[..., 2] | recent_beyond[..., 2]).any(axis=1).mean()
                alarms = (fixed_alarm | recent_alarm).mean() * windows_a_year
                print(
                    f"| {template} | {background} | {size} | fixed + {name}, each at half "
                    f"({alarms:.2f} alerts per stable site-year) | | | | | | | | "
                    f"{(fixed_beyond[:, 0, 2] | recent_beyond[:, 0, 2]).mean():.0%} | | | "
                    f"{found:.0%} | {_chance(fixed_alarm | recent_alarm, runs):.0%} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
