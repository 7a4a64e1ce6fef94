"""Moving a model's champion: promotion and rollback, the only writers of the registry's
``champion`` alias after ``train-initial``.

**One model, one writer.** Both run in one transaction under the model's lock
(:func:`lock_model`, a PostgreSQL transaction-scoped advisory lock keyed by the model name), taken
before any row lock. So the champion each reads from the registry is still the champion when it
moves the alias: of two promotions racing, the second sees the first's champion and is refused.

**Promotion re-verifies from first principles.** A candidate's ``status`` is only what the last
writer of its row set, and the service's database credentials are enough to write it. Promotion
therefore also checks, with :func:`pccp.promotion.verify`, the change log's ``gate.result``
entry (its hash recomputes and the audit key signed it; outcome ``passed``, the plan, the
digest of the stored evidence), every approval against its ``approval`` entry (as authentic),
the four-eyes rule and the plan's number of approvers,
and that the champion is still the version the gate compared against. A failed check is 409 with
its reason (:func:`_refused`); nothing moves and nothing is logged.

**Rollback names what it undoes.** The caller says which champion it means to undo
(``expected_version``). Another champion is 409; a version whose rollback already happened (its
candidate ``rolled_back``, the champion the version it restored) is answered with that candidate
unchanged. Repeating a rollback request therefore undoes one promotion, never the one before.

**If a commit fails.** The alias moves inside the locked transaction. If the commit then fails,
the candidate is still ``approved`` while the champion is already its version; promoting again
records the promotion without moving anything (:func:`pccp.promotion.replaced_champion`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from sqlalchemy import Connection, Engine, select, text

from monitor.service.audit import keys
from monitor.service.audit import store as change_log
from monitor.service.db import table_of
from monitor.service.errors import Conflict, IllegalTransition
from monitor.service.models import CandidateRow, SignatureRow, clip_reason
from monitor.service.pccp import store
from monitor.service.pccp.history import ModelNotFound, known_model, unknown_model_message
from pccp import lifecycle, promotion

__all__ = ["ChampionRegistry", "lock_model", "promote", "rollback"]

log = structlog.get_logger(__name__)

_VERIFIED_ACTIONS = ("gate.result", "approval", "rejection")
"""The change-log entries about a candidate that promotion reads."""


class ChampionRegistry(Protocol):
    """What promotion and rollback need of the registry (``retrain.tracking.Registry``)."""

    def champion_version(self, model_name: str) -> str | None: ...

    def move_champion(self, model_name: str, version: str) -> str | None: ...


def promote(
    engine: Engine,
    candidate_id: uuid.UUID,
    *,
    actor: str,
    reason: str,
    registry: ChampionRegistry,
) -> CandidateRow:
    """Make an approved candidate the champion once every check of the module docstring has
    passed; the champion it replaces is recorded."""
    _require_reason(reason)
    now = datetime.now(UTC)
    model_name = store.get(engine, candidate_id).model_name
    with store.refusals(), _refused(), engine.begin() as connection:
        lock_model(connection, model_name)
        row = store.locked(connection, candidate_id)
        if row.model_name != model_name:  # renamed between the read and the lock
            raise Conflict(f"not promoted: the candidate's model changed to {row.model_name}")
        signed = store.signatures_in(connection, candidate_id)
        _require_promotable(row, signed)
        claim = _claim(row)
        signatures = [promotion.Signature(s.signer, s.decision, s.change_log_seq) for s in signed]
        verified = promotion.verify(claim, _logged(connection, row), signatures)
        current = registry.champion_version(model_name)
        previous = promotion.replaced_champion(verified, current, claim)
        registry.move_champion(model_name, row.model_version)
        store.set_columns(
            connection,
            candidate_id,
            status="promoted",
            previous_champion=previous,
            promoted_at=now,
            promoted_by=actor,
            updated_at=now,
        )
        details = _promotion_details(verified, previous, row.model_version)
        _append(connection, row, "promotion", actor, reason, now, **details)
    log.info("candidate promoted", model=model_name, version=row.model_version)
    return store.get(engine, candidate_id)


def rollback(
    engine: Engine,
    model_name: str,
    *,
    expected_version: str,
    actor: str,
    reason: str,
    registry: ChampionRegistry,
) -> CandidateRow:
    """Undo the promotion of ``expected_version``, which must be the champion: the champion goes
    back to the version that promotion replaced, and its candidate becomes ``rolled_back``. Asked
    again once done, it answers that candidate unchanged and records nothing. The version it
    restores must be the one the promotion's change-log entry says it replaced: a row edited by
    SQL restores nothing."""
    _require_reason(reason)
    now = datetime.now(UTC)
    with store.refusals(), engine.begin() as connection:
        lock_model(connection, model_name)
        row = _promoted_version(connection, model_name, expected_version)
        current = registry.champion_version(model_name)
        if row.status == "rolled_back" and current == row.previous_champion:
            return row  # an earlier request undid it
        if current != expected_version:
            raise Conflict(
                f"the champion of {model_name} is version {current}, not {expected_version}: "
                "nothing was rolled back"
            )
        restored = lifecycle.restored_champion(store.as_candidate(row))
        _check_logged_promotion(connection, row, restored)
        registry.move_champion(model_name, restored)
        _record_rollback(connection, row, actor, reason, restored, now)
    log.warning("champion rolled back", model=model_name, restored=restored)
    return store.get(engine, row.candidate_id)


def lock_model(connection: Connection, model_name: str) -> None:
    """Serialise the champion's moves of one model until the transaction ends (an advisory
    lock). The key is the first 8 bytes of a SHA-256 of the name, the
    same in every process and release (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256(f"radsentry.champion/{model_name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    connection.execute(text("SELECT pg_advisory_xact_lock(CAST(:key AS bigint))"), {"key": key})


# -- helpers -------------------------------------------------------------------------------


@contextmanager
def _refused() -> Iterator[None]:
    """A failed promotion check as the service's 409: a stale gate is a :class:`Conflict`,
    every other check an :class:`IllegalTransition`; the message says which check."""
    try:
        yield
    except promotion.StaleGate as exc:
        raise Conflict(str(exc)) from exc
    except promotion.PromotionRefused as exc:
        raise IllegalTransition(f"not promoted: {exc}") from exc


def _require_reason(reason: str) -> None:
    if not reason.strip():
        raise ValueError("a change of champion needs a reason")


def _promoted_version(connection: Connection, model_name: str, version: str) -> CandidateRow:
    """The candidate of ``version``, locked; refused unless it was ever promoted."""
    found = connection.execute(
        select(table_of(CandidateRow))
        .where(CandidateRow.model_name == model_name, CandidateRow.model_version == version)
        .with_for_update()
    ).first()
    if found is None and not known_model(connection, model_name):
        raise ModelNotFound(unknown_model_message(connection, model_name))
    if found is None or found.promoted_at is None:
        raise IllegalTransition(
            f"{model_name} version {version} was never promoted, so there is no promotion of it "
            "to roll back: name the champion in expected_version (GET /models/"
            f"{model_name} says which version it is)"
        )
    return CandidateRow(**found._mapping)


_FINAL = (
    "which is final: ask for a retrain (POST /models/{model}/retrain) or propose another version"
)
_NOT_PROMOTABLE = {
    "candidate": "not yet evaluated by the acceptance gate (the scheduler's gate job looks every "
    "RADSENTRY_PCCP__GATE_S seconds); approve it once it has passed",
    "failed": _FINAL,
    "out_of_scope": _FINAL,
    "rejected": _FINAL,
    "promoted": "the champion already (GET /models/{model})",
    "rolled_back": _FINAL,
}
"""What a promotion refused by the candidate's status says to do, by status."""


def _require_promotable(row: CandidateRow, signed: Sequence[SignatureRow]) -> None:
    """Refuse a promotion the candidate's status does not allow, saying what is missing: for
    a passed candidate, the approvals needed and those held."""
    name = f"{row.model_name} version {row.model_version}"
    if row.status == "passed":
        approvers = sorted({s.signer for s in signed if s.decision == "approve"})
        needed = lifecycle.approvals_threshold(row.approvals_required)
        held = f"has {len(approvers)}" + (f" ({', '.join(approvers)})" if approvers else "")
        barred = ", ".join(sorted({row.proposed_by, row.triggered_by or row.proposed_by}))
        raise IllegalTransition(
            f"cannot promote {name}: it is passed and needs {needed} approvals from distinct "
            f"mlops users, {held}; another mlops user (not {barred}, nor one who signed) "
            f"approves it with POST /candidates/{row.candidate_id}/approve, then promote again"
        )
    if row.status in _NOT_PROMOTABLE:
        hint = _NOT_PROMOTABLE[row.status].format(model=row.model_name)
        raise IllegalTransition(f"cannot promote {name}: it is {row.status}, {hint}")
    lifecycle.require(store.as_candidate(row), "promote")


def _check_logged_promotion(connection: Connection, row: CandidateRow, restored: str) -> None:
    """Refuse unless the newest intact ``promotion`` entry of this candidate replaced
    ``restored`` (the version the candidate's row says it replaced)."""
    subject = store.subject_of(row.model_name, row.model_version)
    logged = [
        entry
        for entry in change_log.about(connection, subject, ("promotion",))
        if entry.details.get("candidate_id") == str(row.candidate_id)
    ]
    name = f"{row.model_name} version {row.model_version}"
    trusted, history = keys.process_keyring(), change_log.unsigned_through(connection)
    if not logged or not change_log.authentic(logged[-1], trusted, history):
        raise Conflict(f"not rolled back: the change log holds no intact promotion entry of {name}")
    replaced = logged[-1].details.get("previous_champion")
    if replaced != restored:
        raise Conflict(
            f"not rolled back: promotion entry #{logged[-1].seq} of {name} replaced version "
            f"{replaced}, but the candidate's row says {restored}"
        )


def _claim(row: CandidateRow) -> promotion.Claim:
    return promotion.Claim(
        candidate_id=str(row.candidate_id),
        model_name=row.model_name,
        model_version=row.model_version,
        proposed_by=row.proposed_by,
        triggered_by=row.triggered_by,
        plan_id=row.plan_id,
        plan_version=row.plan_version,
        plan_fingerprint=row.plan_fingerprint,
        report=row.report,
    )


def _logged(connection: Connection, row: CandidateRow) -> list[promotion.LoggedEntry]:
    """The change log's entries about the candidate's version that promotion reads, each with
    whether its hash recomputes and a trusted audit key signed it."""
    subject = store.subject_of(row.model_name, row.model_version)
    trusted, history = keys.process_keyring(), change_log.unsigned_through(connection)
    return [
        promotion.LoggedEntry(
            seq=entry.seq,
            action=entry.action,
            actor=entry.actor,
            plan_version=entry.plan_version,
            details=entry.details,
            intact=change_log.authentic(entry, trusted, history),
        )
        for entry in change_log.about(connection, subject, _VERIFIED_ACTIONS)
    ]


def _promotion_details(
    verified: promotion.Verified, previous: str | None, champion: str
) -> dict[str, Any]:
    """What the ``promotion`` entry records: the champions, and the approvers, entries and
    evidence digest the promotion was verified against."""
    return {
        "previous_champion": previous,
        "champion": champion,
        "approvers": list(verified.approvers),
        "gate_entry": verified.gate_seq,
        "approval_entries": list(verified.approval_seqs),
        "evidence_sha256": verified.evidence_sha256,
    }


def _record_rollback(
    connection: Connection,
    row: CandidateRow,
    actor: str,
    reason: str,
    restored: str,
    now: datetime,
) -> None:
    """The rolled-back candidate and its entry: the version undone and the one restored."""
    store.set_columns(
        connection,
        row.candidate_id,
        status="rolled_back",
        rolled_back_at=now,
        rolled_back_by=actor,
        updated_at=now,
    )
    details = {"rolled_back_version": row.model_version, "restored_champion": restored}
    _append(connection, row, "rollback", actor, reason, now, **details)


def _append(
    connection: Connection,
    row: CandidateRow,
    action: str,
    actor: str,
    reason: str,
    now: datetime,
    **details: Any,
) -> None:
    """Append a promotion's or a rollback's entry about the candidate's version."""
    change_log.append(
        connection,
        change_log.Entry(
            actor=actor,
            action=action,
            subject=store.subject_of(row.model_name, row.model_version),
            reason=clip_reason(reason),
            plan_version=row.plan_version,
            details={"candidate_id": str(row.candidate_id), **details},
        ),
        now=now,
    )
