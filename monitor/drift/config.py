"""The drift engine's configuration: references, windows, detectors, alarms (one frozen model).

Loaded from JSON or YAML by ``radsentry backtest --config`` and by the service, fingerprinted
like every detector config, so each stored result and alert names the configuration behind it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, Final, Literal, Self

from pydantic import Field, model_validator

from monitor.drift.alarms import AlarmConfig
from monitor.drift.base import DetectorConfig
from monitor.drift.calibration import LearnedThresholdConfig
from monitor.drift.categorical import ChiSquareConfig
from monitor.drift.embedding_mmd import EmbeddingMMDConfig
from monitor.drift.ks import KSConfig
from monitor.drift.missingness import MissingnessConfig
from monitor.drift.mmd import MMDConfig
from monitor.drift.online import OnlineConfig
from monitor.drift.scores import ScoreKSConfig
from monitor.drift.sequential import SequentialConfig
from monitor.drift.severity import SeverityConfig

WEEK_S: Final = 7 * 86_400.0
REFERENCE_WEEKS: Final = 13
"""The default reference spans a quarter: long enough to hold the week-to-week wander of a
stable department (docs/drift.md, "Choosing the defaults")."""

BatchDetectorName = Literal["mmd", "ks", "chi2", "score_ks", "missingness", "embedding_mmd"]
ONLINE_DETECTOR = "online_hotelling"
EMBEDDING_DETECTOR = "embedding_mmd"


class WindowConfig(DetectorConfig):
    """Tumbling windows of the batch detectors, by count, by event time, or both.

    A window is scored and emptied when it holds ``size`` events, or when an event arrives at
    least ``duration_s`` (event time) after the window's first event and the window holds at
    least ``min_size`` events; a quieter site's window keeps filling until it does. Disjoint
    windows make consecutive checks independent under no change, which is what the alarm
    arithmetic in docs/drift.md relies on.
    """

    size: int | None = Field(default=100, ge=2)
    duration_s: float | None = Field(default=None, gt=0)
    min_size: int = Field(default=50, ge=2)

    @model_validator(mode="after")
    def _some_bound(self) -> Self:
        if self.size is None and self.duration_s is None:
            raise ValueError("a window needs a size, a duration_s, or both")
        if self.size is not None and self.min_size > self.size:
            raise ValueError(f"min_size ({self.min_size}) exceeds size ({self.size})")
        return self


class OnlineSettings(DetectorConfig):
    """The per-event detector: which features it watches and its ERT-calibrated config."""

    features: Literal["pixels", "scores"] = "pixels"
    detector: OnlineConfig = OnlineConfig(ert=10_000, window_size=50, n_bootstraps=2000)


class DetectorSet(DetectorConfig):
    """Which detectors run (None turns one off) and their settings."""

    mmd: MMDConfig | None = MMDConfig(max_reference=500)
    ks: KSConfig | None = KSConfig()
    chi2: ChiSquareConfig | None = ChiSquareConfig()
    score_ks: ScoreKSConfig | None = ScoreKSConfig()
    missingness: MissingnessConfig | None = MissingnessConfig()
    online: OnlineSettings | None = OnlineSettings()
    embedding_mmd: EmbeddingMMDConfig | None = EmbeddingMMDConfig(max_reference=500)
    """MMD on the model's embeddings (``inference-event/v2``); a stream whose reference carries
    none runs without it, and it does not count in that stream's ``family_alpha`` split."""

    def batch(self) -> dict[str, DetectorConfig]:
        """The enabled window detectors by registry name, in a fixed order."""
        configs: dict[str, DetectorConfig | None] = {
            "mmd": self.mmd,
            "ks": self.ks,
            "chi2": self.chi2,
            "score_ks": self.score_ks,
            "missingness": self.missingness,
            EMBEDDING_DETECTOR: self.embedding_mmd,
        }
        return {name: config for name, config in configs.items() if config is not None}


