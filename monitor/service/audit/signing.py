"""Signed checkpoints of the change log: Ed25519 over ``"{seq}:{head_hash}"``.

The hash chain shows that no entry was altered relative to the ones after it, and each entry's
own signature that the audit key wrote it; a checkpoint also pins the head at a moment with a
signature, and covers the unsigned history written before entries were signed. Someone who
could rewrite the whole table and recompute every hash still cannot produce the signed head
without the private key. An auditor verifies offline with public keys, a checkpoint and an
export (:func:`verify_checkpoint_offline`). The key is the audit key (``keys.py``), never the
database's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, select

from monitor.service.audit.keys import Keyring, entry_problem, key_id, keyring
from monitor.service.audit.store import GENESIS, entry_hash, verify
from monitor.service.db import table_of
from monitor.service.errors import ServiceError
from monitor.service.models import ChangeLogCheckpointRow, ChangeLogRow

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    head_hash: str
    signed_at: datetime
    key_id: str
    signature: str

    def message(self) -> bytes:
        return _message(self.seq, self.head_hash)

    def to_json(self) -> str:
        return json.dumps(
            {
                "seq": self.seq,
                "head_hash": self.head_hash,
                "signed_at": self.signed_at.isoformat(),
                "key_id": self.key_id,
                "signature": self.signature,
            },
            sort_keys=True,
        )


class CheckpointError(ServiceError, RuntimeError):
    """The log cannot be checkpointed (its chain is broken), or a checkpoint does not hold."""


def checkpoint(
    engine: Engine, key: Ed25519PrivateKey, trusted: Keyring | None = None
) -> Checkpoint | None:
    """Verify the chain and its entries' signatures (by ``trusted`` keys; default: ``key``'s
    own), then sign and store its head; None for an empty log or when the head is already
    checkpointed. A broken chain or a forged entry is never signed."""
    result = verify(engine, keyring(key.public_key()) if trusted is None else trusted)
    if not result.ok:
        raise CheckpointError(
            f"the change log is broken at entry {result.first_bad_seq} ({result.problem}); "
            "refusing to sign it"
        )
    if result.entries == 0:
        return None
    with engine.begin() as connection:
        if connection.scalar(
            select(ChangeLogCheckpointRow.seq).where(ChangeLogCheckpointRow.seq == result.entries)
        ):
            return None
        signed = Checkpoint(
            seq=result.entries,
            head_hash=result.head_hash,
            signed_at=datetime.now(UTC),
            key_id=key_id(key.public_key()),
            signature=key.sign(_message(result.entries, result.head_hash)).hex(),
        )
        connection.execute(table_of(ChangeLogCheckpointRow).insert().values(**asdict(signed)))
    log.info("change log checkpoint signed", seq=signed.seq)
    return signed


def checkpoints(engine: Engine) -> list[Checkpoint]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(table_of(ChangeLogCheckpointRow)).order_by(ChangeLogCheckpointRow.seq)
        ).all()
    return [Checkpoint(r.seq, r.head_hash, r.signed_at, r.key_id, r.signature) for r in rows]


def verify_checkpoints(engine: Engine, trusted: Keyring) -> list[str]:
    """Problems with the stored checkpoints: a signature by no trusted key or that does not
    verify, or a head the chain no longer has at that sequence number. Empty when all hold."""
    problems: list[str] = []
    with engine.connect() as connection:
        hashes = dict(connection.execute(select(ChangeLogRow.seq, ChangeLogRow.entry_hash)).all())
    for point in checkpoints(engine):
        problems.extend(_check(point, trusted, hashes.get(point.seq)))
    return problems


def verify_checkpoint_offline(
    point: Checkpoint, trusted: Keyring, exported_lines: list[str]
) -> list[str]:
    """Check a checkpoint against an export (JSON lines) alone: recompute the chain up to its
    sequence number, check each signed entry's signature (unsigned entries may only come
    first: the history before entries were signed, which this checkpoint covers), compare the
    head, then check the checkpoint's signature."""
    prev_hash, signed_seen = GENESIS, False
    for line in exported_lines:
        entry = json.loads(line)
        if entry["seq"] > point.seq:
            break
        entry["recorded_at"] = datetime.fromisoformat(entry["recorded_at"])
        if entry["prev_hash"] != prev_hash or entry_hash(prev_hash, entry) != entry["entry_hash"]:
            return [f"the export's chain breaks at entry {entry['seq']}"]
        signature = entry.get("signature")
        if signature is not None or signed_seen:
            signed_seen = True
            problem = entry_problem(
                trusted, entry["seq"], entry["entry_hash"], entry.get("key_id"), signature
            )
            if problem is not None:
                return [problem]
        prev_hash = entry["entry_hash"]
    return _check(point, trusted, prev_hash)


def _message(seq: int, head_hash: str) -> bytes:
    """What a checkpoint signs."""
    return f"{seq}:{head_hash}".encode("ascii")


def _check(point: Checkpoint, trusted: Keyring, head: str | None) -> list[str]:
    problems: list[str] = []
    public_key = trusted.get(point.key_id)
    if public_key is None:
        problems.append(f"checkpoint {point.seq} was signed by another key (not a trusted one)")
    else:
        try:
            public_key.verify(bytes.fromhex(point.signature), point.message())
        except (InvalidSignature, ValueError):
            problems.append(f"checkpoint {point.seq}: the signature does not verify")
    if head != point.head_hash:
        problems.append(f"checkpoint {point.seq}: the log's head there is not the signed one")
    return problems
