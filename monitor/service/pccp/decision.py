"""A candidate's decision record, read from the change log: what the evidence page and
``GET /candidates/{id}`` show of what was decided since the gate ran.

Every entry about the candidate's version (subject ``<model>/version/<n>``) with one of
:data:`HISTORY_ACTIONS` becomes one line of its history, in sequence order, with whether its
hash recomputes and a trusted audit key signed it. The signatures, the promotion and the
rollback are taken from those entries, not from the candidates table, so what a signer reads
is what an auditor verifies with ``radsentry audit verify``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Engine

from monitor.service.audit import keys
from monitor.service.audit import store as change_log
from monitor.service.db import as_utc
from monitor.service.models import CandidateRow, ChangeLogRow
from monitor.service.pccp import store
from pccp.evidence import DecisionRecord, HistoryEntry, Signature

HISTORY_ACTIONS: Final = (
    "training.run",
    "candidate.proposed",
    "gate.result",
    "approval",
    "rejection",
    "promotion",
    "rollback",
)
VERIFY_COMMAND: Final = "radsentry audit verify"


def decision_record(engine: Engine, row: CandidateRow) -> DecisionRecord:
    """The candidate's decision record as of now (see the module docstring)."""
    subject = store.subject_of(row.model_name, row.model_version)
    with engine.connect() as connection:
        entries = change_log.about(connection, subject, HISTORY_ACTIONS)
        unsigned = change_log.unsigned_through(connection)
    trusted = keys.process_keyring()
    history = [
        HistoryEntry(
            seq=entry.seq,
            recorded_at=as_utc(entry.recorded_at),
            action=entry.action,
            actor=entry.actor,
            sentence=_sentence(entry),
            entry_hash=entry.entry_hash,
            authentic=change_log.authentic(entry, trusted, unsigned),
        )
        for entry in entries
    ]
    promotions = [e for e in entries if e.action == "promotion"]
    rollbacks = [e for e in entries if e.action == "rollback"]
    return DecisionRecord(
        as_of=datetime.now(UTC),
        status=row.status,
        approvals_required=row.approvals_required,
        signatures=[_signature(e) for e in entries if e.action in ("approval", "rejection")],
        promoted_at=as_utc(promotions[-1].recorded_at) if promotions else None,
        promoted_by=promotions[-1].actor if promotions else None,
        previous_champion=_text(promotions[-1].details, "previous_champion")
        if promotions
        else None,
        rolled_back_at=as_utc(rollbacks[-1].recorded_at) if rollbacks else None,
        rolled_back_by=rollbacks[-1].actor if rollbacks else None,
        subject=subject,
        history=history,
        verify_command=VERIFY_COMMAND,
    )


def _text(details: dict[str, Any], key: str) -> str | None:
    value = details.get(key)
    return None if value is None else str(value)


def _signature(entry: ChangeLogRow) -> Signature:
    details = entry.details
    signed_at = details.get("signed_at")
    return Signature(
        signer=entry.actor,
        signer_name=_text(details, "signer_name"),
        decision="approve" if entry.action == "approval" else "reject",
        meaning=str(details.get("meaning", "")),
        reason=entry.reason or "",
        signed_at=as_utc(datetime.fromisoformat(signed_at))
        if isinstance(signed_at, str)
        else as_utc(entry.recorded_at),
        change_log_seq=entry.seq,
    )


def _sentence(entry: ChangeLogRow) -> str:
    """One line for people about one entry."""
    details, reason = entry.details, f": {entry.reason}" if entry.reason else ""
    match entry.action:
        case "training.run":
            return f"trained by the retraining job (request {details.get('request_id')}){reason}"
        case "candidate.proposed":
            return f"put under change control by {entry.actor}{reason}"
        case "gate.result":
            failed = sorted(c for c, r in (details.get("criteria") or {}).items() if r == "fail")
            outcome = str(details.get("outcome", "?")).replace("_", " ")
            against = f" against champion {details.get('champion_version')}"
            failing = f"; failed {', '.join(failed)}" if failed else ""
            scope = details.get("scope_violations") or []
            outside = f"; {len(scope)} scope violation(s)" if scope else ""
            digest = str(details.get("evidence_sha256") or "")[:12]
            return (
                f"PCCP gate: {outcome} (plan version {entry.plan_version}){against}"
                f"{failing}{outside}; evidence SHA-256 {digest}"
            )
        case "approval" | "rejection":
            name = details.get("signer_name") or entry.actor
            return (
                f"{entry.action} signed by {name} ({entry.actor}): {details.get('meaning')}{reason}"
            )
        case "promotion":
            return (
                f"promoted to champion by {entry.actor}, replacing version "
                f"{details.get('previous_champion')}{reason}"
            )
        case "rollback":
            return (
                f"rolled back by {entry.actor}; version {details.get('restored_champion')} "
                f"restored{reason}"
            )
    return f"{entry.action} by {entry.actor}{reason}"
