"""The PCCP lifecycle of a candidate model: gate outcome, signatures, promotion, as rules on
values. No database, no registry: the service's store locks the row, asks these functions, and
writes what they decide.

A registered version becomes a candidate when the retraining job (or a person) proposes it.
From there only these transitions are legal (:data:`TRANSITIONS`)::

    candidate --gate--> passed | failed | out_of_scope
    passed --approvals--> approved --promote--> promoted --rollback--> rolled_back
    candidate | passed | approved --reject--> rejected

**Four eyes.** A candidate is approved once ``approvals_required`` distinct people (the plan's
number, at least :data:`MIN_APPROVALS`) have signed "approve". A signer may be neither the
proposer nor the identity that triggered the retrain, and signs once (:func:`check_signature`).
A signature is an electronic signature in the sense of 21 CFR 11.50: signer, time, the meaning
of the signature (a fixed sentence naming the model, version and plan: :func:`meaning`) and the
signer's reason; it cites its change-log entry.

**Rollback** restores the champion a promotion replaced, so a promotion that replaced none
cannot be rolled back (:func:`restored_champion`).

The statuses are stored in the database as these exact strings.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, get_args

from pccp.plan import MIN_APPROVALS

_UNREADABLE: Final = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})
"""Unicode categories no identity may hold: control, format (zero-width), private use,
surrogates, unassigned, line and paragraph separators."""

__all__ = [
    "ACTIONS",
    "MIN_APPROVALS",
    "REJECTABLE",
    "STATUSES",
    "TRANSITIONS",
    "Action",
    "Candidate",
    "CandidateStatus",
    "Decision",
    "FourEyesViolation",
    "GateStatus",
    "IllegalTransition",
    "LifecycleError",
    "Transition",
    "approvals_threshold",
    "check_signature",
    "identity_key",
    "meaning",
    "normalised_subject",
    "require",
    "restored_champion",
    "status_after_signature",
]

CandidateStatus = Literal[
    "candidate",
    "passed",
    "failed",
    "out_of_scope",
    "approved",
    "rejected",
    "promoted",
    "rolled_back",
]
GateStatus = Literal["passed", "failed", "out_of_scope"]
"""The gate's outcomes (``pccp.report.GateOutcome``'s values)."""
Decision = Literal["approve", "reject"]
Action = Literal["evaluate", "approve", "reject", "promote", "roll back"]
"""What is done to a candidate, as the refusal message says it ("cannot roll back ...")."""

STATUSES: Final[tuple[CandidateStatus, ...]] = get_args(CandidateStatus)
ACTIONS: Final[tuple[Action, ...]] = get_args(Action)


class LifecycleError(Exception):
    """Base of the lifecycle's refusals."""


class IllegalTransition(LifecycleError):
    """An action the candidate's status does not allow."""


class FourEyesViolation(LifecycleError):
    """A signature the four-eyes rule forbids (the proposer, the retrain's trigger, twice)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """The statuses an action may start from, and those it may lead to."""

    sources: tuple[CandidateStatus, ...]
    targets: tuple[CandidateStatus, ...]


TRANSITIONS: Final[Mapping[Action, Transition]] = MappingProxyType(
    {
        "evaluate": Transition(("candidate",), ("passed", "failed", "out_of_scope")),
        # an approval short of the threshold leaves the candidate passed
        "approve": Transition(("passed",), ("passed", "approved")),
        "promote": Transition(("approved",), ("promoted",)),
        "roll back": Transition(("promoted",), ("rolled_back",)),
        "reject": Transition(("candidate", "passed", "approved"), ("rejected",)),
    }
)
REJECTABLE: Final[tuple[CandidateStatus, ...]] = TRANSITIONS["reject"].sources


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the rules need to know of a candidate (the store builds it from its row).

    ``plan_id``, ``plan_version`` and ``approvals_required`` are set when the gate evaluates
    it; ``previous_champion`` when it is promoted.
    """

    model_name: str
    model_version: str
    status: CandidateStatus
    proposed_by: str
    triggered_by: str | None = None
    plan_id: str | None = None
    plan_version: str | None = None
    approvals_required: int | None = None
    previous_champion: str | None = None


