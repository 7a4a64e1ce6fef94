"""The stages of `radsentry demo`, in order (``demo.loop`` runs them). Apart from the loop so
that the CLI's `--until` choices cost no import of the loop's dependencies."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Stage(StrEnum):
    INITIAL_MODEL = "initial-model"
    STREAM = "stream"
    DRIFT_ALERT = "drift-alert"
    PERFORMANCE_ALERT = "performance-alert"
    RETRAIN_REQUEST = "retrain-request"
    CANDIDATE = "candidate"
    GATE = "gate"
    DECISION = "decision"
    """A person decides: approve a passed candidate, or what the site gets after a failed one."""


STAGES: Final = tuple(Stage)
