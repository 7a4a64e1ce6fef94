"""Drift engine on real chest X-ray metadata: detection delay after a switch, false alarms.

For every ordered pair (A, B) of the torchxrayvision header tables and every seed, two sites are
replayed through one ``DriftEngine(EngineConfig())`` (the default configuration): one on A
throughout, one switching from A to B after ``--n-before`` events (monitor.simulate.xrv). It
prints, per detector, the detection delay (events at the switching site from the switch up to
and including the event whose check raised the alert) and every alert that is a false alarm:
at the stable site, or at the switching site before the switch. Then it replays longer stable
streams of each dataset alone and counts drifting checks and alerts.

    .venv/bin/python -m benchmarks.eval_xrv                     # the table in docs/benchmarks.md
    .venv/bin/python -m benchmarks.eval_xrv --seeds 3 --fields all
    .venv/bin/python -m benchmarks.eval_xrv --jsonl out/        # streams for radsentry backtest

``--fields shared`` (default) keeps only the fields both datasets fill, so a switch shows in
value distributions; ``all`` keeps every field, so fields also appear or vanish at the switch.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from monitor.drift.config import EngineConfig
from monitor.events import to_json
from monitor.simulate.xrv import ALL_FIELDS, XrvDataset, locate_wheel, stable_stream
from monitor.simulate.xrv.evaluate import (
    STABLE_SITE,
    SWITCHING_SITE,
    Replay,
    replay,
    two_site_scenario,
)
from monitor.simulate.xrv.streams import STUDY_INTERVAL

DETECTORS = ("ks", "chi2", "score_ks", "missingness")
"""The window detectors that can run on header metadata (no pixel statistics: no mmd/online)."""


def main() -> None:
    args = _parser().parse_args()
    wheel = _timed_wheel()
    config = EngineConfig()
    reference = config.reference_events(STUDY_INTERVAL.total_seconds())
    args.n_before = args.n_before or reference + 1_100
    args.stable_n = args.stable_n or reference + 6_000
    today, python = f"{datetime.now(UTC):%Y-%m-%d}", platform.python_version()
    print(f"# {today}, Python {python}, engine config {config.fingerprint()[:12]}")
    print(
        f"# reference {reference} events, window {config.window.size}, "
        f"open_after {config.alarms.open_after}, family_alpha {config.family_alpha}"
    )
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    pairs = list(itertools.permutations(XrvDataset, 2))
    for fields in args.fields:
        print(f"\n## Switch after {args.n_before} events, {args.n_after} after; fields: {fields}\n")
        _switches(pairs, seeds, args, wheel, fields)
    print(f"\n## Stable streams of {args.stable_n} events, each dataset alone, all its fields\n")
    _stable(seeds, args.stable_n, wheel)
    if args.jsonl is not None:
        _write_jsonl(args.jsonl, pairs, args, wheel)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--n-before",
        type=int,
        help="default: the reference's events (a study every 30 min) + 1,100",
    )
    parser.add_argument("--n-after", type=int, default=2750)
    parser.add_argument("--stable-n", type=int, help="default: the reference's events + 6,000")
    parser.add_argument("--fields", choices=("shared", "all"), nargs="+", default=["shared", "all"])
    parser.add_argument("--jsonl", type=Path, help="write seed-0 scenarios here as JSONL")
    return parser


def _timed_wheel() -> Path:
    started = time.perf_counter()
    wheel = locate_wheel()
    print(f"# wheel {wheel.name} ready in {time.perf_counter() - started:.2f} s")
    return wheel


def _switches(
    pairs: Sequence[tuple[XrvDataset, XrvDataset]],
    seeds: range,
    args: argparse.Namespace,
    wheel: Path,
    fields: str,
) -> None:
    print("| A → B | " + " | ".join(DETECTORS) + " | first alert | false alarms |")
    print("|---|" + "---|" * (len(DETECTORS) + 2))
    for first, second in pairs:
        delays: dict[str, list[int]] = {name: [] for name in (*DETECTORS, "any")}
        false_alarms: Counter[str] = Counter()
        for seed in seeds:
            events = two_site_scenario(
                first,
                second,
                args.n_before,
                args.n_after,
                seed,
                wheel,
                fields=ALL_FIELDS if fields == "all" else None,
            )
            result = replay(events)
            for alert in result.alerts_before(STABLE_SITE):
                false_alarms[alert.detector] += 1
            for alert in result.alerts_before(SWITCHING_SITE, args.n_before):
                false_alarms[alert.detector] += 1
            first_alerts = result.first_alerts(SWITCHING_SITE, after=args.n_before)
            for name, index in first_alerts.items():
                delays.setdefault(name, []).append(index - args.n_before + 1)
            if first_alerts:
                delays["any"].append(min(first_alerts.values()) - args.n_before + 1)
        cells = [_delay_cell(delays[name], len(seeds)) for name in (*DETECTORS, "any")]
        alarms = ", ".join(f"{n} {d}" for d, n in sorted(false_alarms.items())) or "0"
        print(f"| {first.value} → {second.value} | " + " | ".join(cells) + f" | {alarms} |")


def _delay_cell(delays: list[int], runs: int) -> str:
    if not delays:
        return f"— (0/{runs})"
    return f"{statistics.median(delays):g} [{min(delays)}–{max(delays)}] ({len(delays)}/{runs})"


def _stable(seeds: range, n: int, wheel: Path) -> None:
    print("| dataset | drifting checks / checks per detector | alerts |")
    print("|---|---|---|")
    for dataset in XrvDataset:
        total = Replay()
        for seed in seeds:
            events = stable_stream(dataset, n, STABLE_SITE, seed, wheel=wheel)
            result = replay(events)
            total.checks.update(result.checks)
            total.drifting.update(result.drifting)
            total.alerts += result.alerts
        checks = ", ".join(
            f"{name} {total.drifting[STABLE_SITE, name]}/{total.checks[STABLE_SITE, name]}"
            for name in DETECTORS
            if total.checks[STABLE_SITE, name]
        )
        alerts = Counter(alert.detector for alert in total.alerts)
        shown = ", ".join(f"{name} {count}" for name, count in sorted(alerts.items())) or "0"
        print(f"| {dataset.value} | {checks} | {shown} |")


def _write_jsonl(
    directory: Path,
    pairs: Sequence[tuple[XrvDataset, XrvDataset]],
    args: argparse.Namespace,
    wheel: Path,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for first, second in pairs:
        events = two_site_scenario(first, second, args.n_before, args.n_after, 0, wheel)
        path = directory / f"xrv-{first.value}-to-{second.value}-seed0.jsonl"
        path.write_bytes(b"".join(to_json(event) + b"\n" for event in events))
    print(f"\n# wrote {len(pairs)} scenarios (seed 0) to {directory}/")


if __name__ == "__main__":
    main()
