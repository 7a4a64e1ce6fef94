"""The PCCP candidate lifecycle as pure rules: transitions, four eyes, the approval threshold
and the meaning of a signature. No database: candidates are plain values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from pccp.lifecycle import (
    ACTIONS,
    MIN_APPROVALS,
    REJECTABLE,
    STATUSES,
    TRANSITIONS,
    Action,
    Candidate,
    CandidateStatus,
    Decision,
    FourEyesViolation,
    GateStatus,
    IllegalTransition,
    LifecycleError,
    approvals_threshold,
    check_signature,
    identity_key,
    meaning,
    normalised_subject,
    require,
    restored_champion,
    status_after_signature,
)
from pccp.plan import UpdateProcedures, load_plan
from pccp.report import GateOutcome

ROOT = Path(__file__).resolve().parents[2]

LEGAL: frozenset[tuple[CandidateStatus, Action]] = frozenset(
    {
        ("candidate", "evaluate"),
        ("passed", "approve"),
        ("approved", "promote"),
        ("promoted", "roll back"),
        ("candidate", "reject"),
        ("passed", "reject"),
        ("approved", "reject"),
    }
)
"""Written out from the lifecycle's picture, independently of ``TRANSITIONS``."""


def candidate(
    status: CandidateStatus = "passed",
    *,
    triggered_by: str | None = "carol",
    approvals_required: int | None = 2,
    previous_champion: str | None = None,
) -> Candidate:
    """A gated candidate proposed by the retrain job for a retrain carol asked for."""
    return Candidate(
        model_name="cxr-lesion",
        model_version="7",
        status=status,
        proposed_by="retrain-job",
        triggered_by=triggered_by,
        plan_id="cxr-lesion-pccp",
        plan_version="1.0.0",
        approvals_required=approvals_required,
        previous_champion=previous_champion,
    )


# -- transitions -----------------------------------------------------------------------------


def test_the_statuses_keep_the_strings_stored_in_the_database() -> None:
    assert STATUSES == (
        "candidate",
        "passed",
        "failed",
        "out_of_scope",
        "approved",
        "rejected",
        "promoted",
        "rolled_back",
    )
    assert get_args(Decision) == ("approve", "reject")


def test_the_gate_outcomes_are_exactly_where_evaluation_may_lead() -> None:
    outcomes = {outcome.value for outcome in GateOutcome}
    assert set(get_args(GateStatus)) == outcomes == set(TRANSITIONS["evaluate"].targets)


def test_every_transition_leads_where_the_lifecycle_says() -> None:
    assert {action: set(t.targets) for action, t in TRANSITIONS.items()} == {
        "evaluate": {"passed", "failed", "out_of_scope"},
        "approve": {"passed", "approved"},
        "promote": {"promoted"},
        "roll back": {"rolled_back"},
        "reject": {"rejected"},
    }
    assert REJECTABLE == ("candidate", "passed", "approved")


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("action", ACTIONS)
def test_exactly_the_legal_transitions_are_allowed(status: CandidateStatus, action: Action) -> None:
    if (status, action) in LEGAL:
        require(candidate(status), action)
        return
    with pytest.raises(IllegalTransition) as refused:
        require(candidate(status), action)
    assert str(refused.value) == f"cannot {action} cxr-lesion version 7: it is {status}"


def test_failed_out_of_scope_rejected_and_rolled_back_are_final() -> None:
    final = {s for s in STATUSES if not any((s, action) in LEGAL for action in ACTIONS)}
    assert final == {"failed", "out_of_scope", "rejected", "rolled_back"}


def test_the_lifecycle_refusals_are_its_own_errors_not_the_services() -> None:
    assert issubclass(IllegalTransition, LifecycleError)
    assert issubclass(FourEyesViolation, LifecycleError)
    assert not issubclass(IllegalTransition, ValueError | PermissionError)
    assert not issubclass(FourEyesViolation, ValueError | PermissionError)


# -- four eyes -------------------------------------------------------------------------------


def test_the_proposer_may_not_approve() -> None:
    with pytest.raises(FourEyesViolation) as refused:
        check_signature(candidate(), "retrain-job", "approve", signers=())
    assert str(refused.value) == "retrain-job proposed this candidate and may not approve it"