class EngineConfig(DetectorConfig):
    """Everything the engine decides with. The defaults are the service's defaults.

    ``family_alpha`` is the per-window false-alarm budget of one (site, model, version) across
    all its window detectors and features: each enabled window detector tests at
    ``family_alpha / k`` (Bonferroni over the k detectors; each corrects over its own features),
    so an unchanged window alarms with probability at most ``family_alpha``. Set it to None to
    use each detector's own ``p_value_threshold``.
    """

    reference_size: int | None = Field(default=1000, ge=50)
    """Fewest accepted events of a (site, model, version) in its reference: with
    ``reference_duration_s`` the reference needs both, alone it is the first this many events.
    Set alone (in a config or a constructor), it means a reference by count only."""
    reference_duration_s: float | None = Field(default=REFERENCE_WEEKS * WEEK_S, gt=0)
    """Event time the reference must span (13 weeks by default), so that it carries the
    department's week-to-week variation that the learned thresholds are learned from."""
    window: WindowConfig = WindowConfig()
    detectors: DetectorSet = DetectorSet()
    family_alpha: float | None = Field(default=0.05, gt=0.0, lt=1.0)
    alarms: AlarmConfig = AlarmConfig()
    alarm_overrides: dict[str, AlarmConfig] = Field(default_factory=dict)
    """Per-detector hysteresis/cooldown, keyed by detector name."""
    severity: SeverityConfig = SeverityConfig()
    """How serious a drifting check is: info, warning, critical (``monitor.drift.severity``)."""
    learned: LearnedThresholdConfig | None = LearnedThresholdConfig()
    """Effect thresholds learned from the reference's chunk-to-chunk variation
    (``monitor.drift.calibration``); None: the detectors' configured floors alone."""
    sequential: SequentialConfig | None = None
    """A CUSUM across windows on the standardised effects (``monitor.drift.sequential``): a
    check also counts as drifting when it crosses; needs ``learned``."""

    @model_validator(mode="before")
    @classmethod
    def _a_size_alone_means_by_count(cls, data: Any) -> Any:
        """``reference_size`` given without ``reference_duration_s``: a reference by count,
        as before references had a duration (so ``reference_size: 2000`` means what it says)."""
        if (
            isinstance(data, dict)
            and data.get("reference_size") is not None
            and "reference_duration_s" not in data
        ):
            return {**data, "reference_duration_s": None}
        return data

    @model_validator(mode="after")
    def _some_reference_bound(self) -> Self:
        if self.reference_size is None and self.reference_duration_s is None:
            raise ValueError("a reference needs a reference_size, a reference_duration_s, or both")
        return self

    @model_validator(mode="after")
    def _sequential_needs_learned(self) -> Self:
        if self.sequential is not None and self.learned is None:
            raise ValueError("sequential needs learned: it standardises by the learned moments")
        return self

    def chunk_size(self) -> int:
        """Rows per reference chunk when thresholds are learned by count (the window's size)."""
        if self.learned is not None and self.learned.chunk_size is not None:
            return self.learned.chunk_size
        return self.window.size if self.window.size is not None else self.window.min_size

    def chunk_duration_s(self) -> float | None:
        """Event time per reference chunk when the live windows are bounded by time only: a
        chunk is then a window's span (a week's chunk for weekly windows); None: by count."""
        if self.learned is not None and self.learned.chunk_size is not None:
            return None
        return self.window.duration_s if self.window.size is None else None

    @property
    def reference_min_events(self) -> int:
        """The fewest events a collected reference holds: ``reference_size``, at least 50."""
        return max(50, self.reference_size or 0)

    def reference_complete(self, size: int, span_s: float) -> bool:
        """Whether a reference of ``size`` events spanning ``span_s`` seconds is complete: it
        holds :attr:`reference_min_events` and spans ``reference_duration_s``."""
        if size < self.reference_min_events:
            return False
        return self.reference_duration_s is None or span_s >= self.reference_duration_s

    def reference_needs(self) -> str:
        """What a collected reference needs before monitoring starts, in words."""
        events = f"{self.reference_min_events:,} events"
        if self.reference_duration_s is None:
            return events
        return f"{events} spanning {self.reference_duration_s / 86_400:g} days"

    def reference_events(self, every_s: float) -> int:
        """How many events a stream with one event every ``every_s`` seconds (event time)
        takes to complete its reference, the completing event included."""
        if self.reference_duration_s is None:
            return self.reference_min_events
        by_time = math.ceil(self.reference_duration_s / every_s) + 1
        return max(self.reference_min_events, by_time)

    def batch_detectors(self, without: Collection[str] = ()) -> dict[str, DetectorConfig]:
        """Enabled window detectors, less ``without`` (those a stream cannot run, such as the
        embedding detector on a stream without embeddings), with the family budget split over
        the rest: Bonferroni's k counts only the detectors that test."""
        configs = {
            name: config for name, config in self.detectors.batch().items() if name not in without
        }
        if self.family_alpha is None or not configs:
            return configs
        threshold = self.family_alpha / len(configs)
        return {
            name: config.model_copy(update={"p_value_threshold": threshold})
            for name, config in configs.items()
        }

    def alarm_config(self, detector: str) -> AlarmConfig:
        return self.alarm_overrides.get(detector, self.alarms)
