"""Drift alarms on realistic metadata streams (issue 20): stable months, changes, i.i.d. level.

For each engine config and site template (monitor.simulate.realistic), ``--sites`` sites each
give two replays through ``DriftEngine.process`` (the code the live consumer and ``radsentry
backtest`` run; a config file loads as ``radsentry backtest --config`` loads it):

* the **wandering** stable stream: the reference, then ``--months`` stable months whose weeks
  wander. It gives alerts per stable month per detector, time in alarm (the share of studies
  inside an open episode) and the share of drifting checks;
* the **exchangeable** stream, the same rows shuffled: drifting checks per detector against the
  level each tests at (``family_alpha`` / k), any-detector windows against ``family_alpha``.

At ``--onsets`` points of each, the engine is copied just before the onset and every change the
template supports is replayed from the copy for ``--horizon`` studies (a stream with a change
equals the stream without it up to the onset, so this is the replay of the changed stream). The
delay counts the studies from the onset up to and including the one whose check raised the first
alert. On the wandering stream it is what a site would see; on the exchangeable one, what the
detectors can see without wander and without an episode already open.

    .venv/bin/python -m benchmarks.drift_realistic                  # docs/benchmarks.md
    .venv/bin/python -m benchmarks.drift_realistic --quick          # about a minute
    .venv/bin/python -m benchmarks.drift_realistic --config default --config new.yaml
    .venv/bin/python -m benchmarks.drift_realistic --jsonl out/     # streams for the backtest
    .venv/bin/python -m benchmarks.drift_realistic --survey         # the wheel's header tables
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.drift_realistic_tally import Background, Cell, Cells, Recorder, Trial, report
from monitor.drift.config import EMBEDDING_DETECTOR, EngineConfig
from monitor.drift.engine import DriftEngine
from monitor.events import ALLOWED_METADATA_KEYS, InferenceEvent, to_json
from monitor.service.backtest.replay import load_config
from monitor.service.drift.store import limit_torch_threads
from monitor.simulate.realistic import (
    Change,
    ChangeKind,
    RealisticStream,
    RealisticStreamConfig,
    SitePool,
    SiteTemplate,
    Wander,
    header_tables,
    load_pool,
)
from monitor.simulate.xrv import locate_wheel


def main() -> None:
    args = _parser().parse_args()
    if args.survey:
        _survey()
        return
    args.config = args.config or ["default"]
    if args.quick:
        args.sites, args.months, args.onsets = 1, 4, 2
    limit_torch_threads()  # as `radsentry backtest` does
    started = time.perf_counter()
    configs = [(_label(name), _config(name)) for name in args.config]
    reference = max(_reference_studies(config, args.per_day) for _, config in configs)
    print(f"# {datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, {_cpu()}")
    for label, config in configs:
        print(f"# config {label}: {config.fingerprint()[:12]}, {_describe(config)}")
    cells: Cells = {}
    for template in args.templates:
        pool = load_pool(template)
        for site in range(args.sites):
            stream_config = _stream_config(args, template, site, reference)
            for label, config in configs:
                _run_site(
                    cells.setdefault((label, template), Cell()), pool, stream_config, config, args
                )
            if args.jsonl is not None and site == 0:
                _write_jsonl(args.jsonl, pool, stream_config, reference, args)
    report(
        cells,
        configs,
        f"{args.sites} sites per template, {args.months:g} months each after the reference, "
        f"{args.per_day:g} studies a day, wander x{args.wander_scale:g}; changes: "
        f"{args.share:g} of the studies from the onset (protocol: all), ramp {args.ramp}, "
        f"{args.onsets} onsets per site, {args.horizon} studies replayed",
    )
    events = sum(cell.events for cell in cells.values())
    print(f"\n# {events:,} events in {time.perf_counter() - started:.0f} s")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--config",
        action="append",
        help="'default' (EngineConfig()) or an EngineConfig JSON/YAML file; repeatable",
    )
    parser.add_argument(
        "--templates",
        nargs="+",
        type=SiteTemplate,
        default=[SiteTemplate.OPENI, SiteTemplate.NIH, SiteTemplate.CHEXPERT],
    )
    parser.add_argument("--sites", type=int, default=4, help="sites per template")
    parser.add_argument("--months", type=float, default=12.0, help="stable months per site")
    parser.add_argument("--per-day", type=float, default=50.0, help="studies per day")
    parser.add_argument("--onsets", type=int, default=4, help="change onsets per site")
    parser.add_argument("--horizon", type=int, default=1500, help="studies replayed per change")
    parser.add_argument(
        "--share",
        type=float,
        default=0.3,
        help="share of studies a new unit, modality or population takes (a protocol change "
        "applies to every study)",
    )
    parser.add_argument("--ramp", type=int, default=0, help="studies over which the share grows")
    parser.add_argument("--wander-scale", type=float, default=1.0)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--no-pixels", action="store_true", help="no pixel statistics")
    parser.add_argument("--quick", action="store_true", help="1 site, 4 months, 2 onsets")
    parser.add_argument("--jsonl", type=Path, help="write the first site's streams here")
    parser.add_argument(
        "--survey", action="store_true", help="list the wheel's tables and their DICOM columns"
    )
    return parser


def _config(name: str) -> EngineConfig:
    return EngineConfig() if name == "default" else load_config(Path(name))


def _label(name: str) -> str:
    return name if name == "default" else Path(name).stem


def _reference_studies(config: EngineConfig, per_day: float) -> int:
    """How many studies a stream's reference takes at ``per_day`` studies a day."""
    return config.reference_events(86_400 / per_day)