def require(candidate: Candidate, action: Action) -> None:
    """Refuse ``action`` with :class:`IllegalTransition` unless the candidate's status allows
    it."""
    if candidate.status not in TRANSITIONS[action].sources:
        raise IllegalTransition(
            f"cannot {action} {candidate.model_name} version {candidate.model_version}: "
            f"it is {candidate.status}"
        )


def normalised_subject(subject: str) -> str:
    """An identity as it is recorded: Unicode NFKC (so look-alike compatibility forms become
    one), surrounding white space removed. Raises ``ValueError`` for one that is blank or holds
    control or invisible formatting characters (a signer nobody could read off a record)."""
    normal = unicodedata.normalize("NFKC", subject).strip()
    if not normal:
        raise ValueError("an identity may not be blank")
    if any(unicodedata.category(char) in _UNREADABLE for char in normal):
        raise ValueError("an identity may not hold control or formatting characters")
    return normal


def identity_key(subject: str) -> str:
    """What two identities are compared by: NFKC, trimmed, case-folded. ``alice``,
    ``Alice`` and ``alice `` are one person to the four-eyes rule."""
    return unicodedata.normalize("NFKC", subject).strip().casefold()


def check_signature(
    candidate: Candidate, signer: str, decision: Decision, signers: Collection[str]
) -> None:
    """Refuse a signature the rules forbid; ``signers``: who has signed the candidate so far.

    In this order: a second signature by anyone (:class:`FourEyesViolation`), a decision the
    status does not allow (:class:`IllegalTransition`), then for an approval the proposer and
    the retrain's trigger (:class:`FourEyesViolation`). Only approvals need other eyes: the
    proposer and the trigger may reject. Identities are compared by :func:`identity_key`.
    """
    who = identity_key(signer)
    if who in {identity_key(name) for name in signers}:
        raise FourEyesViolation(f"{signer} has already signed this candidate")
    require(candidate, decision)
    if decision == "reject":
        return
    if who == identity_key(candidate.proposed_by):
        raise FourEyesViolation(f"{signer} proposed this candidate and may not approve it")
    if candidate.triggered_by is not None and who == identity_key(candidate.triggered_by):
        raise FourEyesViolation(f"{signer} triggered the retrain and may not approve its result")


def approvals_threshold(approvals_required: int | None) -> int:
    """How many distinct approvals make a candidate approved: the plan's number, never fewer
    than :data:`MIN_APPROVALS` (a number lowered by editing a row does not count)."""
    return max(approvals_required or MIN_APPROVALS, MIN_APPROVALS)


def status_after_signature(
    candidate: Candidate, decision: Decision, approvers: Collection[str]
) -> CandidateStatus:
    """The status once an accepted signature is recorded; ``approvers``: everyone who has
    signed "approve", this signature included.

    A rejection rejects. An approval leaves the status as it is until the distinct approvers
    reach :func:`approvals_threshold`, and then approves.
    """
    if decision == "reject":
        return "rejected"
    distinct = {identity_key(name) for name in approvers}
    if len(distinct) >= approvals_threshold(candidate.approvals_required):
        return "approved"
    return candidate.status


def meaning(candidate: Candidate, decision: Decision) -> str:
    """The fixed sentence a signature means (what the signer attests)."""
    name = f"{candidate.model_name} version {candidate.model_version}"
    if decision == "approve":
        plan = f"PCCP {candidate.plan_id} version {candidate.plan_version}"
        return (
            f"I approve {name} for promotion to champion under {plan}, having reviewed its "
            "acceptance-gate evidence."
        )
    return f"I reject {name}: it is not to be promoted."


def restored_champion(candidate: Candidate) -> str:
    """The version a rollback of this promoted candidate makes champion again; a promotion
    that replaced no champion cannot be rolled back (:class:`IllegalTransition`)."""
    require(candidate, "roll back")
    if candidate.previous_champion is None:
        raise IllegalTransition(
            f"{candidate.model_name} version {candidate.model_version} replaced no champion: "
            "nothing to restore"
        )
    return candidate.previous_champion
