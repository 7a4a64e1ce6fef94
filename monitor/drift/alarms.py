"""From per-window drift decisions to alarm episodes people can trust.

A detector's ``is_drift`` already needs statistical significance *and* a practical effect size.
On top of that, per (site, model, version, detector):

* **hysteresis** - an episode opens after ``open_after`` consecutive drifting checks and ends
  after ``close_after`` consecutive quiet ones, so one unlucky window neither raises an alert
  nor ends one;
* **episodes** - while an episode is open, further drifting checks update its alert instead of
  raising new ones (deduplication);
* **cooldown** - after an episode ends, ``cooldown_checks`` checks pass before another may open,
  so a change hovering at the detection limit does not page people every other window;
* **a decision** - an episode still open ``decision_after_s`` (14 days) after its drift began
  asks once for a person's decision: acknowledge and re-baseline if the change is the new
  normal, or investigate (the engine's ``sustained`` update).

A "check" is one scored window of a batch detector, or one block of ``window_size`` events of
the online detector. Under no change, checks on disjoint windows are independent, so with a
per-check false-alarm probability ``a`` an episode opens falsely at a rate of about
``a ** open_after`` per check (docs/drift.md, "False alarms across sites and features").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from monitor.drift.base import DetectorConfig

RECENT_CHECKS: Final = 50
"""How many of the latest checks ``time_in_alarm`` looks back over."""


class AlarmConfig(DetectorConfig):
    """Hysteresis and cooldown, the same for every detector unless configured per detector."""

    open_after: int = Field(default=2, ge=1)
    close_after: int = Field(default=3, ge=1)
    cooldown_checks: int = Field(default=10, ge=0)
    decision_after_s: float | None = Field(default=14 * 86_400.0, gt=0)
    """An episode open this long (event time, from the start of its drift) asks for a decision;
    None: never."""


class Transition(StrEnum):
    NONE = "none"
    """Nothing to report (quiet, or drifting but not yet ``open_after`` times)."""
    OPENED = "opened"
    """A new episode: raise an alert."""
    CONTINUED = "continued"
    """Another drifting check inside an open episode: update its alert."""
    ENDED = "ended"
    """``close_after`` quiet checks in a row: the episode's alert records that drift stopped."""


class AlarmState(BaseModel):
    """Where one (site, model, version, detector) stands; plain values, persisted as JSON."""

    model_config = ConfigDict(extra="forbid")

    drifting_streak: int = 0
    quiet_streak: int = 0
    cooldown_left: int = 0
    episodes: int = 0
    """Episodes opened so far: numbers the next alert (its id is derived from it)."""
    in_episode: bool = False
    streak_started_at: float | None = None
    """Window start (POSIX seconds) of the first check in the current drifting streak: the
    "since when" of an alert."""
    cusum: dict[str, float] = Field(default_factory=dict)
    """The sequential rule's per-feature sums (``monitor.drift.sequential``), capped at h."""
    decision_asked: bool = False
    """Whether the open episode has asked for a decision (once per episode)."""
    recent: int = 0
    """Bit i set: the i-th latest check left an episode open (the last :data:`RECENT_CHECKS`)."""
    recent_checks: int = 0

    def observe(self, is_drift: bool, window_start: float, config: AlarmConfig) -> Transition:
        """Record one check and say what it means for alerting."""
        transition = self._drifting(window_start, config) if is_drift else self._quiet(config)
        self.recent = ((self.recent << 1) | int(self.in_episode)) & ((1 << RECENT_CHECKS) - 1)
        self.recent_checks = min(self.recent_checks + 1, RECENT_CHECKS)
        return transition

    @property
    def time_in_alarm(self) -> float | None:
        """The share of the latest checks (up to :data:`RECENT_CHECKS`) after which an episode
        was open; None before the first check. A site manager's "how much of the time is this
        panel red"."""
        if self.recent_checks == 0:
            return None
        return self.recent.bit_count() / self.recent_checks

    def _drifting(self, window_start: float, config: AlarmConfig) -> Transition:
        self.quiet_streak = 0
        if self.in_episode:
            return Transition.CONTINUED
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return Transition.NONE
        if self.drifting_streak == 0:
            self.streak_started_at = window_start
        self.drifting_streak += 1
        if self.drifting_streak < config.open_after:
            return Transition.NONE
        self.in_episode = True
        self.episodes += 1
        self.drifting_streak = 0
        return Transition.OPENED

    def _quiet(self, config: AlarmConfig) -> Transition:
        self.drifting_streak = 0
        if not self.in_episode:
            self.streak_started_at = None
            self.cooldown_left = max(0, self.cooldown_left - 1)
            return Transition.NONE
        self.quiet_streak += 1
        if self.quiet_streak < config.close_after:
            return Transition.NONE
        self.in_episode = False
        self.quiet_streak = 0
        self.streak_started_at = None
        self.decision_asked = False
        self.cooldown_left = config.cooldown_checks
        return Transition.ENDED

    def needs_decision(self, now: float, config: AlarmConfig) -> bool:
        """Whether the open episode has lasted ``decision_after_s`` by ``now`` (event time) and
        has not asked yet; marks it asked."""
        if (
            not self.in_episode
            or self.decision_asked
            or config.decision_after_s is None
            or self.streak_started_at is None
            or now - self.streak_started_at < config.decision_after_s
        ):
            return False
        self.decision_asked = True
        return True
