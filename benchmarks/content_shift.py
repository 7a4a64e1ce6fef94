"""Content shifts side by side (issue 23): which detector catches which shift, and how fast.

One small model is trained once on simulated images (``retrain.initial``: the
``train-initial`` path, on a smaller cohort; cached under ``.radsentry-cache/content_shift/``).
Then one site's studies are rendered into pools (``monitor.simulate.rendered_studies`` with the
model as scorer): 1,500 baseline studies and one pool per content shift (every study shifted).
The edge extractor reads each study and the model scores and embeds it, so each study becomes
exactly the row the drift engine sees (``monitor.drift.features.FeatureSchema``) plus its
embedding. Pools are cached beside the model.

For each scenario (no shift, and each shift at ``--share`` of the studies) and window size,
``--trials`` trials: each draws a reference of ``--reference`` (500) studies from the baseline
pool and a window from the rest, each study of which is shifted with probability ``share``
(drawn without replacement from that shift's pool). Every family scores the same window against
the same reference: pixel-statistic MMD, metadata KS, metadata chi-square, model-score KS and
embedding MMD, each at ``family_alpha / k`` of the engine (k: its window detectors plus
``embedding_mmd``). The learned effect thresholds and the alarm layer are not applied: this is
the per-window decision of each test.

    .venv/bin/python -m benchmarks.content_shift              # docs/benchmarks.md
    .venv/bin/python -m benchmarks.content_shift --quick      # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

from monitor.dicom import extract_features
from monitor.drift.base import CategoricalColumns, FeatureMatrix
from monitor.drift.categorical import ChiSquareConfig, ChiSquareDetector
from monitor.drift.config import EngineConfig
from monitor.drift.features import FeatureSchema
from monitor.drift.ks import KSConfig, KSDetector
from monitor.drift.mmd import MMDConfig, MMDDetector
from monitor.drift.scores import ScoreKSConfig, ScoreKSDetector
from monitor.events import InferenceEvent, Prediction
from monitor.service.drift.store import limit_torch_threads
from monitor.simulate import FINDING, SimulationConfig, site_key_for
from monitor.simulate.content import ContentShift, ContentShiftKind
from monitor.simulate.model_scores import TrainedModelScorer
from monitor.simulate.stream import RenderedStudy, rendered_studies
from retrain.config import TrainConfig
from retrain.embedding import Projection, embed
from retrain.images import modality_values, to_training_image
from retrain.initial import InitialConfig, render_cohort, train_initial
from retrain.model import TrainedModel

DETECTORS: Final = ("pixel_mmd", "metadata_ks", "metadata_chi2", "score_ks", "embedding_mmd")
NO_SHIFT: Final = "none"
SITE: Final = "site-01"
_START: Final = datetime(2025, 3, 1, tzinfo=UTC)
_CACHE: Final = Path(".radsentry-cache/content_shift")
_NONE: Final = "\x00"
"""A missing categorical value in a cached pool (npz holds no None without pickling)."""


@dataclass(frozen=True)
class Pool:
    """The rows of some studies as the detectors see them, row ``i`` being study ``i``."""

    pixels: npt.NDArray[np.float64]
    metadata: npt.NDArray[np.float64]
    categorical: list[list[str | None]]
    scores: npt.NDArray[np.float64]
    embedding: npt.NDArray[np.float64]
    truth: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, rows: npt.NDArray[np.intp]) -> Pool:
        return Pool(
            self.pixels[rows],
            self.metadata[rows],
            [self.categorical[i] for i in rows.tolist()],
            self.scores[rows],
            self.embedding[rows],
            self.truth[rows],
        )

    @staticmethod
    def concat(parts: Sequence[Pool]) -> Pool:
        return Pool(
            np.vstack([p.pixels for p in parts]),
            np.vstack([p.metadata for p in parts]),
            [row for p in parts for row in p.categorical],
            np.concatenate([p.scores for p in parts]),
            np.vstack([p.embedding for p in parts]),
            np.concatenate([p.truth for p in parts]),
        )


@dataclass(frozen=True)
class Cell:
    """One scenario at one window size: how many of ``trials`` windows each detector flagged."""

    scenario: str
    window: int
    trials: int
    detected: dict[str, int]

    def power(self, detector: str) -> tuple[float, float, float]:
        """Share of windows flagged and its 95 % Wilson interval."""
        hits = self.detected[detector]
        interval = binomtest(hits, self.trials).proportion_ci(method="wilson")
        return hits / self.trials, float(interval.low), float(interval.high)


class Model:
    """The trained model as scorer and embedder of rendered studies."""

    def __init__(self, model: TrainedModel, projection: Projection, cache: Path) -> None:
        self.model, self.projection, self.cache = model, projection, cache
        self.scorer = TrainedModelScorer(model, "1")

    def embed(self, studies: Sequence[RenderedStudy]) -> npt.NDArray[np.float64]:
        size = self.model.spec.input_size
        images = np.stack([to_training_image(modality_values(s.dataset), size) for s in studies])
        return embed(self.model, self.projection, images[:, None])


def render_pool(model: Model, config: SimulationConfig) -> Pool:
    """Render, extract, score and embed every study of ``config`` (one site)."""
    schema = FeatureSchema(findings=(FINDING,))
    site_key = site_key_for(config.master_key, SITE)
    numeric, categorical, truth = [], [], []
    studies = list(rendered_studies(config, model.scorer))
    for study in studies:
        event = _event(study, site_key)
        numeric.append(schema.numeric_row(event))
        categorical.append(schema.categorical_row(event))
        truth.append(study.has_lesion)
    rows = np.array(numeric)
    return Pool(
        pixels=rows[:, schema.pixel_columns()],
        metadata=rows[:, schema.metadata_columns()],
        categorical=categorical,
        scores=rows[:, schema.finding_columns()][:, 0],
        embedding=model.embed(studies),
        truth=np.array(truth, dtype=bool),
    )


def cached_pool(model: Model, config: SimulationConfig) -> Pool:
    """:func:`render_pool`, kept under the model's cache folder by the config's fingerprint."""
    path = model.cache / f"pool-{config.fingerprint()[:16]}.npz"
    if path.exists():
        with np.load(path) as saved:
            return Pool(
                pixels=saved["pixels"],
                metadata=saved["metadata"],
                categorical=[[None if v == _NONE else str(v) for v in row] for row in saved["cat"]],
                scores=saved["scores"],
                embedding=saved["embedding"],
                truth=saved["truth"],
            )
    pool = render_pool(model, config)
    categorical = np.array([[_NONE if v is None else v for v in row] for row in pool.categorical])
    np.savez(
        path,
        pixels=pool.pixels,
        metadata=pool.metadata,
        cat=categorical,
        scores=pool.scores,
        embedding=pool.embedding,
        truth=pool.truth,
    )
    return pool


def _event(study: RenderedStudy, site_key: bytes) -> InferenceEvent:
    features = extract_features(study.dataset, site_key)
    return InferenceEvent(
        event_id="00000000-0000-4000-8000-000000000000",
        site_id=study.site_id,
        model_name="cxr-lesion",
        model_version="1",
        occurred_at=_START,
        study_key=features.study_key,
        modality=features.modality,
        metadata=features.metadata,
        pixel_stats=features.pixel_stats,
        prediction=Prediction(scores=study.scores, threshold=0.5),
    )


def pool_config(
    seed: int, studies: int, kind: ContentShiftKind | None, size: int
) -> SimulationConfig:
    """One site, every study shifted to ``kind`` (or none)."""
    shifts = () if kind is None else (ContentShift(kind=kind, site_id=SITE, share=1.0),)
    return SimulationConfig(
        seed=seed,
        start=_START,
        sites=1,
        studies_per_site=studies,
        prevalence=0.3,
        image_size=size,
        content_shifts=shifts,
    )


class Detectors:
    """Every family fitted once on the reference, at the engine's per-detector level."""

    def __init__(self, reference: Pool, alpha: float) -> None:
        schema = FeatureSchema(findings=(FINDING,))
        self._schema = schema
        self.pixel = MMDDetector(MMDConfig(max_reference=500, p_value_threshold=alpha))
        self.ks = KSDetector(KSConfig(p_value_threshold=alpha))
        self.chi2 = ChiSquareDetector(ChiSquareConfig(p_value_threshold=alpha))
        self.score = ScoreKSDetector(ScoreKSConfig(p_value_threshold=alpha))
        self.embedding = MMDDetector(MMDConfig(max_reference=500, p_value_threshold=alpha))
        self.pixel.fit(FeatureMatrix(schema.pixels, reference.pixels))
        self.ks.fit(FeatureMatrix(schema.metadata, reference.metadata))
        self.chi2.fit(self._columns(reference))
        self.score.fit({FINDING: reference.scores.tolist()})
        self.embedding.fit(FeatureMatrix(_embedding_names(reference), reference.embedding))

    def flags(self, window: Pool) -> dict[str, bool]:
        schema = self._schema
        return {
            "pixel_mmd": self.pixel.score(FeatureMatrix(schema.pixels, window.pixels)).is_drift,
            "metadata_ks": self.ks.score(FeatureMatrix(schema.metadata, window.metadata)).is_drift,
            "metadata_chi2": self.chi2.score(self._columns(window)).is_drift,
            "score_ks": self.score.score({FINDING: window.scores.tolist()}).is_drift,
            "embedding_mmd": self.embedding.score(
                FeatureMatrix(_embedding_names(window), window.embedding)
            ).is_drift,
        }

    def _columns(self, pool: Pool) -> CategoricalColumns:
        names = self._schema.categorical
        return {name: [row[i] for row in pool.categorical] for i, name in enumerate(names)}


