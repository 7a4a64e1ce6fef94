"""The ``chi2`` detector alone on the realistic streams: drifting checks and alerts per site.

A quicker check than ``benchmarks/drift_realistic.py`` for a change to the chi-square detector.
The engine runs with ``chi2`` only, at the level it tests at in the default engine (0.05 split
over five window detectors: 0.01), so its checks and alerts are those of the full engine's
``chi2`` (a detector's alarm state depends on its own checks only). For each site it prints the
drifting checks, the alerts (episodes) and the feature that led each drifting check.

    .venv/bin/python -m benchmarks.chi2_replay --template openi --exchangeable
    .venv/bin/python -m benchmarks.chi2_replay --template openi --set exact_2x2=false
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from monitor.drift.config import EngineConfig
from monitor.drift.engine import DriftEngine
from monitor.simulate.realistic import (
    RealisticStream,
    RealisticStreamConfig,
    SiteTemplate,
    load_pool,
)

OFF = ("mmd", "ks", "score_ks", "missingness", "online", "embedding_mmd")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--template", type=SiteTemplate, default=SiteTemplate.OPENI)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--months", type=float, default=12.0)
    parser.add_argument("--exchangeable", action="store_true")
    parser.add_argument(
        "--set", action="append", default=[], help="a ChiSquareConfig field, e.g. ordinal={}"
    )
    args = parser.parse_args()
    chi2 = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    config = EngineConfig.model_validate(
        {"detectors": {**dict.fromkeys(OFF), "chi2": chi2}, "family_alpha": 0.01}
    )
    pool, per_day = load_pool(args.template), 50.0
    reference = config.reference_events(86_400 / per_day)
    drifting_total = checks_total = alerts_total = 0
    for site in range(args.sites):
        stream = RealisticStreamConfig(
            template=args.template,
            site_id=f"{args.template.value}-{site + 1:02d}",
            seed=site,
            studies_per_day=per_day,
            pixel_stats=False,
            exchangeable=args.exchangeable,
            n_studies=reference + round(args.months * per_day * 365.25 / 12),
        )
        engine, checks, drifting, leading = DriftEngine(config), 0, 0, Counter[str]()
        for event in RealisticStream(stream, pool).events():
            for check in engine.process(event).checks:
                if check.result is None:
                    continue
                checks += 1
                if check.result.is_drift:
                    drifting += 1
                    leading[check.result.attributions[0].feature] += 1
        alerts = sum(state.alarms["chi2"].episodes for state in engine.streams.values())
        print(f"{stream.site_id}: {drifting}/{checks} drifting, {alerts} alerts, {dict(leading)}")
        drifting_total, checks_total = drifting_total + drifting, checks_total + checks
        alerts_total += alerts
    print(f"all: {drifting_total}/{checks_total} drifting, {alerts_total} alerts")


if __name__ == "__main__":
    main()
