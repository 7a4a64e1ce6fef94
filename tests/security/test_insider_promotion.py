"""A hostile insider with the service's database credentials against promotion and rollback.

Each test edits the database as that insider could (plain SQL through the service's engine:
statuses, signature rows, the plan's number of approvals, the stored evidence), then calls the
real API with real tokens, as an ML-ops person would next. Promotion must refuse whatever the
change log does not back, and leave the champion and the log as they were. Racing requests and
repeated rollbacks must move the champion once.

The registry is our own port, faked; it answers slowly, so that without the model's lock two
promotions would both read the old champion.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from monitor.service.api import create_app
from monitor.service.audit.keys import keyring, sign_entry
from monitor.service.audit.store import entries, entry_hash, verify
from monitor.service.auth import Role
from monitor.service.pccp import champion
from monitor.service.pccp import store as candidates_store
from monitor.service.settings import Settings
from tests.auth_helpers import TEST_AUTH, bearer
from tests.conftest import SESSION_AUDIT_KEY
from tests.factories import record_gate_outcome

pytestmark = pytest.mark.integration

SETTINGS = Settings(auth=TEST_AUTH)
MODEL = "cxr-lesion"
ALICE = bearer(SETTINGS, "alice", Role.MLOPS)
BOB = bearer(SETTINGS, "bob", Role.MLOPS)
DAVE = bearer(SETTINGS, "dave", Role.MLOPS)


class SlowRegistry:
    """The ``champion`` alias of one model, read slowly (as MLflow over the network is)."""

    def __init__(self, champion: str = "1", read_delay_s: float = 0.0) -> None:
        self.champion: str | None = champion
        self.read_delay_s = read_delay_s
        self.moves: list[str] = []

    def champion_version(self, model_name: str) -> str | None:
        seen = self.champion
        time.sleep(self.read_delay_s)
        return seen

    def move_champion(self, model_name: str, version: str) -> str | None:
        previous, self.champion = self.champion, version
        self.moves.append(version)
        return previous

    def has_version(self, model_name: str, version: str) -> bool:
        return True


@pytest.fixture
def registry() -> SlowRegistry:
    return SlowRegistry()


@pytest.fixture
def client(pg_engine: Engine, registry: SlowRegistry) -> Iterator[TestClient]:
    app = create_app(SETTINGS, engine=pg_engine)
    app.state.registry_factory = lambda: registry
    with TestClient(app) as test_client:
        yield test_client


def gated(engine: Engine, version: str, against: str = "1", outcome: Any = "passed") -> uuid.UUID:
    """A candidate proposed by the retraining job for carol's request, through the gate."""
    row = candidates_store.propose(
        engine,
        model_name=MODEL,
        model_version=version,
        proposed_by="retrain-job",
        triggered_by="carol",
        reason="retrained",
    )
    record_gate_outcome(engine, row.candidate_id, outcome, champion_version=against)
    return row.candidate_id


def approve(client: TestClient, candidate_id: uuid.UUID, *signers: dict[str, str]) -> None:
    for signer in signers:
        response = client.post(
            f"/candidates/{candidate_id}/approve", json={"reason": "reviewed"}, headers=signer
        )
        assert response.status_code == 200, response.text


def promote(client: TestClient, candidate_id: uuid.UUID) -> httpx.Response:
    url = f"/candidates/{candidate_id}/promote"
    response: httpx.Response = client.post(url, json={"reason": "go"}, headers=ALICE)
    return response


def rollback(client: TestClient, expected_version: str) -> httpx.Response:
    body = {"expected_version": expected_version, "reason": "site complaint"}
    response: httpx.Response = client.post(f"/models/{MODEL}/rollback", json=body, headers=BOB)
    return response


def as_insider(engine: Engine, statement: str, **values: Any) -> None:
    """What the service's database credentials allow, outside the service."""
    with engine.begin() as connection:
        connection.execute(text(statement), values)


def logged(engine: Engine, action: str) -> list[dict[str, Any]]:
    return [dict(e.details) for e in entries(engine) if e.action == action]


def assert_refused(
    response: httpx.Response, engine: Engine, registry: SlowRegistry, because: str
) -> None:
    assert response.status_code == 409, response.text
    assert because in response.json()["detail"]
    assert registry.champion == "1" and registry.moves == []
    assert logged(engine, "promotion") == []
    assert verify(engine).ok


SET_APPROVED = "UPDATE candidates SET status = 'approved' WHERE candidate_id = :id"


def test_a_failed_candidate_set_approved_by_sql_is_not_promoted(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry
) -> None:
    candidate_id = gated(pg_engine, "2", outcome="failed")
    as_insider(pg_engine, SET_APPROVED, id=candidate_id)
    assert_refused(promote(client, candidate_id), pg_engine, registry, "outcome 'failed'")