def _describe(config: EngineConfig) -> str:
    alarms = config.alarms
    reference = " and ".join(
        part
        for part in (
            None if config.reference_size is None else f"{config.reference_size} events",
            None
            if config.reference_duration_s is None
            else f"{config.reference_duration_s / 86_400:g} days",
        )
        if part is not None
    )
    learned = "" if config.learned is None else f"learned k={config.learned.k:g}"
    return (
        f"reference {reference}, window {config.window.size}, family_alpha "
        f"{config.family_alpha}, open_after {alarms.open_after}, close_after "
        f"{alarms.close_after}, cooldown {alarms.cooldown_checks}"
        + ("" if config.learned is None else f", {learned}")
        + ("" if config.sequential is None else f", CUSUM k={config.sequential.k:g}")
    )


def _cpu() -> str:
    return f"{os.cpu_count()}-core {platform.machine()}"


def _stream_config(
    args: argparse.Namespace, template: SiteTemplate, site: int, reference: int
) -> RealisticStreamConfig:
    base = RealisticStreamConfig(
        template=template,
        site_id=f"{template.value}-{site + 1:02d}",
        seed=args.first_seed + site,
        studies_per_day=args.per_day,
        wander=Wander(scale=args.wander_scale),
        pixel_stats=not args.no_pixels,
    )
    return _with(base, n_studies=reference + round(args.months * base.studies_per_month))


def _with(config: RealisticStreamConfig, **update: object) -> RealisticStreamConfig:
    """``config`` with ``update`` applied and validated again (model_copy would not check)."""
    return RealisticStreamConfig.model_validate(config.model_dump() | update)


def _onsets(n: int, reference: int, horizon: int, count: int) -> list[int]:
    """``count`` onsets spread over the stable stretch, each leaving ``horizon`` studies."""
    span = n - reference - horizon
    if span <= 0:
        raise SystemExit(f"--months too short for a horizon of {horizon} studies")
    return [reference + round((k + 0.5) * span / count) for k in range(count)]


def _kinds(pool: SitePool) -> list[ChangeKind]:
    """The change types a template supports."""
    kinds = [
        kind for kind in (ChangeKind.NEW_UNIT, ChangeKind.NEW_MODALITY) if kind in pool.held_out
    ]
    if pool.has_technique:
        kinds.append(ChangeKind.PROTOCOL)
    return [*kinds, ChangeKind.POPULATION]


def _change(kind: ChangeKind, onset: int, args: argparse.Namespace) -> Change:
    """A protocol change reaches every study (the protocol is updated in every room); the others
    take ``--share`` of them."""
    share = 1.0 if kind is ChangeKind.PROTOCOL else args.share
    return Change(kind=kind, onset=onset, share=share, ramp=args.ramp)