def test_whoever_triggered_the_retrain_may_not_approve_its_result() -> None:
    with pytest.raises(FourEyesViolation) as refused:
        check_signature(candidate(), "carol", "approve", signers=())
    assert str(refused.value) == "carol triggered the retrain and may not approve its result"


@pytest.mark.parametrize("decision", get_args(Decision))
def test_nobody_signs_twice_whatever_they_decide(decision: Decision) -> None:
    with pytest.raises(FourEyesViolation) as refused:
        check_signature(candidate(), "alice", decision, signers={"alice"})
    assert str(refused.value) == "alice has already signed this candidate"


def test_a_repeat_signature_is_refused_before_the_status_is_looked_at() -> None:
    with pytest.raises(FourEyesViolation, match="already signed"):
        check_signature(candidate("rejected"), "alice", "approve", signers={"alice"})


def test_the_status_is_checked_before_who_the_approver_is() -> None:
    with pytest.raises(
        IllegalTransition, match="cannot approve cxr-lesion version 7: it is candidate"
    ):
        check_signature(candidate("candidate"), "retrain-job", "approve", signers=())


def test_a_distinct_third_person_may_approve() -> None:
    check_signature(candidate(), "bob", "approve", signers={"alice"})


def test_without_a_recorded_trigger_anyone_but_the_proposer_may_approve() -> None:
    untriggered = candidate(triggered_by=None)
    check_signature(untriggered, "carol", "approve", signers=())
    with pytest.raises(FourEyesViolation, match="proposed this candidate"):
        check_signature(untriggered, "retrain-job", "approve", signers=())


@pytest.mark.parametrize("signer", ["retrain-job", "carol"])
def test_the_proposer_and_the_trigger_may_reject(signer: str) -> None:
    check_signature(candidate(), signer, "reject", signers=())


@pytest.mark.parametrize("status", [s for s in STATUSES if s not in REJECTABLE])
def test_a_rejection_is_refused_once_the_candidate_is_past_rejecting(
    status: CandidateStatus,
) -> None:
    with pytest.raises(
        IllegalTransition, match=f"cannot reject cxr-lesion version 7: it is {status}"
    ):
        check_signature(candidate(status), "alice", "reject", signers=())


# -- the approval threshold ------------------------------------------------------------------


def test_the_threshold_is_the_plans_number() -> None:
    plan = load_plan(ROOT / "pccp" / "plans" / "cxr-lesion.yaml")
    required = plan.protocol.update_procedures.approvals_required
    assert approvals_threshold(required) == required
    assert approvals_threshold(3) == 3


def test_without_a_recorded_number_the_threshold_is_the_plans_minimum_of_two() -> None:
    assert approvals_threshold(None) == MIN_APPROVALS == 2


def test_the_minimum_is_what_a_plan_may_require_at_least() -> None:
    fields = {"rollout": "canary", "rollback": "restore the alias"}
    UpdateProcedures(approvals_required=MIN_APPROVALS, **fields)
    with pytest.raises(ValidationError):
        UpdateProcedures(approvals_required=MIN_APPROVALS - 1, **fields)


@pytest.mark.parametrize(("required", "threshold"), [(None, 2), (2, 2), (3, 3)])
def test_a_candidate_becomes_approved_exactly_at_the_threshold(
    required: int | None, threshold: int
) -> None:
    gated = candidate(approvals_required=required)
    approvers = [f"approver-{n}" for n in range(threshold)]
    for count in range(1, threshold):
        assert status_after_signature(gated, "approve", approvers[:count]) == "passed"
    assert status_after_signature(gated, "approve", approvers) == "approved"


def test_only_distinct_approvers_count_towards_the_threshold() -> None:
    assert status_after_signature(candidate(), "approve", ["alice", "alice"]) == "passed"


@pytest.mark.parametrize("status", REJECTABLE)
def test_a_rejection_rejects_whatever_the_approvals(status: CandidateStatus) -> None:
    assert status_after_signature(candidate(status), "reject", ["alice", "bob"]) == "rejected"


# -- meaning, rollback -----------------------------------------------------------------------