def test_evidence_rewritten_by_sql_is_not_promoted(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry
) -> None:
    candidate_id = gated(pg_engine, "2")
    approve(client, candidate_id, BOB, DAVE)
    as_insider(
        pg_engine,
        "UPDATE candidates SET report = jsonb_set(report, '{criteria,0,passed}', 'false') "
        "WHERE candidate_id = :id",
        id=candidate_id,
    )
    assert_refused(promote(client, candidate_id), pg_engine, registry, "does not match the digest")


def forge_signature(engine: Engine, candidate_id: uuid.UUID, signer: str, seq: int) -> None:
    as_insider(
        engine,
        "INSERT INTO candidate_signatures (signature_id, candidate_id, signer, decision, meaning, "
        "reason, signed_at, change_log_seq) VALUES (:signature_id, :candidate_id, :signer, "
        "'approve', 'I approve', 'forged', :signed_at, :seq)",
        signature_id=uuid.uuid4(),
        candidate_id=candidate_id,
        signer=signer,
        signed_at=datetime.now(UTC),
        seq=seq,
    )


@pytest.mark.parametrize("cites", ["nothing", "the gate's entry", "bob's approval"])
def test_a_signature_inserted_by_sql_is_not_an_approval(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry, cites: str
) -> None:
    candidate_id = gated(pg_engine, "2")
    approve(client, candidate_id, BOB)
    seqs = {e.action: e.seq for e in entries(pg_engine)}
    seq = {"nothing": 10**6, "the gate's entry": seqs["gate.result"]}.get(cites, seqs["approval"])
    forge_signature(pg_engine, candidate_id, "mallory", seq)
    as_insider(pg_engine, SET_APPROVED, id=candidate_id)
    because = f"the approval signed by mallory cites change-log #{seq}"
    assert_refused(promote(client, candidate_id), pg_engine, registry, because)


@pytest.mark.parametrize("signed_by", ["nobody", "the insider's own key"])
def test_an_approval_entry_inserted_by_sql_with_a_correct_hash_is_not_an_approval(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry, signed_by: str
) -> None:
    """The chain hash is public arithmetic: the insider appends an ``approval`` entry for
    mallory exactly as the service would, hash and all, and a signature row citing it. Only the
    audit key's signature, which the database never holds, tells it apart."""
    candidate_id = gated(pg_engine, "2")
    approve(client, candidate_id, BOB)
    genuine = next(e for e in entries(pg_engine) if e.action == "approval")
    fields: dict[str, Any] = {
        "seq": genuine.seq + 1,
        "recorded_at": datetime.now(UTC),
        "actor": "mallory",
        "action": "approval",
        "subject": genuine.subject,
        "reason": "forged",
        "plan_version": genuine.plan_version,
        "details": {**genuine.details, "signer": "mallory"},
        "prev_hash": genuine.entry_hash,
        "key_id": None,
        "signature": None,
    }
    fields["entry_hash"] = entry_hash(genuine.entry_hash, fields)
    if signed_by != "nobody":
        fields["key_id"], fields["signature"] = sign_entry(
            Ed25519PrivateKey.generate(), fields["entry_hash"]
        )
    as_insider(
        pg_engine,
        "INSERT INTO change_log (seq, recorded_at, actor, action, subject, reason, plan_version, "
        "details, prev_hash, entry_hash, key_id, signature) VALUES (:seq, :recorded_at, :actor, "
        ":action, :subject, :reason, :plan_version, CAST(:details AS jsonb), :prev_hash, "
        ":entry_hash, :key_id, :signature)",
        **{**fields, "details": json.dumps(fields["details"])},
    )
    assert verify(pg_engine).ok  # the chain alone is fooled
    forge_signature(pg_engine, candidate_id, "mallory", fields["seq"])
    as_insider(pg_engine, SET_APPROVED, id=candidate_id)
    response = promote(client, candidate_id)
    assert response.status_code == 409, response.text
    assert "that the audit key did not sign" in response.json()["detail"]
    assert registry.champion == "1" and registry.moves == []
    assert logged(pg_engine, "promotion") == []
    named = verify(pg_engine, keyring(SESSION_AUDIT_KEY.public_key()))
    assert named.first_bad_seq == fields["seq"]


def test_lowering_the_number_of_approvals_by_sql_does_not_lower_the_bar(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry
) -> None:
    candidate_id = gated(pg_engine, "2")
    approve(client, candidate_id, BOB)
    lower = "UPDATE candidates SET approvals_required = 1 WHERE candidate_id = :id"
    as_insider(pg_engine, lower, id=candidate_id)
    assert_refused(promote(client, candidate_id), pg_engine, registry, "it is passed")
    as_insider(pg_engine, SET_APPROVED, id=candidate_id)
    because = "has 1 of the 2 distinct approvals"
    assert_refused(promote(client, candidate_id), pg_engine, registry, because)


