"""The audit key: the Ed25519 key that signs every change-log entry and every checkpoint.

The key lives outside the database (production mounts it, ``RADSENTRY_AUDIT__SIGNING_KEY_FILE``;
the embedded defaults create one under the data dir), so whoever holds only database
credentials can insert a row with a correct chain hash but not its signature, and
``radsentry audit verify`` names that row. An auditor verifies with public keys alone: the
current key's and, after a rotation, the earlier ones listed in
``RADSENTRY_AUDIT__TRUSTED_PUBLIC_KEYS`` (every signature names its key by ``key_id``, the
SHA-256 of the raw public key).

Which key signs this process's entries is set once at start (:func:`sign_entries_with`, called
by the command line and by ``create_app``) and loaded at the first append, so processes that
never write the log (the consumer, read-only commands) never read the private key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from monitor.service.errors import ServiceError
from monitor.service.settings import Settings

log = structlog.get_logger(__name__)

ENTRY_CONTEXT: Final = b"radsentry change-log entry v1:"
"""Prefix of what an entry signature covers, so that no entry signature can pass for a
checkpoint's (``"{seq}:{head_hash}"``) or the other way round."""

Keyring = Mapping[str, Ed25519PublicKey]
"""Trusted public keys by key id."""


class SigningKeyError(ServiceError, RuntimeError):
    """The audit key is missing, unreadable or not an Ed25519 key."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def keyring(*public_keys: Ed25519PublicKey) -> dict[str, Ed25519PublicKey]:
    return {key_id(public_key): public_key for public_key in public_keys}


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        loaded = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SigningKeyError(f"not a PEM public key: {exc}") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise SigningKeyError("not an Ed25519 public key")
    return loaded


def load_or_create_key(path: Path, *, create: bool) -> Ed25519PrivateKey:
    """The PEM private key at ``path``; with ``create``, a new one written there (0600) and its
    public key beside it (``.pub``) when none exists."""
    if not path.exists():
        if not create:
            raise SigningKeyError(f"no audit signing key at {path}")
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
        log.warning("created a local audit signing key", path=str(path))
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SigningKeyError(f"cannot read the audit signing key {path}: {exc}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 private key")
    return loaded


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The configured signing key; on embedded defaults, the one under ``data_dir`` (created
    on first use). A configured key that is missing is an error, never replaced."""
    return load_or_create_key(
        settings.audit_signing_key_path, create=settings.audit.signing_key_file is None
    )


def trusted_keys(settings: Settings, extra: tuple[Path, ...] = ()) -> dict[str, Ed25519PublicKey]:
    """The public keys that verification trusts: the signing key's (its ``.pub`` file, else
    derived from the private key; nothing is created), the earlier keys of
    ``audit.trusted_public_keys``, and ``extra`` (files an auditor names). A configured
    signing key that is missing, public half and all, is an error."""
    found: list[Ed25519PublicKey] = []
    private = settings.audit_signing_key_path
    if private.with_suffix(".pub").exists():
        found.append(load_public_key(private.with_suffix(".pub").read_bytes()))
    elif private.exists() or settings.audit.signing_key_file is not None:
        found.append(load_or_create_key(private, create=False).public_key())
    for path in (*settings.audit.trusted_public_keys, *extra):
        try:
            found.append(load_public_key(path.read_bytes()))
        except OSError as exc:
            raise SigningKeyError(f"cannot read the trusted public key {path}: {exc}") from None
    return keyring(*found)


def sign_entry(key: Ed25519PrivateKey, entry_hash: str) -> tuple[str, str]:
    """``(key_id, signature)`` for the entry whose hash is ``entry_hash``."""
    signature = key.sign(ENTRY_CONTEXT + entry_hash.encode("ascii"))
    return key_id(key.public_key()), signature.hex()


def entry_problem(
    trusted: Keyring, seq: int, entry_hash: str, signer: str | None, signature: str | None
) -> str | None:
    """What is wrong with entry ``seq``'s signature, or None when a trusted key made it."""
    if signer is None or signature is None:
        return f"entry {seq} is unsigned: it was not written with the audit key"
    public_key = trusted.get(signer)
    if public_key is None:
        return f"entry {seq} is signed by a key that is not trusted ({signer[:12]}...)"
    try:
        public_key.verify(bytes.fromhex(signature), ENTRY_CONTEXT + entry_hash.encode("ascii"))
    except (InvalidSignature, ValueError):
        return f"entry {seq}: its signature does not verify"
    return None


# This process's audit key: the settings it comes from, set at start; the key, read at first use.
_settings: Callable[[], Settings] | None = None
_key: Ed25519PrivateKey | None = None


def sign_entries_with(settings: Settings | Callable[[], Settings]) -> None:
    """Sign this process's change-log entries with the audit key of ``settings`` (or of the
    settings a factory gives, e.g. the environment's), read when the first entry is appended."""
    global _settings, _key
    _settings, _key = (settings if callable(settings) else (lambda: settings)), None


def sign_entries_with_key(key: Ed25519PrivateKey) -> None:
    """Sign this process's change-log entries with ``key`` (tests)."""
    global _settings, _key
    _settings, _key = None, key


def entry_key() -> Ed25519PrivateKey:
    """The key that signs this process's entries; an error when none was set at start."""
    global _key
    if _key is None:
        if _settings is None:
            raise SigningKeyError(
                "this process has no audit signing key to sign change-log entries with "
                "(the command line and the API set one at start)"
            )
        _key = signing_key(_settings())
    return _key


def process_keyring() -> dict[str, Ed25519PublicKey]:
    """The keys this process trusts when it relies on entries (promotion, rollback): its own
    signing key's and its settings' trusted public keys."""
    own = keyring(entry_key().public_key())
    return own if _settings is None else {**trusted_keys(_settings()), **own}
