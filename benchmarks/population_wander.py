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

    .venv/bin/python -m benchmarks.population_wander --window 100 250
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


def _mode(within_room: bool, within_view: str | None) -> str:
    if within_room:
        return "within each room"
    if within_view is not None:
        return f"within each view ({within_view})"
    return "pooled"


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
    args = parser.parse_args()
    if args.within_room and args.within_view is not None:
        parser.error("--within-room and --within-view are separate runs")
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {args.sites} sites per template, {args.onsets} onsets each, "
        f"{args.share:.0%} older AP patients, at most {args.per_year:g} alert per site-year; "
        f"age shift {_mode(args.within_room, args.within_view)}; "
        f"age tilt x {args.age_wander:g}\n"
    )
    print(
        "| template | background | window | stable windows | threshold: age shift (sd) "
        "| AP share (points) | change, median: age shift | AP share "
        "| changes beyond it: age | AP | either (standardised) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    per_day = 50.0
    reference = EngineConfig().reference_events(86_400 / per_day)
    for template in args.templates:
        pool = load_pool(template)
        for background, size in [
            (b, s) for b in ("wandering", "exchangeable") for s in args.window
        ]:
            stable, changed = [], []
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
                rows = RealisticStream(config, pool).plan.rows
                n = config.n_studies
                starts = list(range(reference, n - size + 1, size))
                strata = (args.within_room, args.within_view)
                stable.append(_effects(pool, rows, reference, starts, size, *strata))
                span = n - reference - args.horizon
                for k in range(args.onsets):
                    onset = reference + round((k + 0.5) * span / args.onsets)
                    change = Change(kind=ChangeKind.POPULATION, onset=onset, share=args.share)
                    changed_config = RealisticStreamConfig.model_validate(
                        config.model_dump() | {"changes": (change,)}
                    )
                    changed_rows = RealisticStream(changed_config, pool).plan.rows
                    changed.append(_effects(pool, changed_rows, reference, [onset], size, *strata))
            stable_all, changed_all = np.concatenate(stable), np.concatenate(changed)
            windows_a_year = 365.25 * per_day / size
            quantile = 1.0 - args.per_year / windows_a_year
            limits = np.quantile(stable_all, quantile, axis=0)
            beyond = (changed_all > limits).mean(axis=0)
            scale = stable_all.std(axis=0)
            combined_limit = np.quantile((stable_all / scale).max(axis=1), quantile)
            either = float(((changed_all / scale).max(axis=1) > combined_limit).mean())
            print(
                f"| {template} | {background} | {size} | {len(stable_all)} | {limits[0]:.2f} | "
                f"{100 * limits[1]:.1f} | {np.median(changed_all[:, 0]):.2f} | "
                f"{100 * np.median(changed_all[:, 1]):.1f} | {beyond[0]:.0%} | {beyond[1]:.0%} | "
                f"{either:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