def test_of_two_concurrent_promotions_of_one_model_exactly_one_wins(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry
) -> None:
    """Both gated against champion 1 and approved; the registry answers slowly, so without the
    model's lock both would read champion 1 and both would move the alias."""
    candidates = {version: gated(pg_engine, version) for version in ("2", "3")}
    for candidate_id in candidates.values():
        approve(client, candidate_id, BOB, DAVE)
    registry.read_delay_s = 0.3
    start = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def race(version: str) -> None:
        start.wait()
        answers[version] = promote(client, candidates[version])

    threads = [threading.Thread(target=race, args=(v,)) for v in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    [winner] = [v for v, r in answers.items() if r.status_code == 200]
    [loser] = [v for v, r in answers.items() if v != winner]
    assert answers[loser].status_code == 409, answers[loser].text
    detail = answers[loser].json()["detail"]
    assert detail.endswith(f"re-run the gate against champion {winner}"), detail
    assert registry.champion == winner and registry.moves == [winner]
    assert [e["previous_champion"] for e in logged(pg_engine, "promotion")] == ["1"]
    assert candidates_store.get(pg_engine, candidates[loser]).status == "approved"
    assert verify(pg_engine).ok


def test_a_gate_run_against_an_earlier_champion_must_run_again(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry
) -> None:
    first, second = gated(pg_engine, "2"), gated(pg_engine, "3")
    approve(client, first, BOB, DAVE)
    approve(client, second, BOB, DAVE)
    assert promote(client, first).status_code == 200
    stale = promote(client, second)
    assert stale.status_code == 409
    assert stale.json()["detail"].endswith("re-run the gate against champion 2")
    assert registry.champion == "2" and registry.moves == ["2"]
    assert len(logged(pg_engine, "promotion")) == 1


def promoted_in_turn(client: TestClient, engine: Engine, registry: SlowRegistry) -> None:
    """Version 2 over 1, then 3 over 2: each gated against the champion of its day."""
    for version, against in (("2", "1"), ("3", "2")):
        candidate_id = gated(engine, version, against=against)
        approve(client, candidate_id, BOB, DAVE)
        assert promote(client, candidate_id).status_code == 200
    assert registry.champion == "3"


def test_repeated_rollback_requests_undo_one_promotion(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry
) -> None:
    promoted_in_turn(client, pg_engine, registry)
    answers = [rollback(client, "3") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], answers[-1].text
    assert {a.json()["model_version"] for a in answers} == {"3"}
    assert {a.json()["status"] for a in answers} == {"rolled_back"}
    assert registry.champion == "2" and registry.moves == ["2", "3", "2"]
    [undone] = logged(pg_engine, "rollback")
    assert undone["rolled_back_version"] == "3" and undone["restored_champion"] == "2"
    assert candidates_store.find(pg_engine, MODEL, "2").status == "promoted"
    assert verify(pg_engine).ok


def test_a_rollback_naming_another_champion_changes_nothing(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry
) -> None:
    promoted_in_turn(client, pg_engine, registry)
    wrong = rollback(client, "2")
    assert wrong.status_code == 409
    assert "the champion of cxr-lesion is version 3, not 2" in wrong.json()["detail"]
    never = rollback(client, "1")
    assert never.status_code == 409 and "no promotion" in never.json()["detail"]
    assert registry.champion == "3" and registry.moves == ["2", "3"]
    assert logged(pg_engine, "rollback") == []
    assert candidates_store.find(pg_engine, MODEL, "3").status == "promoted"


def test_a_rollback_restores_only_what_the_promotion_entry_replaced(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry
) -> None:
    promoted_in_turn(client, pg_engine, registry)
    # The insider points the rollback of version 3 at a version nobody gated or approved.
    as_insider(
        pg_engine,
        "UPDATE candidates SET previous_champion = '1' WHERE model_version = '3'",
    )
    refused = rollback(client, "3")
    assert refused.status_code == 409
    assert "replaced version 2, but the candidate's row says 1" in refused.json()["detail"]
    assert registry.champion == "3" and registry.moves == ["2", "3"]
    assert logged(pg_engine, "rollback") == []
    assert candidates_store.find(pg_engine, MODEL, "3").status == "promoted"


def test_a_candidate_renamed_between_the_read_and_the_lock_is_not_promoted(
    client: TestClient, pg_engine: Engine, registry: SlowRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    candidate_id = gated(pg_engine, "2")
    approve(client, candidate_id, BOB, DAVE)
    read = candidates_store.get(pg_engine, candidate_id)  # what promote read before its lock
    as_insider(
        pg_engine,
        "UPDATE candidates SET model_name = 'other' WHERE candidate_id = :id",
        id=candidate_id,
    )
    monkeypatch.setattr(champion.store, "get", lambda *_args: read)
    assert_refused(
        promote(client, candidate_id), pg_engine, registry, "the candidate's model changed"
    )
