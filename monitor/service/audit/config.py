"""Configuration changes in the change log: ``config.changed`` when a process starts with
governed settings whose fingerprints differ from the last ones recorded.

Governed settings are the ones that decide what the monitor alarms on and how a model may be
retrained: the drift engine, performance metrics, rules and alarms, the retraining policy and
job, and the authentication mode. Each is recorded as its fingerprint (a hash of its values,
never a secret); the entry names which ones changed. Processes that start with the same
configuration (every replica, every restart) add nothing.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import Engine

from monitor.service.audit import store as change_log
from monitor.service.settings import Settings

SUBJECT = "config"


def governed_fingerprints(settings: Settings) -> dict[str, str]:
    """The fingerprint of each governed part of ``settings``."""
    auth = settings.auth
    auth_document = {
        "mode": auth.mode,
        "issuer": auth.issuer,
        "audience": auth.audience,
        "algorithms": sorted(auth.algorithms),
        "roles_claim": auth.roles_claim,
        "sites_claim": auth.sites_claim,
    }
    return {
        "drift": settings.drift.fingerprint(),
        "performance.metrics": settings.performance.metrics.fingerprint(),
        "performance.rules": settings.performance.rules.fingerprint(),
        "performance.alarms": settings.performance.alarms.fingerprint(),
        "retrain.policy": settings.retrain.policy.fingerprint(),
        "retrain.job": settings.retrain.job.fingerprint(),
        "auth": hashlib.sha256(json.dumps(auth_document, sort_keys=True).encode()).hexdigest(),
    }


def record_config(engine: Engine, settings: Settings, actor: str) -> list[str] | None:
    """Append ``config.changed`` if the governed fingerprints differ from the last recorded
    ones; the names of the parts that changed (every part the first time), or None."""
    current = governed_fingerprints(settings)
    with engine.begin() as connection:
        # Under the log's lock: replicas starting together record one change.
        last = change_log.latest_details(connection, ("config.changed",), SUBJECT)
        previous: dict[str, str] = {} if last is None else dict(last["fingerprints"])
        changed = sorted(name for name in current if previous.get(name) != current[name])
        if not changed:
            return None
        change_log.append(
            connection,
            change_log.Entry(
                actor=actor,
                action="config.changed",
                subject=SUBJECT,
                details={"fingerprints": current, "changed": changed, "previous": previous},
                reason="first start" if last is None else "started with changed settings",
            ),
        )
    return changed
