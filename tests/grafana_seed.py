"""A database with something in every Grafana view, written through the product's own code.

Two simulated sites (site-02 moves to the degraded scanner half-way, so drift checks raise
alerts), ingested with ``store_batch`` and a ``DriftMonitor``; performance refreshed twice
(history); a manual retrain request served; candidates proposed, gated, signed, promoted,
rejected; the change log checkpointed; at a third site, alerts of every severity and decision
state (:func:`seed_alert_cases`). Used by the view tests and the dashboards' SQL tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from monitor.drift.alerts import Alert, AlertUpdate, StreamKey
from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.drift.severity import Severity
from monitor.events import InferenceEvent
from monitor.performance.rules import RulesConfig
from monitor.service.audit import store as change_log
from monitor.service.audit.keys import entry_key
from monitor.service.audit.signing import checkpoint
from monitor.service.drift.alerts import apply_updates, transition, write_alerts
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
    seed_alert_cases(engine)
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


CASES_SITE = "site-03"
"""The alert cases' site: no events, only alerts, so a dashboard on it shows these alone."""
DECISION_REASON = (
    "sustained for 15 days: acknowledge and re-baseline if this is the new normal, or investigate"
)
"""What the drift engine writes when an episode asks for a decision
(``monitor.drift.engine._ask_for_decision``)."""


def seed_alert_cases(engine: Engine, site_id: str = CASES_SITE) -> Mapping[str, uuid.UUID]:
    """Alerts at ``site_id`` for each severity and decision state, written, updated and
    acknowledged by the service's own alert functions; returns case name -> alert id.

    * ``info``, ``critical``: open and drifting;
    * ``decision``: warning, its episode asked for a decision: needs one;
    * ``decided``: asked, then acknowledged: needs none any more;
    * ``ended``: asked, then the drift ended: needs none;
    * ``resolved``: info, resolved.
    """
    start = datetime(2026, 3, 10, tzinfo=UTC)
    severities = {
        "info": Severity.INFO,
        "critical": Severity.CRITICAL,
        "decision": Severity.WARNING,
        "decided": Severity.WARNING,
        "ended": Severity.WARNING,
        "resolved": Severity.INFO,
    }
    ids = {name: uuid.uuid4() for name in severities}
    alerts = [
        _case_alert(ids[name], site_id, severity, start + timedelta(hours=hour))
        for hour, (name, severity) in enumerate(severities.items())
    ]
    asked = start + timedelta(days=15)
    with engine.begin() as connection:
        write_alerts(connection, alerts, datetime.now(UTC))
        apply_updates(
            connection,
            [
                *(
                    AlertUpdate(ids[name], "sustained", asked, reason=DECISION_REASON)
                    for name in ("decision", "decided", "ended")
                ),
                AlertUpdate(ids["ended"], "ended", asked, reason="no drift in recent checks"),
            ],
        )
    transition(engine, ids["decided"], "acknowledge", "site-manager", "new scanner: re-baseline")
    transition(engine, ids["resolved"], "resolve", "site-manager", None)
    return ids


def _case_alert(alert_id: uuid.UUID, site_id: str, severity: Severity, at: datetime) -> Alert:
    return Alert(
        alert_id=alert_id,
        key=StreamKey(site_id, MODEL, "1"),
        detector="ks",
        features=("KVP", "Exposure"),
        occurred_at=at,
        since=at - timedelta(days=1),
        window_start=at - timedelta(days=1),
        window_end=at,
        statistic=0.4,
        p_value=0.0001,
        effect_size=0.3,
        effect_size_name="wasserstein_norm",
        explanation=f"KVP moved ({severity.value})",
        config_fingerprint="f" * 64,
        reference_id=uuid.uuid4(),
        severity=severity,
    )
