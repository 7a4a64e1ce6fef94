"""Every name RadSentry gives things in MLflow, in one place: model-version aliases and tags.

Tags are lineage a person or a job reads back (``radsentry.request_id`` finds the version a
retrain request registered; the gate's outcome and evidence sit on the version it judged), so
renaming one orphans what older versions carry: add a name, never rename one.
"""

from __future__ import annotations

from typing import Final

# -- aliases of a registered model's versions ----------------------------------------------
CHAMPION: Final = "champion"
"""The version that serves; moved only by a PCCP promotion or rollback (or a first model)."""
CHALLENGER: Final = "challenger"
"""The latest retrained version, waiting for the gate and two signatures."""
INITIAL: Final = "initial"
"""The first version, trained by ``radsentry train-initial``."""

# -- tags of a training run and of the version registered from it -------------------------
REQUEST_TAG: Final = "radsentry.request_id"
TRIGGER_TAG: Final = "radsentry.trigger"
REQUESTED_BY_TAG: Final = "radsentry.requested_by"
CHAMPION_VERSION_TAG: Final = "radsentry.champion_version"
"""The champion the candidate was trained and compared against."""
ALERT_TAG: Final = "radsentry.alert_id"
SITE_TAG: Final = "radsentry.site_id"
GIT_COMMIT_TAG: Final = "radsentry.git_commit"
CONFIG_TAG: Final = "radsentry.config_fingerprint"
SPEC_TAG: Final = "radsentry.spec_fingerprint"
DATASET_TAG: Final = "radsentry.dataset_sha256"
MODEL_NAME_TAG: Final = "radsentry.model_name"
RUN_TAG: Final = "radsentry.run_id"
COMPLETE_TAG: Final = "radsentry.registration_complete"
MODEL_ID_TAG: Final = "radsentry.logged_model_id"
THRESHOLD_TAG: Final = "radsentry.threshold"
"""The first finding's operating threshold the version was registered with."""
THRESHOLD_PROVENANCE_TAG: Final = "radsentry.threshold_provenance"
"""Where that threshold came from (``pccp.threshold.ThresholdProvenance``, compact JSON): the
PCCP scope guard refuses a candidate whose threshold the plan's policy did not set."""

# -- tags the PCCP gate writes on the version it judged ------------------------------------
INTENDED_USE_TAG: Final = "radsentry.intended_use_id"
OUTCOME_TAG: Final = "radsentry.gate_outcome"
EVIDENCE_TAG: Final = "radsentry.evidence_uri"
PLAN_VERSION_TAG: Final = "radsentry.plan_version"
