"""The retraining job against a real PostgreSQL database and real simulated DICOM files.

The registry here is a fake of our own ``ModelRegistry`` interface, so that failures can be
injected at will; the job against a real MLflow server is in test_retrain_e2e.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select, update

from monitor.events import InferenceEvent, LabelEvent
from monitor.service.audit import store as change_log
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import AlertRow, RetrainRequestRow
from monitor.service.pccp import store as candidates_store
from monitor.service.retrain import store as retrain_store
from monitor.service.retrain.cases import load_cases
from monitor.service.retrain.jobs import JobContext, serve_pending
from monitor.service.retrain.store import claim_next, consider_alerts, request_manual
from monitor.simulate import SimulationConfig, simulate
from pccp.catalog import SHIPPED_PLANS
from pccp.plan import ThresholdRule
from pccp.threshold import ThresholdProvenance
from retrain.config import JobConfig, TrainConfig
from retrain.dataset import (
    DatasetManifest,
    LabelledCase,
    LockedTestSet,
    ManifestCase,
    Side,
    write_cases,
)
from retrain.mlflow_names import CHAMPION_VERSION_TAG, THRESHOLD_PROVENANCE_TAG, THRESHOLD_TAG
from retrain.model import ModelSpec, TrainedModel, build_model
from retrain.policy import RetrainPolicy, Trigger
from retrain.tracking import RegisteredVersion, RunRecord, TrackingError
from retrain.train import TrainingStopped
from tests.factories import fake_content_hash

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

MODEL = "cxr-lesion"
SPEC = ModelSpec(input_size=32, channels=(4, 8))
FAST = JobConfig(train=TrainConfig(max_epochs=2, batch_size=16, device="cpu"), min_cases=40)


@dataclass
class FakeRegistry:
    """Holds a champion (version 1, or the last of ``lineage``); ``log_and_register`` fails
    ``failures`` times, then registers v2.

    ``lineage``: the champion's training manifests, oldest first: version ``i + 1`` logged the
    ``i``-th and was retrained from version ``i`` (tag ``radsentry.champion_version``)."""

    champion: TrainedModel | None
    failures: int = 0
    records: list[RunRecord] = field(default_factory=list)
    lineage: list[DatasetManifest] = field(default_factory=list)

    def version_by_alias(self, model_name: str, alias: str) -> RegisteredVersion | None:
        if alias != "champion" or self.champion is None:
            return None
        return replace(self.version(model_name, str(max(len(self.lineage), 1))), aliases=(alias,))

    def version(self, model_name: str, version: str) -> RegisteredVersion:
        tags = {CHAMPION_VERSION_TAG: str(int(version) - 1)} if int(version) > 1 else {}
        return RegisteredVersion(model_name, version, f"run-{version}", (), tags)

    def training_manifest(self, model_name: str, version: str) -> DatasetManifest | None:
        index = int(version) - 1
        return self.lineage[index] if index < len(self.lineage) else None

    def load_model(self, model_name: str, version: str) -> TrainedModel:
        assert self.champion is not None and version == str(max(len(self.lineage), 1))
        return self.champion

    def log_and_register(
        self, record: RunRecord, *, alias: str = "challenger"
    ) -> RegisteredVersion:
        self.records.append(record)
        if self.failures:
            self.failures -= 1
            raise TrackingError("log_run failed after 5 attempts: MLflow unreachable")
        return RegisteredVersion(record.model_name, "2", "run-2", (alias,), dict(record.tags))


def untrained_champion() -> TrainedModel:
    state = {k: v.clone() for k, v in build_model(SPEC).state_dict().items()}
    return TrainedModel(SPEC, state, temperature=(1.0,), thresholds=(0.5,))


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list[object]:
    """Two sites x 60 studies, every one labelled within hours."""
    config = SimulationConfig(
        seed=3,
        start=datetime(2026, 2, 1, tzinfo=UTC),
        sites=2,
        studies_per_site=60,
        image_size=64,
        label_rate=1.0,
        label_delay=timedelta(hours=2),
    )
    return list(simulate(config, Path(tmp_path_factory.mktemp("studies"))))


@pytest.fixture
def stored(pg_engine: Engine, events: list[object]) -> Iterator[Engine]:
    delivered = [Delivered(e, "t", 0, n) for n, e in enumerate(events)]  # type: ignore[arg-type]
    store_batch(pg_engine, delivered, [])
    yield pg_engine


def context(
    engine: Engine,
    registry: FakeRegistry,
    tmp_path: Path,
    plans_dir: Path | None = None,
    **config: object,
) -> JobContext:
    return JobContext(
        engine=engine,
        registry=registry,
        config=FAST.model_copy(update=config),
        work_dir=tmp_path / "retrain",
        plans_dir=plans_dir,
    )


def counter(outcome: str) -> float:
    return REGISTRY.get_sample_value("radsentry_retrain_jobs_total", {"outcome": outcome}) or 0.0


def test_cases_are_labelled_studies_with_their_latest_image(stored: Engine) -> None:
    found = load_cases(stored, MODEL, ("lesion",))
    assert len(found.cases) == 120 and found.incomplete == 0
    assert {case.site_id for case in found.cases} == {"site-01", "site-02"}
    assert all(case.dicom_uri and case.dicom_uri.startswith("file://") for case in found.cases)
    assert load_cases(stored, MODEL, ("lesion", "effusion")).incomplete == 120
    assert load_cases(stored, "another-model", ("lesion",)).cases == []


def test_a_request_becomes_a_registered_challenger_with_its_lineage(
    stored: Engine, tmp_path: Path
) -> None:
    registry = FakeRegistry(untrained_champion())
    request = request_manual(stored, MODEL, "ml-ops@example.org", "new scanner at site-02")
    before = counter("succeeded")

    [served] = serve_pending(context(stored, registry, tmp_path))

    assert served.request_id == request.request_id
    assert (served.status, served.model_version, served.mlflow_run_id) == (
        "succeeded",
        "2",
        "run-2",
    )
    assert served.attempts == 1 and served.finished_at is not None and served.error is None
    manifest_path = tmp_path / "retrain" / str(request.request_id) / "manifest.json"
    manifest = DatasetManifest.read(manifest_path, expected_sha256=served.manifest_sha256)
    assert (
        len(manifest.cases) == 120
        and manifest.locked_test_sha256 == LockedTestSet.from_keys([]).sha256
    )
    assert served.progress is not None
    assert served.progress["stage"] == "done" and served.progress["epoch"] == 2
    assert set(served.progress["comparison"]["sites"]) == {"site-01", "site-02"}
    [record] = registry.records
    assert record.tags["radsentry.request_id"] == str(request.request_id)
    assert record.manifest.sha256() == served.manifest_sha256
    assert record.result.model.spec == SPEC  # the champion's family, never another
    # No plan governs the model here: the trainer's own rule set the threshold, and says so.
    provenance = ThresholdProvenance.from_tag(record.tags[THRESHOLD_PROVENANCE_TAG])
    assert provenance is not None and provenance.plan_id is None
    assert provenance.rule is ThresholdRule.TARGET_SENSITIVITY
    assert provenance.threshold == record.result.model.thresholds[0]
    assert float(record.tags[THRESHOLD_TAG]) == record.result.model.thresholds[0]
    assert provenance.training_manifest_sha256 == served.manifest_sha256
    assert counter("succeeded") == before + 1
    logged = [(e.action, e.actor) for e in change_log.entries(stored)]
    assert logged == [
        ("retrain.requested", "ml-ops@example.org"),
        ("candidate.proposed", "retrain-job"),  # under change control before training ends
        ("training.run", "retrain-job"),
    ]
    candidate = candidates_store.find(stored, MODEL, "2")
    assert (candidate.status, candidate.triggered_by) == ("candidate", "ml-ops@example.org")
    assert candidate.request_id == request.request_id
    assert change_log.verify(stored).ok
    assert serve_pending(context(stored, registry, tmp_path)) == []  # nothing left to serve


def test_a_request_that_would_train_the_same_model_again_trains_nothing(
    stored: Engine, tmp_path: Path
) -> None:
    """After a failed gate the demo offers "ask for another retrain". On the same labels,
    champion, settings and plan, seeded training gave the very same candidate again (seen on
    a real demo: version 3's gate report equal to version 2's, three minutes later), under a
    new number and in front of the locked test set a second time. Now the job says so and
    trains nothing; other settings (or new labels) train as before."""
    registry = FakeRegistry(untrained_champion())
    first = request_manual(stored, MODEL, "ml-ops@example.org", "new scanner at site-02")
    [trained] = serve_pending(context(stored, registry, tmp_path))
    assert trained.status == "succeeded" and trained.progress is not None
    key = trained.progress["training_key"]
    failed_before = counter("failed")

    again = request_manual(stored, MODEL, "alice", "more site-02 labels after the failed gate")
    [refused] = serve_pending(context(stored, registry, tmp_path))

    assert (refused.request_id, refused.status) == (again.request_id, "failed")
    assert refused.error is not None and refused.error.startswith("nothing to train: the 120")
    assert f"request {first.request_id} trained {MODEL} version 2" in refused.error
    assert "(its gate status: candidate)" in refused.error
    assert "Retrain once new labels have arrived" in refused.error
    assert len(registry.records) == 1  # nothing registered, nothing trained
    assert refused.progress is not None and "epoch" not in refused.progress
    assert counter("failed") == failed_before + 1
    assert list(change_log.entries(stored))[-1].action == "retrain.failed"

    other_seed = FAST.train.model_copy(update={"seed": 1})
    request_manual(stored, MODEL, "alice", "another seed")
    [retrained] = serve_pending(context(stored, registry, tmp_path, train=other_seed))
    assert retrained.status == "succeeded" and len(registry.records) == 2
    assert retrained.progress is not None and retrained.progress["training_key"] != key


def test_rehearsal_cases_are_trained_on_beside_the_new_labels(
    stored: Engine, tmp_path: Path
) -> None:
    """The champion's development data (a case file) joins the new labels; a study among both
    is taken once, with its new label."""
    earlier = SimulationConfig(
        seed=4,
        start=datetime(2026, 1, 1, tzinfo=UTC),
        sites=1,
        studies_per_site=10,
        image_size=64,
        label_rate=1.0,
    )
    development = _joined(list(simulate(earlier, tmp_path / "development")))
    relabelled = load_cases(stored, MODEL, ("lesion",)).cases[0]
    flipped = replace(relabelled, labels={"lesion": 1 - relabelled.labels["lesion"]})
    write_cases(tmp_path / "development-cases.jsonl", [*development, flipped])
    request_manual(stored, MODEL, "ml-ops@example.org", "rehearse")

    registry = FakeRegistry(untrained_champion())
    rehearsal = tmp_path / "development-cases.jsonl"
    [served] = serve_pending(context(stored, registry, tmp_path, rehearsal_cases=rehearsal))

    assert served.status == "succeeded", served.error
    assert served.progress is not None and served.progress["rehearsal_cases"] == 10
    [record] = registry.records
    by_key = {case.study_key: case for case in record.manifest.cases}
    assert len(by_key) == 130
    assert {case.study_key for case in development} <= by_key.keys()
    assert by_key[relabelled.study_key].labels == relabelled.labels  # the new label wins


def _joined(events: list[object]) -> list[LabelledCase]:
    inferences = {e.study_key: e for e in events if isinstance(e, InferenceEvent)}
    return [
        LabelledCase(
            study_key=label.study_key,
            site_id=label.site_id,
            model_name=label.model_name,
            labels=dict(label.labels),
            label_source=label.source,
            predicted_at=inferences[label.study_key].occurred_at,
            labelled_at=label.occurred_at,
            dicom_uri=inferences[label.study_key].dicom_uri,
        )
        for label in events
        if isinstance(label, LabelEvent)
    ]


def test_registry_down_retries_then_fails_visibly_with_an_alert(
    stored: Engine, tmp_path: Path
) -> None:
    registry = FakeRegistry(untrained_champion(), failures=10)
    request = request_manual(stored, MODEL, "ml-ops@example.org", "retry test")
    job = context(stored, registry, tmp_path, max_attempts=2)

    [first] = serve_pending(job)
    assert (first.status, first.attempts) == ("pending", 1)
    assert first.error is not None and "MLflow unreachable" in first.error

    [second] = serve_pending(job)
    assert (second.status, second.attempts) == ("failed", 2)
    # The second attempt resumed from the first one's final checkpoint instead of retraining.
    assert registry.records[0].result.resumed_from_epoch is None
    assert registry.records[1].result.resumed_from_epoch == 2
    with stored.connect() as connection:
        alert = connection.execute(
            select(AlertRow).where(AlertRow.reference_id == request.request_id)
        ).one()
    assert alert.detector == "retrain.failed" and alert.status == "open"
    assert not alert.drift_active and "MLflow unreachable" in alert.explanation
    # A failure alert never triggers retraining itself.
    policy = RetrainPolicy(
        triggers=(Trigger(detector="*"),), cooldown_hours=0, min_new_labels=0, min_new_labels_site=0
    )
    assert consider_alerts(stored, policy) == []
    assert serve_pending(job) == []
    assert [e.action for e in change_log.entries(stored)] == ["retrain.requested", "retrain.failed"]


@pytest.mark.parametrize(
    ("registry", "config", "message"),
    [
        (FakeRegistry(None), {}, "no 'champion' version"),
        (FakeRegistry(untrained_champion()), {"min_cases": 500}, "needs at least 500"),
        (
            FakeRegistry(untrained_champion()),
            {"rehearsal_cases": Path("/nonexistent/development-cases.jsonl")},
            "rehearsal cases (retrain.job.rehearsal_cases): /nonexistent",
        ),
    ],
)
def test_requests_that_cannot_succeed_fail_at_once(
    stored: Engine, tmp_path: Path, registry: FakeRegistry, config: dict[str, object], message: str
) -> None:
    request_manual(stored, MODEL, "ml-ops@example.org", "doomed")
    [served] = serve_pending(context(stored, registry, tmp_path, **config))
    assert (served.status, served.attempts) == ("failed", 1)
    assert served.error is not None and message in served.error
    assert registry.records == []


def test_a_study_in_the_locked_test_set_fails_the_job(stored: Engine, tmp_path: Path) -> None:
    key = load_cases(stored, MODEL, ("lesion",)).cases[7].study_key
    locked_path = tmp_path / "locked.json"
    LockedTestSet.from_keys([key]).write(locked_path)
    request_manual(stored, MODEL, "ml-ops@example.org", "overlap")
    registry = FakeRegistry(untrained_champion())
    [served] = serve_pending(context(stored, registry, tmp_path, locked_test_set=locked_path))
    assert served.status == "failed"
    assert served.error is not None and "locked test set" in served.error
    assert json.loads(locked_path.read_text())["study_keys"] == [key]


def test_a_request_is_claimed_once_and_taken_over_when_its_job_dies(stored: Engine) -> None:
    request = request_manual(stored, MODEL, "ml-ops@example.org", "claim test")
    lease = timedelta(minutes=30)
    claimed = claim_next(stored, lease=lease, max_attempts=2)
    assert claimed is not None and claimed.request_id == request.request_id
    assert claimed.status == "running" and claimed.attempts == 1
    assert claim_next(stored, lease=lease, max_attempts=2) is None  # held, lease running

    later = datetime.now(UTC) + timedelta(hours=1)
    retaken = claim_next(stored, lease=lease, max_attempts=2, now=later)
    assert retaken is not None and (retaken.status, retaken.attempts) == ("running", 2)
    exhausted = claim_next(stored, lease=lease, max_attempts=2, now=later + timedelta(hours=1))
    assert exhausted is not None and exhausted.status == "failed"
    assert exhausted.error is not None and "gave up after 2 attempts" in exhausted.error


def test_progress_is_merged_and_is_the_heartbeat(stored: Engine) -> None:
    request = request_manual(stored, MODEL, "ml-ops@example.org", "progress")
    with stored.begin() as connection:
        connection.execute(
            update(RetrainRequestRow)
            .where(RetrainRequestRow.request_id == request.request_id)
            .values(updated_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    retrain_store.record_progress(stored, request.request_id, stage="training", epoch=1)
    retrain_store.record_progress(stored, request.request_id, epoch=2)
    row = retrain_store.get_request(stored, request.request_id)
    assert row.progress == {"stage": "training", "epoch": 2}
    assert row.updated_at.year > 2020
    assert uuid.UUID(str(row.request_id)) == request.request_id


def plan_governing(folder: Path, policy: dict[str, object]) -> Path:
    """The shipped plan with ``policy``, governing this test's model, with an empty locked
    test set."""
    folder.mkdir(parents=True, exist_ok=True)
    locked = LockedTestSet.from_keys([])
    locked.write(folder / "locked.json")
    document = yaml.safe_load((SHIPPED_PLANS / "cxr-lesion.yaml").read_text())
    document["protocol"]["data_management"]["locked_test_set"] = {
        "manifest": "locked.json",
        "sha256": locked.sha256,
    }
    document["protocol"]["threshold_policy"] = policy
    (folder / "plan.yaml").write_text(yaml.safe_dump(document))
    return folder


def test_the_plans_threshold_policy_sets_the_registered_threshold(
    stored: Engine, tmp_path: Path
) -> None:
    champion = untrained_champion()
    champion = TrainedModel(SPEC, champion.state_dict, (1.0,), (0.37,))
    registry = FakeRegistry(champion)
    request_manual(stored, MODEL, "ml-ops@example.org", "keep the operating point")
    plans = plan_governing(tmp_path / "plans", {"rule": "keep_champion"})

    [served] = serve_pending(context(stored, registry, tmp_path, plans_dir=plans))

    assert served.status == "succeeded", served.error
    [record] = registry.records
    assert record.result.model.thresholds == (0.37,)  # the champion's, whatever training chose
    provenance = ThresholdProvenance.from_tag(record.tags[THRESHOLD_PROVENANCE_TAG])
    assert provenance is not None and provenance.rule is ThresholdRule.KEEP_CHAMPION
    assert provenance.source == "champion" and provenance.plan_id == "cxr-lesion-pccp"
    assert served.progress is not None
    assert served.progress["threshold"]["threshold"] == 0.37


def test_a_rule_with_too_few_positive_tuning_cases_fails_the_job(
    stored: Engine, tmp_path: Path
) -> None:
    registry = FakeRegistry(untrained_champion())
    request_manual(stored, MODEL, "ml-ops@example.org", "re-select the threshold")
    policy = {"rule": "hold_champion_sensitivity", "min_tuning_positives": 500}
    plans = plan_governing(tmp_path / "plans", policy)

    [served] = serve_pending(context(stored, registry, tmp_path, plans_dir=plans))

    assert served.status == "failed" and served.attempts == 1  # retrying cannot help
    assert served.error is not None and "needs at least 500" in served.error
    assert registry.records == []  # nothing registered


def champion_manifest(cases: list[LabelledCase]) -> DatasetManifest:
    """A training manifest of ``cases`` (all on the train side; the images' hashes made up)."""
    return DatasetManifest(
        model_name=MODEL,
        seed=5,
        validation_share=0.2,
        locked_test_sha256="0" * 64,
        dropped_without_uri=0,
        cases=tuple(
            ManifestCase(
                study_key=case.study_key,
                site_id=case.site_id,
                side=Side.TRAIN,
                labels=dict(case.labels),
                label_source=case.label_source,
                predicted_at=case.predicted_at,
                labelled_at=case.labelled_at,
                content_sha256=fake_content_hash(case.study_key),
            )
            for case in cases
        ),
    )


def test_the_target_leaves_out_the_cases_of_the_champions_lineage(
    stored: Engine, tmp_path: Path
) -> None:
    """Plan 1.4.0's rule: the champion (version 2, retrained from version 1) trained on the
    first 30 studies and its parent on the next 30: every tuning case among those 60 is left
    out of the target, and the provenance counts them."""
    cases = sorted(load_cases(stored, MODEL, ("lesion",)).cases, key=lambda c: c.predicted_at)
    lineage = [champion_manifest(cases[30:60]), champion_manifest(cases[:30])]
    registry = FakeRegistry(untrained_champion(), lineage=lineage)
    request_manual(stored, MODEL, "ml-ops@example.org", "hold the champion's sensitivity")
    policy = {
        "rule": "hold_champion_sensitivity",
        "target_cases": "unseen_by_champion",
        "min_tuning_positives": 1,
    }
    plans = plan_governing(tmp_path / "plans", policy)

    [served] = serve_pending(context(stored, registry, tmp_path, plans_dir=plans))

    assert served.status == "succeeded", served.error
    [record] = registry.records
    tuning = [case for case in record.manifest.cases if case.side is Side.VALIDATION]
    champions = {case.study_key for case in cases[:60]}
    excluded = [case for case in tuning if case.study_key in champions]
    provenance = ThresholdProvenance.from_tag(record.tags[THRESHOLD_PROVENANCE_TAG])
    assert provenance is not None and provenance.target_cases == "unseen_by_champion"
    assert 0 < len(excluded) < len(tuning)
    assert provenance.excluded_cases == len(excluded)
    assert provenance.target_case_count == len(tuning) - len(excluded)
    assert provenance.excluded_positives == sum(c.labels["lesion"] for c in excluded)
    assert provenance.champion_manifests == tuple(m.sha256() for m in reversed(lineage))
    # Both manifests list their cases on the train side: the threshold is selected without them.
    assert provenance.tuning_cases == len(tuning)
    assert provenance.selection_cases == len(tuning) - len(excluded)

    # A champion that logged no manifest: which cases it saw is not known.
    request_manual(stored, MODEL, "ml-ops@example.org", "again, without the manifest")
    registry.lineage = []
    [failed] = serve_pending(context(stored, registry, tmp_path, plans_dir=plans))
    assert failed.status == "failed" and failed.error is not None
    assert "training manifest" in failed.error and "is missing" in failed.error


def test_a_stopped_job_registers_nothing_and_its_next_attempt_resumes(
    stored: Engine, tmp_path: Path
) -> None:
    """Ctrl-C in the demo while the candidate trains (issue 22): the job stops between two
    batches, the request waits as it was (its attempt not counted), and the next attempt
    resumes from the last finished epoch and registers one version."""
    registry = FakeRegistry(untrained_champion())
    request = request_manual(stored, MODEL, "ml-ops@example.org", "stop test")
    before = counter("stopped")

    def after_first_epoch() -> bool:  # what a Ctrl-C during the second epoch looks like
        progress = retrain_store.get_request(stored, request.request_id).progress or {}
        return int(progress.get("epoch", 0)) >= 1

    stopping = replace(context(stored, registry, tmp_path), should_stop=after_first_epoch)
    with pytest.raises(TrainingStopped, match="after 1 of at most 2 epochs"):
        serve_pending(stopping)

    waiting = retrain_store.get_request(stored, request.request_id)
    assert (waiting.status, waiting.attempts, waiting.error) == ("pending", 0, None)
    assert waiting.progress is not None and waiting.progress["stage"] == "stopped"
    assert "stopped after 1 of at most 2 epochs" in waiting.progress["stopped"]
    assert registry.records == []  # nothing logged to MLflow, nothing registered
    assert candidates_store.list_candidates(stored).items == []
    assert [e.action for e in change_log.entries(stored)] == ["retrain.requested"]
    assert counter("stopped") == before + 1
    # A stop asked before the job starts claims nothing.
    assert serve_pending(replace(stopping, should_stop=lambda: True)) == []
    assert retrain_store.get_request(stored, request.request_id).attempts == 0

    [served] = serve_pending(context(stored, registry, tmp_path))
    assert (served.status, served.attempts, served.model_version) == ("succeeded", 1, "2")
    [record] = registry.records
    assert record.result.resumed_from_epoch == 1
    assert [m.epoch for m in record.result.history] == [1, 2]
