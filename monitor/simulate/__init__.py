"""Synthetic multi-site chest radiography studies and their event stream (docs/simulate.md).

Pure apart from writing the rendered DICOM files under the ``out_dir`` it is given: no broker,
no database, no clock. ``simulate(config, out_dir)`` is the entry point.
"""

from monitor.simulate.content import ContentShift, ContentShiftKind
from monitor.simulate.images import (
    FakePatient,
    StudyContent,
    StudyIdentity,
    anatomy_template,
    render_study,
)
from monitor.simulate.profiles import (
    CATALOGUE,
    DEGRADED,
    PROFILES,
    ScannerProfile,
    default_profile,
    site_ids,
)
from monitor.simulate.scores import (
    DEFAULT_MODEL,
    FINDING,
    THRESHOLD,
    ScoreModel,
    lesion_score,
    lesion_scores,
    separation,
)
from monitor.simulate.stream import (
    DEFAULT_MASTER_KEY,
    SimulationConfig,
    simulate,
    site_key_for,
)

__all__ = [
    "CATALOGUE",
    "DEFAULT_MASTER_KEY",
    "DEFAULT_MODEL",
    "DEGRADED",
    "FINDING",
    "PROFILES",
    "THRESHOLD",
    "ContentShift",
    "ContentShiftKind",
    "FakePatient",
    "ScannerProfile",
    "ScoreModel",
    "SimulationConfig",
    "StudyContent",
    "StudyIdentity",
    "anatomy_template",
    "default_profile",
    "lesion_score",
    "lesion_scores",
    "render_study",
    "separation",
    "simulate",
    "site_ids",
    "site_key_for",
]
