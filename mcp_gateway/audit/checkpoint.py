"""Signed checkpoints: the chain head, signed with an Ed25519 key held outside the database.

A hash chain alone shows that rows were not changed one by one; someone who can write the database can still
rewrite a row and re-hash every row after it, or cut off the tail. A checkpoint is a signature over
``(record_id, record_hash, ts, key_id)`` of the chain head at that moment. Without the private key nobody can
make one, so a re-hashed chain disagrees with the checkpoints signed before the rewrite, and a trail that ends
before a checkpoint's record has lost its tail.

The gateway signs at start-up, every ``audit.checkpoint_interval`` seconds while the chain grows, and at
shutdown. Each checkpoint is stored in the database and appended to the trail's mirror, ``audit.checkpoint_file``
keyed by the trail (JSON lines, audit/mirror.py): ship that file off the host, because whoever can delete
checkpoints from both places can hide a rewrite of the records after the last one left.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.audit.mirror import adopt_legacy, mirror_line, mirror_path, read_checkpoint_file
from mcp_gateway.canonical import canonical_json
from mcp_gateway.errors import ConfigError

__all__ = ["CHECKPOINT_FIELDS", "Checkpointer", "Signer", "checkpoint_valid", "load_public_key", "read_checkpoint_file"]

logger = logging.getLogger(__name__)

CHECKPOINT_FIELDS = ("ts", "record_id", "record_hash", "key_id", "signature")
_DOMAIN = b"mcp-gateway audit checkpoint v1\n"


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of SHA-256 over its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _message(record_id: int, record_hash: str, ts: str, kid: str) -> bytes:
    body = {"key_id": kid, "record_hash": record_hash, "record_id": record_id, "ts": ts}
    return _DOMAIN + canonical_json(body)


class Signer:
    """The checkpoint key: an Ed25519 private key in a PEM file (created 0600 on first use)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """Load the key at ``path``, creating it (and a ``.pub`` beside it) if it does not exist.

        Raises:
            ConfigError: the file exists but is not an unencrypted Ed25519 PEM private key.
        """
        if not path.exists():
            created = cls._create(path)
            if created is not None:
                return created
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"audit.signing_key {path}: not a readable Ed25519 private key: {exc}") from exc
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ConfigError(f"audit.signing_key {path}: not an Ed25519 key")
        return cls(loaded)

    @classmethod
    def _create(cls, path: Path) -> Signer | None:
        """Create the key file atomically; None when another process created it first (then load theirs).

        Several gateways can start together on a fresh state folder: the key is written whole to a private
        temporary file and linked into place, which fails if the name exists, so nobody reads half a key and
        nobody overwrites a key another process already signs with.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(descriptor, "wb") as handle:  # mkstemp creates the file 0600
                handle.write(pem)
            try:
                os.link(temporary, path)
            except FileExistsError:
                return None
        finally:
            os.unlink(temporary)
        signer = cls(key)
        public = path.with_suffix(".pub")
        staged = public.with_name(f".{public.name}.{os.getpid()}")
        staged.write_bytes(signer.public_pem())
        os.replace(staged, public)
        return signer

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, record_id: int, record_hash: str) -> dict[str, Any]:
        """A checkpoint for the record ``record_id`` whose hash is ``record_hash``."""
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        signature = self._key.sign(_message(record_id, record_hash, ts, self.key_id))
        return {
            "ts": ts,
            "record_id": record_id,
            "record_hash": record_hash,
            "key_id": self.key_id,
            "signature": base64.b64encode(signature).decode(),
        }


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key from a PEM file, or the public half of a PEM private key.

    Raises:
        ConfigError: the file is missing or holds no Ed25519 key.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the checkpoint key: {exc.strerror}") from exc
    with suppress(ValueError):
        public = serialization.load_pem_public_key(data)
        if isinstance(public, Ed25519PublicKey):
            return public
    with suppress(ValueError, TypeError):
        private = serialization.load_pem_private_key(data, password=None)
        if isinstance(private, Ed25519PrivateKey):
            return private.public_key()
    raise ConfigError(f"{path}: not an Ed25519 public or private key in PEM")


def checkpoint_valid(checkpoint: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    """Whether ``checkpoint`` carries a valid signature by ``public_key`` over its own fields."""
    try:
        kid = str(checkpoint["key_id"])
        if kid != key_id(public_key):
            return False
        message = _message(int(checkpoint["record_id"]), str(checkpoint["record_hash"]), str(checkpoint["ts"]), kid)
        public_key.verify(base64.b64decode(str(checkpoint["signature"]), validate=True), message)
    except (KeyError, TypeError, ValueError, InvalidSignature):
        return False
    return True


def merge_checkpoints(*sources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The union of checkpoint sources (database, mirror file, bundle), without duplicates, by record id."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for source in sources:
        for checkpoint in source:
            key = tuple(checkpoint.get(name) for name in CHECKPOINT_FIELDS)
            seen.setdefault(key, {name: checkpoint.get(name) for name in CHECKPOINT_FIELDS})
    return sorted(seen.values(), key=lambda item: (_as_int(item.get("record_id")), str(item.get("ts"))))


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


class Checkpointer:
    """Signs the chain head into the database and the trail's own mirror file (audit/mirror.py).

    ``mirror`` is the configured ``audit.checkpoint_file``: the file written is that name keyed by the trail.
    """

    def __init__(self, log: AuditLog, signer: Signer, mirror: Path) -> None:
        self.log = log
        self.signer = signer
        self.base = mirror
        self.mirror = mirror_path(mirror, log.records.identity)
        self._last: tuple[int, str] | None = None
        self._adopted = False

    def sign_now(self) -> dict[str, Any] | None:
        """Sign the current head if it moved since the last checkpoint; returns the checkpoint, if any.

        Raises:
            UnavailableError: the database cannot be read or written.
        """
        if not self._adopted:  # the one mirror from before mirrors were per trail, if it is wholly this trail's
            adopt_legacy(self.base, self.log.records)
            self._adopted = True
        head = self.log.head()
        if head is None or head == self._last:
            return None
        checkpoint = self.signer.sign(*head)
        self.log.add_checkpoint(checkpoint)
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        with self.mirror.open("a", encoding="utf-8") as handle:
            handle.write(mirror_line(checkpoint, self.log.records.identity))
            handle.flush()
            os.fsync(handle.fileno())
        self._last = head
        return checkpoint
