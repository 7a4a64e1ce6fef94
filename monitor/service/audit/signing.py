"""Signed checkpoints of the change log: Ed25519 over ``"{seq}:{head_hash}"``.

The hash chain shows that no entry was altered relative to the ones after it; a checkpoint also
pins the head at a moment with a signature. Someone who could rewrite the whole table and
recompute every hash still cannot produce the signed head without the private key. An auditor
verifies offline with the public key, a checkpoint and an export
(:func:`verify_checkpoint_offline`). The private key is the audit service's, never the
database's: production mounts it (``RADSENTRY_AUDIT__SIGNING_KEY_FILE``); the embedded defaults
create one under the data dir.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, select

from monitor.service.audit.store import GENESIS, entry_hash, verify
from monitor.service.db import table_of
from monitor.service.errors import ServiceError
from monitor.service.models import ChangeLogCheckpointRow, ChangeLogRow
from monitor.service.settings import Settings

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


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_or_create_key(path: Path, *, create: bool) -> Ed25519PrivateKey:
    """The PEM private key at ``path``; with ``create``, a new one written there (0600) and its
    public key beside it (``.pub``) when none exists."""
    if not path.exists():
        if not create:
            raise CheckpointError(f"no signing key at {path}")
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.with_suffix(".pub").write_bytes(public_pem(key.public_key()))
        log.warning("created a local change-log signing key", path=str(path))
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise CheckpointError(f"{path} is not an Ed25519 private key")
    return loaded


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The configured signing key; on embedded defaults, the one under ``data_dir`` (created
    on first use). A configured key that is missing is an error, never replaced."""
    return load_or_create_key(
        settings.audit_signing_key_path, create=settings.audit.signing_key_file is None
    )


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    loaded = serialization.load_pem_public_key(pem)
    if not isinstance(loaded, Ed25519PublicKey):
        raise CheckpointError("not an Ed25519 public key")
    return loaded


def checkpoint(engine: Engine, key: Ed25519PrivateKey) -> Checkpoint | None:
    """Verify the chain, then sign and store its head; None for an empty log or when the head
    is already checkpointed. A broken chain is never signed."""
    result = verify(engine)
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


def verify_checkpoints(engine: Engine, public_key: Ed25519PublicKey) -> list[str]:
    """Problems with the stored checkpoints: a bad signature, or a head the chain no longer
    has at that sequence number. Empty when all hold."""
    problems: list[str] = []
    with engine.connect() as connection:
        hashes = dict(connection.execute(select(ChangeLogRow.seq, ChangeLogRow.entry_hash)).all())
    for point in checkpoints(engine):
        problems.extend(_check(point, public_key, hashes.get(point.seq)))
    return problems


def verify_checkpoint_offline(
    point: Checkpoint, public_key: Ed25519PublicKey, exported_lines: list[str]
) -> list[str]:
    """Check a checkpoint against an export (JSON lines) alone: recompute the chain up to its
    sequence number and compare the head, then the signature."""
    prev_hash = GENESIS
    for line in exported_lines:
        entry = json.loads(line)
        if entry["seq"] > point.seq:
            break
        entry["recorded_at"] = datetime.fromisoformat(entry["recorded_at"])
        if entry["prev_hash"] != prev_hash or entry_hash(prev_hash, entry) != entry["entry_hash"]:
            return [f"the export's chain breaks at entry {entry['seq']}"]
        prev_hash = entry["entry_hash"]
    return _check(point, public_key, prev_hash)


def _message(seq: int, head_hash: str) -> bytes:
    """What a checkpoint signs."""
    return f"{seq}:{head_hash}".encode("ascii")


def _check(point: Checkpoint, public_key: Ed25519PublicKey, head: str | None) -> list[str]:
    problems: list[str] = []
    if point.key_id != key_id(public_key):
        problems.append(f"checkpoint {point.seq} was signed by another key")
    try:
        public_key.verify(bytes.fromhex(point.signature), point.message())
    except (InvalidSignature, ValueError):
        problems.append(f"checkpoint {point.seq}: the signature does not verify")
    if head != point.head_hash:
        problems.append(f"checkpoint {point.seq}: the log's head there is not the signed one")
    return problems
