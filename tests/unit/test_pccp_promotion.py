"""What a promotion re-verifies (pccp/promotion.py), on values: the gate entry, the evidence
digest, every approval against its change-log entry, four eyes, the number of approvers, and the
champion the gate compared against. Each check refuses on its own, with a reason that names it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pccp.promotion import (
    Claim,
    LoggedEntry,
    PromotionRefused,
    Signature,
    StaleGate,
    Verified,
    evidence_sha256,
    replaced_champion,
    verify,
)

CANDIDATE = "7c1f0c9e-0000-4000-8000-000000000001"
REPORT: dict[str, Any] = {
    "plan_id": "cxr-lesion-pccp",
    "criteria": [{"id": "PE-1", "passed": True, "auroc": 0.91}],
    "locked_test_sha256": "a" * 64,
}


def claim(**overrides: Any) -> Claim:
    values: dict[str, Any] = {
        "candidate_id": CANDIDATE,
        "model_name": "cxr-lesion",
        "model_version": "2",
        "proposed_by": "retrain-job",
        "triggered_by": "carol",
        "plan_id": "cxr-lesion-pccp",
        "plan_version": "1.0.0",
        "plan_fingerprint": "f" * 64,
        "report": REPORT,
    }
    return Claim(**(values | overrides))


def gate_entry(seq: int = 2, intact: bool = True, **details: Any) -> LoggedEntry:
    recorded: dict[str, Any] = {
        "candidate_id": CANDIDATE,
        "outcome": "passed",
        "plan_id": "cxr-lesion-pccp",
        "plan_fingerprint": "f" * 64,
        "champion_version": "1",
        "evidence_sha256": evidence_sha256(REPORT),
        "approvals_required": 2,
    }
    return LoggedEntry(seq, "gate.result", "pccp-gate", "1.0.0", recorded | details, intact)


def approval(seq: int, actor: str, intact: bool = True, **overrides: Any) -> LoggedEntry:
    entry = LoggedEntry(seq, "approval", actor, "1.0.0", {"candidate_id": CANDIDATE}, intact)
    return dataclasses.replace(entry, **overrides)


ENTRIES = [gate_entry(), approval(3, "alice"), approval(4, "bob")]
SIGNATURES = [Signature("alice", "approve", 3), Signature("bob", "approve", 4)]


def refusal(
    entries: list[LoggedEntry] = ENTRIES,
    signatures: list[Signature] = SIGNATURES,
    /,
    **claimed: Any,
) -> str:
    with pytest.raises(PromotionRefused) as refused:
        verify(claim(**claimed), entries, signatures)
    return str(refused.value)


def test_a_candidate_the_log_backs_is_verified_with_what_it_was_verified_against() -> None:
    verified = verify(claim(), ENTRIES, SIGNATURES)
    assert verified == Verified(
        gate_seq=2,
        gated_against="1",
        evidence_sha256=evidence_sha256(REPORT),
        approvers=("alice", "bob"),
        approval_seqs=(3, 4),
    )


def test_the_evidence_digest_follows_the_content_not_the_key_order() -> None:
    reordered = dict(reversed(list(REPORT.items())))
    assert evidence_sha256(reordered) == evidence_sha256(REPORT)
    changed = REPORT | {"criteria": [{"id": "PE-1", "passed": True, "auroc": 0.92}]}
    assert evidence_sha256(changed) != evidence_sha256(REPORT)


# -- the gate entry -------------------------------------------------------------------------


def test_without_a_gate_entry_of_this_candidate_nothing_is_promoted() -> None:
    assert "no gate.result entry" in refusal(ENTRIES[1:])
    other = gate_entry(candidate_id="another-candidate")
    assert "no gate.result entry" in refusal([other, *ENTRIES[1:]])


def test_a_gate_entry_that_does_not_hash_check_refuses() -> None:
    assert "does not match its hash" in refusal([gate_entry(intact=False), *ENTRIES[1:]])


@pytest.mark.parametrize("outcome", ["failed", "out_of_scope", None])
def test_a_gate_outcome_other_than_passed_refuses(outcome: str | None) -> None:
    message = refusal([gate_entry(outcome=outcome), *ENTRIES[1:]])
    assert f"outcome {outcome!r}" in message and "not 'passed'" in message


def test_the_newest_gate_entry_decides() -> None:
    entries = [gate_entry(seq=2), *ENTRIES[1:], gate_entry(seq=9, outcome="failed")]
    assert "#9" in refusal(entries)


@pytest.mark.parametrize(
    "claimed",
    [{"plan_version": "1.1.0"}, {"plan_id": "other"}, {"plan_fingerprint": "e" * 64}],
    ids=["version", "id", "fingerprint"],
)
def test_a_candidate_claiming_another_plan_than_its_gate_entry_refuses(
    claimed: dict[str, str],
) -> None:
    assert "plan is not the one gate.result entry #2 records" in refusal(**claimed)


# -- the evidence ---------------------------------------------------------------------------


def test_evidence_changed_after_the_gate_refuses() -> None:
    edited = REPORT | {"criteria": [{"id": "PE-1", "passed": True, "auroc": 0.99}]}
    assert "does not match the digest" in refusal(report=edited)
    assert "does not match the digest" in refusal(report=None)


def test_a_gate_entry_without_a_digest_refuses() -> None:
    assert "no evidence digest" in refusal([gate_entry(evidence_sha256=None), *ENTRIES[1:]])


# -- approvals ------------------------------------------------------------------------------


def test_an_approval_without_its_entry_refuses() -> None:
    forged = [*SIGNATURES, Signature("erin", "approve", 99)]
    assert "erin cites change-log #99: no entry about this candidate" in refusal(ENTRIES, forged)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (approval(4, "bob", action="candidate.proposed"), "a candidate.proposed entry"),
        (approval(4, "mallory"), "signed by mallory"),
        (approval(4, "bob", plan_version="0.9.0"), "under plan version 0.9.0"),
        (approval(4, "bob", intact=False), "does not match its hash"),
    ],
    ids=["action", "actor", "plan", "hash"],
)
def test_an_approval_its_entry_does_not_back_refuses(entry: LoggedEntry, problem: str) -> None:
    message = refusal([*ENTRIES[:2], entry])
    assert "approval signed by bob cites change-log #4" in message and problem in message


def test_an_approval_entry_about_another_candidate_backs_nothing() -> None:
    elsewhere = approval(4, "bob", details={"candidate_id": "another-candidate"})
    assert "no entry about this candidate" in refusal([*ENTRIES[:2], elsewhere])


@pytest.mark.parametrize("who", ["retrain-job", "Carol "], ids=["proposer", "trigger"])
def test_the_proposer_and_the_trigger_do_not_count_whatever_their_spelling(who: str) -> None:
    entries = [*ENTRIES[:2], approval(4, who)]
    signatures = [SIGNATURES[0], Signature(who, "approve", 4)]
    assert "may not approve it" in refusal(entries, signatures)


def test_one_approval_of_two_refuses() -> None:
    message = refusal(ENTRIES[:2], SIGNATURES[:1])
    assert "has 1 of the 2 distinct approvals gate.result entry #2 requires" in message


def test_one_person_counts_once_whatever_the_spelling() -> None:
    entries = [*ENTRIES[:2], approval(4, "ALICE")]
    signatures = [SIGNATURES[0], Signature("ALICE", "approve", 4)]
    assert "has 1 of the 2" in refusal(entries, signatures)


@pytest.mark.parametrize(("recorded", "required"), [(1, 2), (0, 2), (None, 2), ("3", 2), (3, 3)])
def test_the_gate_entrys_number_of_approvals_counts_never_below_two(
    recorded: object, required: int
) -> None:
    entries = [gate_entry(approvals_required=recorded), *ENTRIES[1:2]]
    assert f"has 1 of the {required}" in refusal(entries, SIGNATURES[:1])


def test_a_rejection_anywhere_refuses() -> None:
    rejected = LoggedEntry(5, "rejection", "erin", "1.0.0", {"candidate_id": CANDIDATE}, True)
    assert "erin rejected cxr-lesion version 2 (change-log #5)" in refusal([*ENTRIES, rejected])
    signed = [*SIGNATURES, Signature("erin", "reject", 5)]
    assert "erin signed cxr-lesion version 2 'reject', not 'approve'" in refusal(ENTRIES, signed)


# -- the champion ---------------------------------------------------------------------------


def test_the_champion_the_gate_compared_against_is_replaced() -> None:
    verified = verify(claim(), ENTRIES, SIGNATURES)
    assert replaced_champion(verified, "1", claim()) == "1"


def test_another_champion_asks_for_the_gate_again() -> None:
    verified = verify(claim(), ENTRIES, SIGNATURES)
    with pytest.raises(StaleGate, match=r"version 13, .* re-run the gate against champion 13$"):
        replaced_champion(verified, "13", claim())
    with pytest.raises(StaleGate, match="cxr-lesion has no champion"):
        replaced_champion(verified, None, claim())


def test_a_retry_after_the_alias_moved_records_the_champion_the_gate_compared_against() -> None:
    verified = verify(claim(), ENTRIES, SIGNATURES)
    assert replaced_champion(verified, "2", claim()) == "1"