def _embedding_names(pool: Pool) -> tuple[str, ...]:
    return tuple(f"e{i:02d}" for i in range(pool.embedding.shape[1]))


def detector_alpha(config: EngineConfig | None = None) -> float:
    """The engine's per-detector level once ``embedding_mmd`` is among its window detectors."""
    config = config or EngineConfig()
    names = set(config.detectors.batch()) | {"embedding_mmd"}
    assert config.family_alpha is not None
    return config.family_alpha / len(names)


def evaluate(
    baseline: Pool,
    shifted: dict[str, Pool],
    windows: Iterable[int],
    trials: dict[int, int],
    share: float,
    reference_size: int,
    seed: int = 0,
) -> list[Cell]:
    """Power of each family per scenario and window size (the module docstring's design).

    Each trial splits the baseline pool at random into a reference of ``reference_size`` and
    the rest, fits every family on that reference, and scores one window drawn from the rest
    (and, for a shift, the shift's pool): reference and window are disjoint samples, so with no
    shift a family alarms with its nominal probability in every trial.
    """
    alpha = detector_alpha()
    rng = np.random.default_rng(seed)
    cells = []
    for window in windows:
        if reference_size + window > len(baseline):
            raise ValueError(f"the baseline pool is too small for a window of {window}")
        for scenario, pool in [(NO_SHIFT, None), *shifted.items()]:
            detected = dict.fromkeys((*DETECTORS, "any"), 0)
            for _ in range(trials[window]):
                order = rng.permutation(len(baseline))
                detectors = Detectors(baseline.take(order[:reference_size]), alpha)
                rest = baseline.take(order[reference_size:])
                flags = detectors.flags(_window(rng, rest, pool, window, share))
                for name, flag in flags.items():
                    detected[name] += flag
                detected["any"] += any(flags.values())
            cells.append(Cell(scenario, window, trials[window], detected))
    return cells


