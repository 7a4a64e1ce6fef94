"""What a promotion re-verifies before the champion moves, as rules on values: the candidate's
claims, the change-log entries about it and its signatures in; the verified facts, or a refusal
that says which check failed, out. No database, no registry: the service
(``monitor.service.pccp.champion``) locks the model, reads the values, asks :func:`verify` and
:func:`replaced_champion`, and moves the alias.

Why from first principles: a candidate's ``status`` column, like every row, says only what its
last writer set, and anyone holding the service's database credentials is such a writer. The
change log is append-only and hash-chained, so promotion decides from its entries instead:

- **The gate.** The newest ``gate.result`` entry of this candidate must hash-check, say
  ``passed``, name the plan (id, version, fingerprint) the candidate claims, and record the
  digest of the evidence report that is stored (:func:`evidence_sha256`).
- **Four eyes.** Every approval signature must cite an intact ``approval`` entry by the same
  person about this candidate under the same plan version; no signer may be the proposer or the
  retrain's trigger; the distinct approvers must reach the number the gate entry recorded (never
  fewer than :data:`pccp.plan.MIN_APPROVALS`). A rejection anywhere refuses.
- **The champion.** It must still be the version the gate compared against: a candidate gated
  against version 1 does not replace version 13 (:func:`replaced_champion`).

Identities are compared as the four-eyes rule compares them (:func:`pccp.lifecycle.identity_key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pccp.lifecycle import identity_key
from pccp.plan import MIN_APPROVALS

__all__ = [
    "Claim",
    "LoggedEntry",
    "PromotionRefused",
    "Signature",
    "StaleGate",
    "Verified",
    "evidence_sha256",
    "replaced_champion",
    "verify",
]


class PromotionRefused(Exception):
    """A check a promotion re-runs failed; the message says which."""


class StaleGate(PromotionRefused):
    """The champion is no longer the version the gate compared the candidate against."""


def evidence_sha256(report: Mapping[str, Any]) -> str:
    """SHA-256 of a gate report's canonical JSON (sorted keys, compact): the gate records it in
    its ``gate.result`` entry, and promotion recomputes it from the stored report."""
    document = json.dumps(report, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class LoggedEntry:
    """A change-log entry about the candidate's version, as promotion needs it."""

    seq: int
    action: str
    actor: str
    plan_version: str | None
    details: Mapping[str, Any]
    intact: bool
    """Its ``entry_hash`` recomputes from its ``prev_hash`` and fields, and a trusted audit key
    signed it (or it is history from before entries were signed): no row inserted with
    database credentials alone is intact."""


@dataclass(frozen=True, slots=True)
class Signature:
    """A signature row: who, which decision, and the change-log entry it cites."""

    signer: str
    decision: str
    change_log_seq: int


@dataclass(frozen=True, slots=True)
class Claim:
    """What the candidate's row claims (none of it trusted on its own)."""

    candidate_id: str
    model_name: str
    model_version: str
    proposed_by: str
    triggered_by: str | None
    plan_id: str | None
    plan_version: str | None
    plan_fingerprint: str | None
    report: Mapping[str, Any] | None

    @property
    def name(self) -> str:
        return f"{self.model_name} version {self.model_version}"


@dataclass(frozen=True, slots=True)
class Verified:
    """What the checks established, for the ``promotion`` entry to cite."""

    gate_seq: int
    gated_against: str | None
    """The champion the gate compared the candidate against."""
    evidence_sha256: str
    approvers: tuple[str, ...]
    approval_seqs: tuple[int, ...]


def verify(
    claim: Claim, entries: Sequence[LoggedEntry], signatures: Sequence[Signature]
) -> Verified:
    """Check the gate entry, the evidence and the approvals of ``claim``; ``entries``: the
    change log's entries about its version; ``signatures``: its signature rows, in order.
    Raises :class:`PromotionRefused` naming the first check that fails."""
    about = [e for e in entries if e.details.get("candidate_id") == claim.candidate_id]
    gate = _gate_entry(claim, about)
    digest = _evidence(claim, gate)
    for entry in about:
        if entry.action == "rejection":
            raise PromotionRefused(f"{entry.actor} rejected {claim.name} (change-log #{entry.seq})")
    approvals = _approvals(claim, gate, {e.seq: e for e in about}, signatures)
    return Verified(
        gate_seq=gate.seq,
        gated_against=_text(gate.details.get("champion_version")),
        evidence_sha256=digest,
        approvers=tuple(s.signer for s in approvals),
        approval_seqs=tuple(s.change_log_seq for s in approvals),
    )


