"""A database with something in every Grafana view, written through the product's own code.

Two simulated sites (site-02 moves to the degraded scanner half-way, so drift checks raise
alerts), ingested with ``store_batch`` and a ``DriftMonitor``; performance refreshed twice
(history); a manual retrain request served; candidates proposed, gated, signed, promoted,
rejected; the change log checkpointed. Used by the view tests and the dashboards' SQL tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.events import InferenceEvent
from monitor.performance.rules import RulesConfig
from monitor.service.audit import store as change_log
from monitor.service.audit.keys import entry_key
from monitor.service.audit.signing import checkpoint
from monitor.service.drift.store import DriftMonitor
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.pccp import champion
from monitor.service.pccp import store as candidates_store
from monitor.service.performance.store import refresh
from monitor.service.retrain import store as retrain_store
from monitor.service.settings import PerformanceSettings
from monitor.simulate import SimulationConfig, simulate
from tests.factories import gate_report, record_gate_outcome

MODEL = "cxr-lesion"
SIMULATION = SimulationConfig(
    seed=11,
    start=datetime(2026, 3, 1, tzinfo=UTC),
    sites=2,
    studies_per_site=300,
    image_size=64,
    change_site="site-02",
    change_at_index=150,
)
DRIFT = EngineConfig(
    reference_size=100,
    window=WindowConfig(size=50, min_size=25),
    detectors=DetectorSet(online=None),
)
PERFORMANCE = PerformanceSettings(
    rolling_window=100, estimate_reference=200, rules=RulesConfig(calibration_limit=None)
)


@dataclass(frozen=True)
class Seeded:
    study_keys: frozenset[str]
    """Every study key stored: none may show in a view."""
    sites: tuple[str, ...]


class _Registry:
    """Stands in for the model registry's champion alias (our own port)."""

    def __init__(self) -> None:
        self.champion: str | None = "1"

    def champion_version(self, model_name: str) -> str | None:
        return self.champion

    def move_champion(self, model_name: str, version: str) -> str | None:
        previous, self.champion = self.champion, version
        return previous


def seed_for_grafana(engine: Engine, studies_dir: Path) -> Seeded:
    """Fill a migrated, empty database (simulated DICOM files go to ``studies_dir``)."""
    events = list(simulate(SIMULATION, studies_dir))
    monitor = DriftMonitor(DRIFT)
    for start in range(0, len(events), 200):
        chunk = events[start : start + 200]
        delivered = [Delivered(e, "seed", 0, start + i) for i, e in enumerate(chunk)]
        store_batch(engine, delivered, [], monitor.process)
    now = datetime.now(UTC)
    refresh(engine, PERFORMANCE, now=now - timedelta(hours=1))
    refresh(engine, PERFORMANCE, now=now)
    govern(engine)
    return Seeded(
        study_keys=frozenset(e.study_key for e in events if isinstance(e, InferenceEvent)),
        sites=tuple(SIMULATION.site_ids()),
    )


def govern(engine: Engine) -> None:
    """A served retrain request, a promoted candidate, a rejected one, an unevaluated one and
    one waiting for its second approval."""
    request = retrain_store.request_manual(engine, MODEL, "mlops-ann", "seeded for dashboards")
    claimed = retrain_store.claim_next(engine, lease=timedelta(minutes=5), max_attempts=3)
    assert claimed is not None and claimed.request_id == request.request_id
    retrain_store.finish(engine, request.request_id, "succeeded", model_version="2")
    promoted = _gated(engine, "2", "site-02", request.request_id)
    for signer in ("approver-a", "approver-b"):
        candidates_store.sign(
            engine, promoted, signer=signer, decision="approve", reason="seeded approval"
        )
    champion.promote(
        engine, promoted, actor="mlops-ann", reason="seeded promotion", registry=_Registry()
    )
    rejected = _gated(engine, "3", "site-01", None)
    candidates_store.sign(
        engine, rejected, signer="approver-a", decision="reject", reason="seeded rejection"
    )
    candidates_store.propose(
        engine, model_name=MODEL, model_version="4", proposed_by="mlops-ann", reason="seeded"
    )
    waiting = _gated(engine, "5", "site-02", None)  # one of two approvals: pending
    candidates_store.sign(
        engine, waiting, signer="approver-a", decision="approve", reason="seeded approval"
    )
    change_log.record(
        engine,
        change_log.Entry(
            actor="mlops-ann", action="config.changed", subject="drift", details={"seeded": True}
        ),
    )
    checkpoint(engine, entry_key())  # the key that signed the entries


def _gated(engine: Engine, version: str, site_id: str, request_id: uuid.UUID | None) -> uuid.UUID:
    row = candidates_store.propose(
        engine,
        model_name=MODEL,
        model_version=version,
        proposed_by="retrain-job",
        triggered_by="retrain-policy",
        request_id=request_id,
        site_id=site_id,
        reason="seeded",
    )
    record_gate_outcome(engine, row.candidate_id, report=gate_report(MODEL, int(version)))
    return row.candidate_id
