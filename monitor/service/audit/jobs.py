"""The change log's scheduled jobs: the daily signed checkpoint (anchored outside the database),
and the verification of the chain, the checkpoints and their anchors, whose outcome is exported
as metrics (``radsentry_audit_chain_ok`` and its timestamp).

Entry points that the scheduler stores by reference are in ``monitor/service/jobs.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from sqlalchemy import Engine

from monitor.service import metrics
from monitor.service.audit import store as change_log
from monitor.service.audit.anchors import problems_of, sign_and_anchor
from monitor.service.audit.keys import keyring, signing_key, trusted_keys
from monitor.service.audit.signing import verify_checkpoints
from monitor.service.logging import job_boundary
from monitor.service.settings import Settings

log = structlog.get_logger(__name__)


@job_boundary("change log checkpoint failed")
def sign_change_log(engine: Engine, settings: Settings) -> None:
    """Sign the change log's head (a no-op when it is already signed or empty) and anchor it
    outside the database. A broken chain, a missing key or an anchor that cannot be written is
    logged loudly, and the next run tries again."""
    key = signing_key(settings)
    trusted = {**trusted_keys(settings), **keyring(key.public_key())}
    sign_and_anchor(engine, key, settings.audit_anchor_dir, trusted)


def verify_change_log(engine: Engine, settings: Settings) -> bool | None:
    """Verify the change log's chain, its entries' signatures, its signed checkpoints and their
    anchors, and export the outcome.

    Returns whether both held; None when the check could not run (database down, signing key
    missing): the gauges keep their last values, and the stale timestamp alerts.
    """
    problems = _check(engine, settings)
    if problems is None:
        return None
    chain, checkpoint_problems = problems
    ok = chain.ok and not checkpoint_problems
    metrics.AUDIT_CHAIN_OK.set(1.0 if ok else 0.0)
    metrics.AUDIT_CHAIN_LAST_VERIFIED.set(datetime.now(UTC).timestamp())
    if ok:
        log.info("change log verified", entries=chain.entries)
    else:
        log.error(
            "change log verification failed",
            first_bad_seq=chain.first_bad_seq,
            problem=chain.problem,
            checkpoint_problems=checkpoint_problems,
        )
    return ok


@job_boundary("change log verification could not run")
def _check(engine: Engine, settings: Settings) -> tuple[change_log.Verification, list[str]]:
    # The next run tries again; meanwhile the last verification grows old.
    # A new deployment has no checkpoint until the first daily one: not a failure here (the
    # command line's `audit verify` is stricter); a missing or stale one once signed is.
    trusted = trusted_keys(settings)
    chain = change_log.verify(engine, trusted)
    problems = verify_checkpoints(engine, trusted)
    now = datetime.now(UTC)
    return chain, problems + problems_of(engine, settings, allow_unanchored=True, now=now)
