"""Valid events for tests, built through the contract models."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.events import DicomMetadata, InferenceEvent, LabelEvent, LabelSource, Prediction
from retrain.dataset import LabelledCase

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from monitor.service.models import CandidateRow
    from monitor.service.pccp.store import GateStatus
    from pccp.threshold import ThresholdProvenance

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def study_key(n: int) -> str:
    return hashlib.sha256(f"study-{n}".encode()).hexdigest()


def inference_event(n: int, site_id: str = "site-01", score: float = 0.3) -> InferenceEvent:
    return InferenceEvent(
        event_id=uuid.UUID(int=n + 1),
        site_id=site_id,
        model_name="cxr-lesion",
        model_version="1.0.0",
        occurred_at=T0 + timedelta(minutes=n),
        study_key=study_key(n),
        modality="DX",
        metadata=DicomMetadata(
            Modality="DX",
            Manufacturer="ACME",
            KVP=110.0,
            PixelSpacing=[0.15, 0.15],
            PatientSex="F",
            PatientAgeBand="50-59",
        ),
        pixel_stats={"mean": 1000.0 + n % 7, "std": 200.0, "p50": 990.0},
        prediction=Prediction(scores={"lesion": score}, threshold=0.5),
    )


def label_event(n: int, site_id: str = "site-01", label: int = 1) -> LabelEvent:
    return LabelEvent(
        event_id=uuid.UUID(int=10**9 + n),
        site_id=site_id,
        model_name="cxr-lesion",
        study_key=study_key(n),
        occurred_at=T0 + timedelta(days=3, minutes=n),
        labels={"lesion": label},
        source=LabelSource.RADIOLOGIST,
    )


def labelled_cases(count: int, start: int = 0, sites: int = 3) -> list[LabelledCase]:
    """Labelled cases ``start .. start + count - 1`` spread over ``sites`` sites, alternating
    labels, pointing at image files that do not exist (hash them with ``fake_content_hash``)."""
    moment = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        LabelledCase(
            study_key=f"{i:064x}",
            site_id=f"site-{i % sites + 1:02d}",
            model_name="cxr-lesion",
            labels={"lesion": i % 2},
            label_source=LabelSource.RADIOLOGIST,
            predicted_at=moment,
            labelled_at=moment,
            dicom_uri=f"file:///studies/{i}.dcm",
        )
        for i in range(start, start + count)
    ]


def fake_content_hash(uri: str) -> str:
    """Stands in for image hashing where the cases point at no real file."""
    return hashlib.sha256(uri.encode()).hexdigest()


def gate_report(model_name: str = "cxr-lesion", seed: int = 0) -> dict[str, Any]:
    """A real gate report (the shipped plan on seeded synthetic scores) as stored on a
    candidate: 200 cases at two sites, a candidate slightly better than the champion."""
    from pccp.catalog import SHIPPED_PLANS
    from pccp.gate import GateCases, ModelScores, build_report
    from pccp.plan import load_plan

    rng = np.random.default_rng(seed)
    positive = rng.random(200) < 0.3
    groups = {
        "site": np.array(["site-01", "site-02"] * 100),
        "PatientSex": np.array(["F"] * 100 + ["M"] * 100),
    }
    cases = GateCases(tuple(study_key(n) for n in range(200)), positive, groups)

    def scores(shift: float, version: str) -> ModelScores:
        raw = 1 / (1 + np.exp(-(positive * shift + rng.normal(0, 1, 200) - 1)))
        return ModelScores(version, raw.astype(np.float64), 0.4)

    report = build_report(
        load_plan(SHIPPED_PLANS / "cxr-lesion.yaml"),
        cases,
        scores(2.6, "2"),
        scores(2.4, "1"),
        model_name=model_name,
        locked_test_sha256="a" * 64,
        scope_violations=[],
        content=no_site_content(load_plan(SHIPPED_PLANS / "cxr-lesion.yaml")),
    )
    return report.model_dump(mode="json")


def record_gate_outcome(
    engine: Engine,
    candidate_id: uuid.UUID,
    outcome: GateStatus = "passed",
    report: dict[str, Any] | None = None,
    champion_version: str = "1",
) -> CandidateRow:
    """What the gate records for a candidate (shipped plan's id, version 1.0.0, two approvals,
    compared against ``champion_version``), with :func:`gate_report`'s evidence unless
    ``report`` is given."""
    from monitor.service.pccp import store as candidates_store

    return candidates_store.record_gate(
        engine,
        candidate_id,
        outcome=outcome,
        report=gate_report() if report is None else report,
        plan_id="cxr-lesion-pccp",
        plan_version="1.0.0",
        plan_fingerprint="f" * 64,
        approvals_required=2,
        champion_version=champion_version,
        actor="pccp-gate",
    )


def threshold_provenance(**change: Any) -> ThresholdProvenance:
    """A threshold the shipped plan's rule (``hold_champion_sensitivity``, the target measured
    on the tuning cases the champion never saw: two thirds of them, at least 20 positives) set
    on a training manifest's tuning split; ``change`` overrides any field."""
    from pccp.plan import TargetCases, ThresholdRule
    from pccp.threshold import ThresholdProvenance

    values: dict[str, Any] = {
        "rule": ThresholdRule.HOLD_CHAMPION_SENSITIVITY,
        "threshold": 0.5,
        "source": "tuning_split",
        "plan_id": "cxr-lesion-pccp",
        "plan_version": "1.1.0",
        "champion_version": "1",
        "champion_threshold": 0.5,
        "target_sensitivity": 0.9,
        "training_manifest_sha256": "d" * 64,
        "tuning_cases": 160,
        "tuning_positives": 60,
        "tuning_sensitivity": 0.9,
        "tuning_specificity": 0.7,
        "target_cases": TargetCases.UNSEEN_BY_CHAMPION,
        "champion_manifests": ("c" * 64,),
    }
    values |= change
    cases, positives = values["tuning_cases"], values["tuning_positives"]
    target_positives = min(positives, max(20, positives // 2))
    counts = {
        "excluded_cases": cases // 3,
        "target_case_count": cases - cases // 3,
        "target_positives": target_positives,
        "excluded_positives": positives - target_positives,
        "selection_cases": cases - cases // 6,  # half the champion's cases were trained on
        "selection_positives": positives - (positives - target_positives) // 2,
    }
    return ThresholdProvenance(**(counts | values))


def record_initial_champion(
    engine: Engine, model_name: str = "cxr-lesion", version: str = "1"
) -> None:
    """The change-log entry `radsentry train-initial` writes for a first champion: from then on
    the service knows the model (a retrain request for it is accepted)."""
    from monitor.service.audit import store as change_log

    change_log.record(
        engine,
        change_log.Entry(
            actor="train-initial",
            action="champion.initial",
            subject=f"{model_name}/version/{version}",
            details={},
            reason="initial model of a model without a champion",
        ),
    )


def no_site_content(plan: Any) -> dict[str, Any]:
    """Facts for each ``content_coverage`` criterion of ``plan`` where no site sent recent
    studies (what the gate job reads for a model with no inference events yet)."""
    from pccp.coverage import ContentFacts, content_mix
    from pccp.plan import ContentCoverageCriterion

    return {
        c.id: ContentFacts(locked=content_mix((), c.fields))
        for c in plan.protocol.performance_evaluation
        if isinstance(c, ContentCoverageCriterion)
    }