def test_an_approval_means_the_model_version_and_plan_it_names() -> None:
    assert meaning(candidate(), "approve") == (
        "I approve cxr-lesion version 7 for promotion to champion under PCCP cxr-lesion-pccp "
        "version 1.0.0, having reviewed its acceptance-gate evidence."
    )


def test_a_rejection_means_the_version_is_not_to_be_promoted() -> None:
    assert meaning(candidate(), "reject") == (
        "I reject cxr-lesion version 7: it is not to be promoted."
    )


def test_a_rollback_restores_the_champion_the_promotion_replaced() -> None:
    assert restored_champion(candidate("promoted", previous_champion="6")) == "6"


def test_a_promotion_that_replaced_no_champion_cannot_be_rolled_back() -> None:
    with pytest.raises(IllegalTransition) as refused:
        restored_champion(candidate("promoted"))
    assert str(refused.value) == "cxr-lesion version 7 replaced no champion: nothing to restore"


def test_only_a_promoted_candidate_can_be_rolled_back() -> None:
    with pytest.raises(
        IllegalTransition, match="cannot roll back cxr-lesion version 7: it is approved"
    ):
        restored_champion(candidate("approved", previous_champion="6"))


# -- purity ----------------------------------------------------------------------------------


def test_importing_the_lifecycle_loads_no_database_web_or_registry_code() -> None:
    probe = (
        "import sys, pccp.lifecycle; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
        "{'sqlalchemy', 'fastapi', 'mlflow', 'psycopg', 'kafka'} "
        "or m.startswith('monitor.service')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.split() == []


# -- identities ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        ("alice", "alice"),
        ("  alice\t", "alice"),
        ("ａｌｉｃｅ", "alice"),  # fullwidth compatibility forms
        ("Ｄｒ. Müller", "Dr. Müller"),
        ("ﬁona", "fiona"),  # a ligature
    ],
)
def test_an_identity_is_recorded_in_nfkc_without_surrounding_space(
    given: str, recorded: str
) -> None:
    assert normalised_subject(given) == recorded


@pytest.mark.parametrize(
    "unreadable",
    ["", "   ", "\t\n", "al\x00ice", "alice\x07", "al\u200bice", "\u202ealice", "a\u2028b"],
)
def test_a_blank_or_unreadable_identity_is_refused(unreadable: str) -> None:
    with pytest.raises(ValueError, match="identity"):
        normalised_subject(unreadable)


def test_identities_that_differ_in_case_space_or_width_are_one_person() -> None:
    assert identity_key("alice") == identity_key("Alice ") == identity_key("ＡＬＩＣＥ")
    assert identity_key("alice") != identity_key("alicia")


@pytest.mark.parametrize("twin", ["Retrain-Job", " retrain-job", "ＲＥＴＲＡＩＮ-ＪＯＢ"])
def test_the_proposer_may_not_approve_under_a_twin_spelling(twin: str) -> None:
    with pytest.raises(FourEyesViolation, match="proposed"):
        check_signature(candidate(), twin, "approve", signers=())


@pytest.mark.parametrize("twin", ["Carol", "carol ", "CAROL"])
def test_the_retrain_trigger_may_not_approve_under_a_twin_spelling(twin: str) -> None:
    with pytest.raises(FourEyesViolation, match="triggered"):
        check_signature(candidate(), twin, "approve", signers=())


def test_a_signer_may_not_sign_twice_under_a_twin_spelling() -> None:
    with pytest.raises(FourEyesViolation, match="already signed"):
        check_signature(candidate(), "Bob ", "approve", signers={"bob"})


def test_twin_spellings_of_one_approver_count_once() -> None:
    assert status_after_signature(candidate(), "approve", ["bob", "BOB", " bob"]) == "passed"
    assert status_after_signature(candidate(), "approve", ["bob", "dave"]) == "approved"


@pytest.mark.parametrize("lowered", [0, 1])
def test_a_threshold_below_four_eyes_counts_as_four_eyes(lowered: int) -> None:
    assert approvals_threshold(lowered) == MIN_APPROVALS
    assert (
        status_after_signature(candidate(approvals_required=lowered), "approve", ["bob"])
        == "passed"
    )