def _window(
    rng: np.random.Generator, baseline: Pool, shifted: Pool | None, n: int, share: float
) -> Pool:
    k = 0 if shifted is None else int(rng.binomial(n, share))
    base = baseline.take(rng.choice(len(baseline), n - k, replace=False))
    if shifted is None or k == 0:
        return base
    return Pool.concat([base, shifted.take(rng.choice(len(shifted), k, replace=False))])


def trained_model(args: argparse.Namespace) -> Model:
    """The benchmark's model, trained once and cached by its config's fingerprint."""
    config = InitialConfig(
        seed=args.seed,
        studies_per_site=args.cohort,
        test_studies_per_site=0,
        train=TrainConfig(
            max_epochs=args.epochs, patience=5, learning_rate=3e-3, device="cpu", seed=args.seed
        ),
    )
    cached = _CACHE / config.fingerprint()[:16]
    if (cached / "model.pt").exists():
        projection = Projection.from_json((cached / "projection.json").read_bytes())
        return Model(TrainedModel.load(cached / "model.pt"), projection, cached)
    started = time.perf_counter()
    cases = render_cohort(config, cached / "cohort")
    initial = train_initial(config, cases, cached / "work")
    fitted = initial.result.projection
    assert fitted is not None  # train() always fits one
    initial.model.save(cached / "model.pt")
    (cached / "projection.json").write_bytes(fitted.to_json())
    for scratch in ("cohort", "work"):  # the DICOM files and checkpoints: 100+ MB, not needed
        shutil.rmtree(cached / scratch)
    print(f"# trained on {len(cases)} studies in {time.perf_counter() - started:.0f} s")
    return Model(initial.model, fitted, cached)


