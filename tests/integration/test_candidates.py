"""The PCCP candidate lifecycle against a real PostgreSQL database: legal and illegal
transitions, four eyes, racing signatures, promotion and rollback, all in the change log.

The model registry is our own interface (``ChampionRegistry``), faked here; the registry's real
alias moves are exercised end to end in test_pccp_e2e.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine

from monitor.service.audit.store import entries, verify
from monitor.service.errors import IllegalTransition
from monitor.service.models import CandidateRow
from monitor.service.pccp import champion, store
from monitor.service.pccp.history import ModelNotFound
from monitor.service.pccp.store import FourEyesViolation
from tests.factories import record_gate_outcome

pytestmark = pytest.mark.integration

MODEL = "cxr-lesion"
REPORT: dict[str, Any] = {
    "criteria": [
        {"id": "PE-1", "kind": "lower_bound", "passed": True, "detail": "ok"},
        {"id": "PE-4", "kind": "non_inferiority", "passed": True, "detail": "ok"},
    ],
    "scope_violations": [],
    "locked_test_sha256": "a" * 64,
}


class FakeRegistry:
    """Holds the ``champion`` alias per model, as the MLflow registry would."""

    def __init__(self, champion: str | None = "1") -> None:
        self.champion: dict[str, str | None] = {MODEL: champion}
        self.moves: list[str] = []

    def champion_version(self, model_name: str) -> str | None:
        return self.champion.get(model_name)

    def move_champion(self, model_name: str, version: str) -> str | None:
        previous = self.champion.get(model_name)
        self.champion[model_name] = version
        self.moves.append(version)
        return previous


def proposed(engine: Engine, version: str = "2", **overrides: Any) -> CandidateRow:
    arguments: dict[str, Any] = {
        "model_name": MODEL,
        "model_version": version,
        "proposed_by": "retrain-job",
        "triggered_by": "carol",
        "request_id": uuid.uuid4(),
        "site_id": "site-02",
        "reason": "trained for a retrain request",
    }
    return store.propose(engine, **(arguments | overrides))


def gated(
    engine: Engine, row: CandidateRow, outcome: store.GateStatus = "passed", against: str = "1"
) -> CandidateRow:
    return record_gate_outcome(engine, row.candidate_id, outcome, REPORT, champion_version=against)


def approved(engine: Engine, version: str = "2") -> CandidateRow:
    row = gated(engine, proposed(engine, version))
    store.sign(engine, row.candidate_id, signer="alice", decision="approve", reason="reviewed")
    return store.sign(engine, row.candidate_id, signer="bob", decision="approve", reason="ok")


def rollback(
    engine: Engine, version: str, registry: FakeRegistry, actor: str = "a", reason: str = "r"
) -> CandidateRow:
    """Undo the promotion of ``version`` (the champion the caller means to undo)."""
    return champion.rollback(
        engine, MODEL, expected_version=version, actor=actor, reason=reason, registry=registry
    )


def actions(engine: Engine) -> list[str]:
    return [entry.action for entry in entries(engine)]


def test_a_candidate_goes_from_proposal_to_promotion_and_back_with_every_step_logged(
    pg_engine: Engine,
) -> None:
    registry = FakeRegistry(champion="1")
    row = proposed(pg_engine)
    assert row.status == "candidate"
    assert proposed(pg_engine).candidate_id == row.candidate_id  # proposing again: same row

    row = gated(pg_engine, row)
    assert row.status == "passed" and row.plan_version == "1.0.0"
    row = store.sign(pg_engine, row.candidate_id, signer="alice", decision="approve", reason="r1")
    assert row.status == "passed"  # one of two approvals
    row = store.sign(pg_engine, row.candidate_id, signer="bob", decision="approve", reason="r2")
    assert row.status == "approved"

    row = champion.promote(
        pg_engine, row.candidate_id, actor="alice", reason="go", registry=registry
    )
    assert row.status == "promoted" and row.previous_champion == "1"
    assert registry.champion[MODEL] == "2"

    row = rollback(pg_engine, "2", registry, actor="bob", reason="site complaint")
    assert row.status == "rolled_back" and row.rolled_back_by == "bob"
    assert registry.champion[MODEL] == "1"

    assert actions(pg_engine) == [
        "candidate.proposed",
        "gate.result",
        "approval",
        "approval",
        "promotion",
        "rollback",
    ]
    logged = {entry.action: entry for entry in entries(pg_engine)}
    assert logged["gate.result"].details["criteria"] == {"PE-1": "pass", "PE-4": "pass"}
    assert logged["promotion"].details["approvers"] == ["alice", "bob"]
    assert logged["promotion"].details["previous_champion"] == "1"
    assert logged["rollback"].details["restored_champion"] == "1"
    assert logged["approval"].plan_version == "1.0.0"
    assert verify(pg_engine).ok

    signatures = store.signatures(pg_engine, row.candidate_id)
    assert [(s.signer, s.decision) for s in signatures] == [
        ("alice", "approve"),
        ("bob", "approve"),
    ]
    first = signatures[0]
    assert "cxr-lesion version 2" in first.meaning and "cxr-lesion-pccp" in first.meaning
    assert first.reason == "r1" and first.signed_at is not None
    assert logged["approval"].seq in {s.change_log_seq for s in signatures}


def test_the_proposer_the_trigger_and_a_repeat_signer_may_not_approve(pg_engine: Engine) -> None:
    row = gated(pg_engine, proposed(pg_engine, proposed_by="dave", triggered_by="carol"))
    for signer in ("dave", "carol"):
        with pytest.raises(FourEyesViolation):
            store.sign(pg_engine, row.candidate_id, signer=signer, decision="approve", reason="x")
    store.sign(pg_engine, row.candidate_id, signer="alice", decision="approve", reason="x")
    with pytest.raises(FourEyesViolation):
        store.sign(pg_engine, row.candidate_id, signer="alice", decision="approve", reason="x")
    with pytest.raises(FourEyesViolation):  # nor reject after approving
        store.sign(pg_engine, row.candidate_id, signer="alice", decision="reject", reason="x")
    assert store.get(pg_engine, row.candidate_id).status == "passed"
    assert actions(pg_engine).count("approval") == 1


def test_a_signature_needs_a_reason(pg_engine: Engine) -> None:
    row = gated(pg_engine, proposed(pg_engine))
    with pytest.raises(ValueError, match="reason"):
        store.sign(pg_engine, row.candidate_id, signer="alice", decision="approve", reason=" ")


def _promote(engine: Engine, row: CandidateRow) -> None:
    champion.promote(engine, row.candidate_id, actor="alice", reason="x", registry=FakeRegistry())


def _approve(engine: Engine, row: CandidateRow) -> None:
    store.sign(engine, row.candidate_id, signer="erin", decision="approve", reason="x")


def _reject(engine: Engine, row: CandidateRow) -> None:
    store.sign(engine, row.candidate_id, signer="erin", decision="reject", reason="x")


def _gate(engine: Engine, row: CandidateRow) -> None:
    gated(engine, row)


Action = Callable[[Engine, CandidateRow], None]
ILLEGAL: list[tuple[str, str, Action]] = [
    # (state reached, action, how)
    ("candidate", "approve", _approve),
    ("candidate", "promote", _promote),
    ("passed", "evaluate", _gate),
    ("passed", "promote", _promote),
    ("failed", "approve", _approve),
    ("failed", "promote", _promote),
    ("failed", "reject", _reject),
    ("failed", "evaluate", _gate),
    ("out_of_scope", "approve", _approve),
    ("out_of_scope", "promote", _promote),
    ("out_of_scope", "reject", _reject),
    ("approved", "approve", _approve),
    ("approved", "evaluate", _gate),
    ("rejected", "approve", _approve),
    ("rejected", "promote", _promote),
    ("rejected", "reject", _reject),
    ("promoted", "approve", _approve),
    ("promoted", "promote", _promote),
    ("promoted", "reject", _reject),
    ("rolled_back", "approve", _approve),
    ("rolled_back", "promote", _promote),
    ("rolled_back", "reject", _reject),
]


def reach(engine: Engine, state: str) -> CandidateRow:
    """A candidate in ``state`` by legal steps only."""
    row = proposed(engine)
    if state == "candidate":
        return row
    if state in ("failed", "out_of_scope"):
        return gated(engine, row, state)  # type: ignore[arg-type]
    row = gated(engine, row)
    if state == "passed":
        return row
    if state == "rejected":
        return store.sign(engine, row.candidate_id, signer="x", decision="reject", reason="no")
    row = approved_from(engine, row)
    if state == "approved":
        return row
    registry = FakeRegistry()
    row = champion.promote(engine, row.candidate_id, actor="a", reason="r", registry=registry)
    if state == "promoted":
        return row
    return rollback(engine, "2", registry)


def approved_from(engine: Engine, row: CandidateRow) -> CandidateRow:
    store.sign(engine, row.candidate_id, signer="alice", decision="approve", reason="r")
    return store.sign(engine, row.candidate_id, signer="bob", decision="approve", reason="r")


@pytest.mark.parametrize(
    ("state", "name", "action"), ILLEGAL, ids=[f"{s}-{n}" for s, n, _ in ILLEGAL]
)
def test_every_illegal_transition_is_refused_and_changes_nothing(
    pg_engine: Engine, state: str, name: str, action: Action
) -> None:
    row = reach(pg_engine, state)
    assert row.status == state
    logged = len(actions(pg_engine))
    with pytest.raises(IllegalTransition):
        action(pg_engine, row)
    assert store.get(pg_engine, row.candidate_id).status == state
    assert len(actions(pg_engine)) == logged


def test_a_candidate_outside_the_plan_can_never_be_promoted(pg_engine: Engine) -> None:
    row = reach(pg_engine, "out_of_scope")
    registry = FakeRegistry()
    for signer in ("alice", "bob", "erin"):
        with pytest.raises(IllegalTransition):
            store.sign(pg_engine, row.candidate_id, signer=signer, decision="approve", reason="x")
    with pytest.raises(IllegalTransition):
        champion.promote(pg_engine, row.candidate_id, actor="alice", reason="x", registry=registry)
    assert registry.moves == []


def test_rollback_without_a_promotion_is_refused(pg_engine: Engine) -> None:
    # A model the service has no record of is not found (HTTP 404), not a conflict.
    with pytest.raises(ModelNotFound, match=f"no model '{MODEL}' is known here"):
        rollback(pg_engine, "2", FakeRegistry())
    proposed(pg_engine)
    with pytest.raises(IllegalTransition, match="was never promoted"):
        rollback(pg_engine, "2", FakeRegistry())


def test_rollback_restores_promotions_one_at_a_time(pg_engine: Engine) -> None:
    registry = FakeRegistry(champion="1")
    for version, against in (("2", "1"), ("3", "2")):
        row = approved_from(
            pg_engine, gated(pg_engine, proposed(pg_engine, version), against=against)
        )
        champion.promote(pg_engine, row.candidate_id, actor="a", reason="r", registry=registry)
    assert registry.champion[MODEL] == "3"
    assert rollback(pg_engine, "3", registry).model_version == "3"
    assert registry.champion[MODEL] == "2"
    assert rollback(pg_engine, "2", registry).model_version == "2"
    assert registry.champion[MODEL] == "1"


def test_a_promotion_retried_after_its_commit_failed_records_the_champion_it_replaced(
    pg_engine: Engine,
) -> None:
    """The alias moved, then the commit failed: the registry already names the candidate."""
    row = approved(pg_engine)
    registry = FakeRegistry(champion="2")
    row = champion.promote(pg_engine, row.candidate_id, actor="a", reason="r", registry=registry)
    assert row.status == "promoted" and row.previous_champion == "1"
    assert registry.champion[MODEL] == "2"


def test_a_change_of_champion_needs_a_reason(pg_engine: Engine) -> None:
    row = approved(pg_engine)
    registry = FakeRegistry()
    with pytest.raises(ValueError, match="reason"):
        champion.promote(pg_engine, row.candidate_id, actor="a", reason=" ", registry=registry)
    champion.promote(pg_engine, row.candidate_id, actor="a", reason="r", registry=registry)
    with pytest.raises(ValueError, match="reason"):
        rollback(pg_engine, "2", registry, reason="\t")
    assert registry.champion[MODEL] == "2" and actions(pg_engine).count("rollback") == 0


def test_racing_approvals_count_each_signer_once_and_approve_exactly_once(
    pg_engine: Engine,
) -> None:
    """Six threads: three signers, each signing twice at once. The row lock serialises them."""
    row = gated(pg_engine, proposed(pg_engine))
    start = threading.Barrier(6)
    outcomes: list[str] = []

    def sign(signer: str) -> None:
        start.wait()
        try:
            store.sign(pg_engine, row.candidate_id, signer=signer, decision="approve", reason="r")
            outcomes.append("signed")
        except (FourEyesViolation, IllegalTransition) as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=sign, args=(s,)) for s in ("a", "b", "c") * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Two distinct approvals make it approved; every other attempt is refused, none errors.
    assert outcomes.count("signed") == 2, outcomes
    assert len(outcomes) == 6
    assert store.get(pg_engine, row.candidate_id).status == "approved"
    assert len(store.signatures(pg_engine, row.candidate_id)) == 2
    assert actions(pg_engine).count("approval") == 2
    assert verify(pg_engine).ok


def test_a_promotion_racing_a_rejection_ends_in_one_of_them(pg_engine: Engine) -> None:
    row = approved(pg_engine)
    registry = FakeRegistry()
    start = threading.Barrier(2)
    results: list[str] = []

    def promote() -> None:
        start.wait()
        try:
            champion.promote(pg_engine, row.candidate_id, actor="a", reason="r", registry=registry)
            results.append("promoted")
        except IllegalTransition:
            results.append("refused")

    def reject() -> None:
        start.wait()
        try:
            store.sign(pg_engine, row.candidate_id, signer="erin", decision="reject", reason="r")
            results.append("rejected")
        except IllegalTransition:
            results.append("refused")

    threads = [threading.Thread(target=promote), threading.Thread(target=reject)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = store.get(pg_engine, row.candidate_id).status
    assert sorted(results) in (["promoted", "refused"], ["refused", "rejected"])
    assert final in results
    assert (registry.moves == ["2"]) == (final == "promoted")


def test_listing_filters_by_site_model_and_status(pg_engine: Engine) -> None:
    proposed(pg_engine, "2", site_id="site-01")
    gated(pg_engine, proposed(pg_engine, "3", site_id="site-02"))
    proposed(pg_engine, "4", site_id=None)
    assert store.list_candidates(pg_engine).total == 3
    assert [r.model_version for r in store.list_candidates(pg_engine, sites={"site-02"}).items] == [
        "3"
    ]
    assert store.list_candidates(pg_engine, status="passed").total == 1
    assert store.list_candidates(pg_engine, model_name="other").total == 0
    assert [r.model_version for r in store.pending(pg_engine)] == ["2", "4"]