def replaced_champion(verified: Verified, current: str | None, claim: Claim) -> str | None:
    """The champion this promotion replaces: ``current``, which must be the version the gate
    compared against (:class:`StaleGate` otherwise). A ``current`` that is already the
    candidate is a retry after a commit that failed once the alias had moved: the version the
    gate compared against is the one replaced."""
    if current == claim.model_version:
        return verified.gated_against
    if current != verified.gated_against:
        compared = f"the gate compared {claim.name} against version {verified.gated_against}"
        if current is None:
            raise StaleGate(f"{claim.model_name} has no champion, but {compared}")
        raise StaleGate(
            f"{claim.model_name}'s champion is version {current}, but {compared}: "
            f"re-run the gate against champion {current}"
        )
    return current


def _gate_entry(claim: Claim, about: Sequence[LoggedEntry]) -> LoggedEntry:
    gates = [e for e in about if e.action == "gate.result"]
    if not gates:
        raise PromotionRefused(f"the change log holds no gate.result entry for {claim.name}")
    gate = max(gates, key=lambda e: e.seq)
    if not gate.intact:
        raise PromotionRefused(f"gate.result entry #{gate.seq} does not match its hash")
    outcome = gate.details.get("outcome")
    if outcome != "passed":
        raise PromotionRefused(
            f"gate.result entry #{gate.seq} records the outcome {outcome!r} for {claim.name}, "
            "not 'passed'"
        )
    logged = (gate.details.get("plan_id"), gate.plan_version, gate.details.get("plan_fingerprint"))
    if logged != (claim.plan_id, claim.plan_version, claim.plan_fingerprint):
        raise PromotionRefused(
            f"the candidate's plan is not the one gate.result entry #{gate.seq} records "
            f"({logged[0]} version {logged[1]})"
        )
    return gate


def _evidence(claim: Claim, gate: LoggedEntry) -> str:
    recorded = gate.details.get("evidence_sha256")
    if not isinstance(recorded, str):
        raise PromotionRefused(f"gate.result entry #{gate.seq} records no evidence digest")
    if claim.report is None or evidence_sha256(claim.report) != recorded:
        raise PromotionRefused(
            f"the stored evidence of {claim.name} does not match the digest in gate.result "
            f"entry #{gate.seq}"
        )
    return recorded


def _approvals(
    claim: Claim,
    gate: LoggedEntry,
    by_seq: Mapping[int, LoggedEntry],
    signatures: Sequence[Signature],
) -> list[Signature]:
    """The approval signatures, each backed by its entry and allowed by four eyes; refused
    unless they are enough."""
    excluded = {identity_key(claim.proposed_by)}
    if claim.triggered_by is not None:
        excluded.add(identity_key(claim.triggered_by))
    for signature in signatures:
        if signature.decision != "approve":
            raise PromotionRefused(
                f"{signature.signer} signed {claim.name} {signature.decision!r}, not 'approve'"
            )
        _check_backed(signature, by_seq.get(signature.change_log_seq), gate)
        if identity_key(signature.signer) in excluded:
            raise PromotionRefused(
                f"{signature.signer} proposed {claim.name} or triggered its retrain and may "
                "not approve it"
            )
    required = max(_count(gate.details.get("approvals_required")) or 0, MIN_APPROVALS)
    distinct = {identity_key(s.signer) for s in signatures}
    if len(distinct) < required:
        raise PromotionRefused(
            f"{claim.name} has {len(distinct)} of the {required} distinct approvals "
            f"gate.result entry #{gate.seq} requires"
        )
    return list(signatures)


def _check_backed(signature: Signature, entry: LoggedEntry | None, gate: LoggedEntry) -> None:
    """Refuse an approval signature its change-log entry does not back."""
    problem = None
    if entry is None:
        problem = "no entry about this candidate"
    elif entry.action != "approval":
        problem = f"a {entry.action} entry"
    elif identity_key(entry.actor) != identity_key(signature.signer):
        problem = f"signed by {entry.actor}"
    elif entry.plan_version != gate.plan_version:
        problem = f"under plan version {entry.plan_version}"
    elif not entry.intact:
        problem = "an entry that does not match its hash or that the audit key did not sign"
    if problem is not None:
        raise PromotionRefused(
            f"the approval signed by {signature.signer} cites change-log #"
            f"{signature.change_log_seq}: {problem}"
        )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return None if value is None else str(value)
