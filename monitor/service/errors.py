"""The service layer's errors: one base, three kinds a caller can act on.

Every error the service raises on purpose derives from :class:`ServiceError`. The kinds below
are what the HTTP API maps to a status, in one table (``monitor.service.api.ERROR_STATUS``):
an unknown thing is :class:`NotFound` (404), a change the current state does not allow is
:class:`Conflict` (409), and an act this caller may not perform is :class:`Forbidden` (403).
Each kind also keeps the built-in base that callers caught before (``LookupError``,
``ValueError``, ``PermissionError``). Errors of the pure packages (``DriftError``,
``PerformanceError``, ``DatasetError``...) stay theirs; the table maps the ones a request can
cause.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service layer raises on purpose."""


class NotFound(ServiceError, LookupError):
    """The thing asked for does not exist (or is not visible to the caller)."""


class Conflict(ServiceError, ValueError):
    """The request contradicts the current state (an illegal transition, a stale version)."""


class Forbidden(ServiceError, PermissionError):
    """This caller may not do this, whatever the state (a four-eyes violation)."""


class IllegalTransition(Conflict):
    """A lifecycle forbids this step from the current status (an alert resolved twice, a
    candidate promoted before its approvals)."""
