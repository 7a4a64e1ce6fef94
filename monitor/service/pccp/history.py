"""A model as the service knows it: whether it is known at all, and its champion's history.

A model is known when the service has a record of it: a drift stream (a site sent predictions
of it), a candidate, or a change-log entry about one of its versions (``champion.initial``,
written by ``radsentry train-initial``, included). A request naming any other model is a 404
that names the models it may have meant (:func:`unknown_model_message`), never a 409 about a
state it cannot have.

The champion's history is read from the change log, the record a promotion and a rollback are
verified against: the first champion, each promotion (and the version it replaced) and each
rollback (and the version it restored), in order.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, exists, or_, select

from monitor.service.db import as_utc, table_of
from monitor.service.errors import NotFound
from monitor.service.models import CandidateRow, ChangeLogRow, DriftStreamRow
from monitor.service.pccp.store import subject_of

__all__ = [
    "CHAMPION_ACTIONS",
    "ChampionChange",
    "ModelNotFound",
    "champion_history",
    "known_model",
    "known_models",
    "unknown_model_message",
]

CHAMPION_ACTIONS: Final = ("champion.initial", "promotion", "rollback")
"""The change-log actions that move a model's champion."""


class ModelNotFound(NotFound):
    """No record of the model: no drift stream, candidate or change-log entry names it."""


@dataclass(frozen=True, slots=True)
class ChampionChange:
    """One move of the champion, as its change-log entry records it."""

    seq: int
    recorded_at: datetime
    action: str
    champion: str
    """The version that became champion."""
    replaced: str | None
    """The version it replaced (None for the first champion, or a first promotion)."""
    actor: str
    reason: str | None


def _versions_prefix(model_name: str) -> str:
    escaped = model_name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return subject_of(escaped, "%")


def known_model(connection: Connection, model_name: str) -> bool:
    """Whether a drift stream, a candidate or a change-log entry names ``model_name``."""
    return bool(
        connection.scalar(
            select(
                or_(
                    exists().where(DriftStreamRow.model_name == model_name),
                    exists().where(CandidateRow.model_name == model_name),
                    exists().where(
                        ChangeLogRow.subject.like(_versions_prefix(model_name), escape="\\")
                    ),
                )
            )
        )
    )


def known_models(connection: Connection) -> list[str]:
    """Every model the service has a record of, sorted."""
    names = set(connection.scalars(select(DriftStreamRow.model_name).distinct()))
    names.update(connection.scalars(select(CandidateRow.model_name).distinct()))
    subjects = connection.scalars(
        select(ChangeLogRow.subject).where(ChangeLogRow.subject.like("%/version/%")).distinct()
    )
    names.update(subject.rsplit("/version/", 1)[0] for subject in subjects)
    return sorted(names)


def unknown_model_message(connection: Connection, model_name: str) -> str:
    """The 404's detail: the model is unknown, the closest known names, and where to look."""
    names = known_models(connection)
    close = difflib.get_close_matches(model_name, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    listed = ", ".join(names[:20]) or "none yet"
    return f"no model {model_name!r} is known here; {hint}known models: {listed}"


def require_known(engine: Engine, model_name: str) -> None:
    """Raise :class:`ModelNotFound` unless ``model_name`` is known."""
    with engine.connect() as connection:
        if not known_model(connection, model_name):
            raise ModelNotFound(unknown_model_message(connection, model_name))


def champion_history(engine: Engine, model_name: str) -> list[ChampionChange]:
    """Every move of the model's champion, oldest first, from the change log."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(table_of(ChangeLogRow))
            .where(
                ChangeLogRow.subject.like(_versions_prefix(model_name), escape="\\"),
                ChangeLogRow.action.in_(CHAMPION_ACTIONS),
            )
            .order_by(ChangeLogRow.seq)
        )
        return [_change(ChangeLogRow(**row._mapping)) for row in rows]


def _change(row: ChangeLogRow) -> ChampionChange:
    details = row.details or {}
    version = row.subject.rsplit("/version/", 1)[-1]
    replaced: Any
    if row.action == "rollback":  # the version undone; the one restored is champion again
        champion, replaced = str(details.get("restored_champion")), version
    else:
        champion, replaced = version, details.get("previous_champion")
    return ChampionChange(
        seq=row.seq,
        recorded_at=as_utc(row.recorded_at),
        action=row.action,
        champion=champion,
        replaced=None if replaced is None else str(replaced),
        actor=row.actor,
        reason=row.reason,
    )