def _run_site(
    cell: Cell,
    pool: SitePool,
    stream_config: RealisticStreamConfig,
    config: EngineConfig,
    args: argparse.Namespace,
) -> None:
    reference = _reference_studies(config, stream_config.studies_per_day)
    onsets = _onsets(stream_config.n_studies, reference, args.horizon, args.onsets)
    stable = _replay(cell, "wandering", pool, stream_config, config, onsets, args)
    cell.stable.append(stable)
    cell.months += stable.studies / stream_config.studies_per_month
    shuffled = _with(stream_config, exchangeable=True)
    cell.exchangeable.append(_replay(cell, "exchangeable", pool, shuffled, config, onsets, args))


def _replay(
    cell: Cell,
    background: Background,
    pool: SitePool,
    stream_config: RealisticStreamConfig,
    config: EngineConfig,
    onsets: list[int],
    args: argparse.Namespace,
) -> Recorder:
    """Replay the unchanged stream, copying the engine at each onset; then every change from
    each copy. Returns the unchanged run's record."""
    # The realistic streams are v1 (no embeddings): the detectors and k of such a stream.
    batch = frozenset(config.batch_detectors(without=(EMBEDDING_DETECTOR,)))
    engine, unchanged = DriftEngine(config), Recorder(batch)
    snapshots: dict[int, tuple[DriftEngine, dict[uuid.UUID, str]]] = {}
    for index, event in enumerate(RealisticStream(stream_config, pool).events()):
        if index in onsets:
            snapshots[index] = copy.deepcopy((engine, unchanged.open))
        unchanged.record(index, engine.process(event))
    cell.events += stream_config.n_studies
    for kind in _kinds(pool):
        for onset in onsets:
            changed = _with(stream_config, changes=(_change(kind, onset, args),))
            engine_copy, open_alerts = copy.deepcopy(snapshots[onset])
            open_at_onset = bool(open_alerts)
            recorder = Recorder(batch, open=open_alerts, reference_at=unchanged.reference_at)
            stop = onset + args.horizon
            _feed(engine_copy, recorder, RealisticStream(changed, pool).events(onset, stop), onset)
            cell.events += args.horizon
            trial = Trial(
                onset,
                recorder.first_alerts(onset, stop),
                unchanged.first_alerts(onset, stop),
                open_at_onset,
                recorder.first_alerts(onset, stop, notified=True),
            )
            cell.trials.setdefault((background, kind), []).append(trial)
    return unchanged


def _feed(
    engine: DriftEngine, recorder: Recorder, events: Iterable[InferenceEvent], first: int
) -> None:
    for index, event in enumerate(events, start=first):
        recorder.record(index, engine.process(event))


def _write_jsonl(
    directory: Path,
    pool: SitePool,
    stream_config: RealisticStreamConfig,
    reference: int,
    args: argparse.Namespace,
) -> None:
    """The first site's stable and exchangeable streams, and each change at its first onset
    (stable up to it, changed after), as inference-event/v1 JSONL for `radsentry backtest`."""
    directory.mkdir(parents=True, exist_ok=True)
    onset = _onsets(stream_config.n_studies, reference, args.horizon, args.onsets)[0]
    variants: dict[str, RealisticStreamConfig] = {
        "stable": stream_config,
        "exchangeable": _with(stream_config, exchangeable=True),
    }
    for kind in _kinds(pool):
        change = _change(kind, onset, args)
        variants[kind.value] = _with(stream_config, changes=(change,))
    for name, variant in variants.items():
        stop = None if not variant.changes else onset + args.horizon
        events = RealisticStream(variant, pool).events(0, stop)
        path = directory / f"{stream_config.site_id}-{name}.jsonl"
        path.write_bytes(b"".join(to_json(event) + b"\n" for event in events))
    print(f"# wrote {len(variants)} streams of {stream_config.site_id} to {directory}/")


def _survey() -> None:
    """Every table of the wheel but PadChest's, with its columns named by a DICOM keyword of the
    event allowlist (or PatientAge, which the edge turns into PatientAgeBand)."""
    keywords = {_normalised(k): k for k in (*ALLOWED_METADATA_KEYS, "PatientAge")}
    for name, columns in header_tables(locate_wheel()).items():
        found = [keywords[n] for n in map(_normalised, columns) if n in keywords]
        print(f"- {name}: {len(columns)} columns; DICOM keywords: {', '.join(found) or 'none'}")


def _normalised(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", column.lower().replace("'s ", " "))


if __name__ == "__main__":
    main()