def report(cells: list[Cell], pools: dict[str, Pool]) -> None:
    """The power table (docs/benchmarks.md) and each pool's AUROC."""
    print("\n| scenario | window | trials | " + " | ".join(DETECTORS) + " | any |")
    print("|---|---:|---:|" + "---:|" * (len(DETECTORS) + 1))
    for cell in sorted(cells, key=lambda c: (c.scenario != NO_SHIFT, c.scenario, c.window)):
        values = []
        for name in (*DETECTORS, "any"):
            power, low, high = cell.power(name)
            values.append(f"{power:.2f} ({low:.2f}-{high:.2f})")
        print(f"| {cell.scenario} | {cell.window} | {cell.trials} | " + " | ".join(values) + " |")
    print("\n| pool | studies | AUROC | mean score |")
    print("|---|---:|---:|---:|")
    for name, pool in pools.items():
        auroc = roc_auc_score(pool.truth, pool.scores) if 0 < pool.truth.sum() < len(pool) else None
        shown = "n/a" if auroc is None else f"{auroc:.3f}"
        print(f"| {name} | {len(pool)} | {shown} | {pool.scores.mean():.3f} |")


def main() -> None:
    args = _parser().parse_args()
    if args.quick:
        args.cohort, args.epochs, args.reference, args.pool, args.shift_pool = 60, 3, 100, 250, 60
        args.windows, args.trials, args.trials_500 = [50], 10, 10
    limit_torch_threads()
    started = time.perf_counter()
    print(
        f"# {datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, {platform.machine()}"
    )
    print(f"# command: python -m benchmarks.content_shift {' '.join(sys.argv[1:])}")
    model = trained_model(args)
    print(f"# model ready: {time.perf_counter() - started:.0f} s")
    size = args.image_size
    baseline = cached_pool(model, pool_config(args.seed + 1, args.pool, None, size))
    shifted = {
        kind.value: cached_pool(model, pool_config(args.seed + 2 + i, args.shift_pool, kind, size))
        for i, kind in enumerate(ContentShiftKind)
    }
    print(f"# pools rendered: {time.perf_counter() - started:.0f} s")
    trials = {w: args.trials_500 if w >= 500 else args.trials for w in args.windows}
    cells = evaluate(baseline, shifted, args.windows, trials, args.share, args.reference, args.seed)
    print(
        f"# reference {args.reference} of a baseline pool of {len(baseline)} (drawn per trial), "
        f"shift pools {args.shift_pool}, share {args.share:g}, "
        f"per-detector alpha {detector_alpha():.4f}"
    )
    report(cells, {"baseline": baseline, **shifted})
    print(f"\n# {time.perf_counter() - started:.0f} s in all")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cohort", type=int, default=300, help="training studies per site (x3)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--reference", type=int, default=500)
    parser.add_argument(
        "--pool", type=int, default=1500, help="baseline studies (references and windows)"
    )
    parser.add_argument("--shift-pool", type=int, default=400, help="studies per shift pool")
    parser.add_argument("--share", type=float, default=0.3, help="share of shifted studies")
    parser.add_argument("--windows", type=int, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--trials-500", type=int, default=50, help="trials at window 500")
    parser.add_argument("--quick", action="store_true", help="tiny model and pools, smoke run")
    return parser


if __name__ == "__main__":
    main()
