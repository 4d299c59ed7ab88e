"""The hub's RSA keys for encrypted credentials (PROTOCOL.md section 4).

One key is *published*: served at `/.well-known/jwks.json`, where clients fetch it to
encrypt credentials. A rotation generates a new published key and retires the old one,
which keeps decrypting for `grace` seconds and is then deleted. The published key is
either supplied as a PEM file by configuration, or generated the first time one is
needed and persisted, so it survives restarts.

On disk (`<data_dir>/encryption-keys`, mode 0700; every file 0600)::

    <kid>.pem       one PKCS#8 private key per generated key, unencrypted
    keyring.json    {"current": kid | null,
                     "keys": {kid: {"created": unix_time, "retired": unix_time | null}}}

`kid` is the RFC 7638 thumbprint of the public key. A running hub re-reads the index
when it changes, so `mcp-hub rotate-encryption-key` takes effect without a restart. Private
material is never logged, served, or shown by a `repr`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import ConfigError
from .settings import Settings

MIN_BITS = 2048
INDEX = "keyring.json"


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


@dataclass(frozen=True, repr=False)
class HubKey:
    """One RSA key pair; its `repr` names the key, never its private part."""

    kid: str
    private: rsa.RSAPrivateKey = field(compare=False)
    created: float
    retired: float | None = None

    @classmethod
    def of(cls, private: rsa.RSAPrivateKey, created: float, retired: float | None = None) -> HubKey:
        numbers = private.public_key().public_numbers()
        # RFC 7638: SHA-256 over the required members, sorted, without whitespace.
        canonical = json.dumps({"e": b64url(_uint(numbers.e)), "kty": "RSA", "n": b64url(_uint(numbers.n))},
                               separators=(",", ":"), sort_keys=True)
        return cls(b64url(hashlib.sha256(canonical.encode()).digest()), private, created, retired)

    @property
    def bits(self) -> int:
        return self.private.key_size

    def jwk(self) -> dict[str, str]:
        """The public half as a JWK for RSA-OAEP-256 encryption."""
        numbers = self.private.public_key().public_numbers()
        return {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP-256", "kid": self.kid,
                "n": b64url(_uint(numbers.n)), "e": b64url(_uint(numbers.e))}

    def __repr__(self) -> str:
        return f"HubKey(kid={self.kid!r}, bits={self.bits}, retired={self.retired!r})"

    def __reduce__(self) -> Any:
        raise TypeError("HubKey holds a private key and cannot be pickled")


class Keyring:
    """The published key and the retired keys still in their grace period."""

    def __init__(self, folder: Path, *, bits: int = 3072, grace: float = 7 * 24 * 3600.0,
                 max_age: float | None = None, configured: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if bits < MIN_BITS:
            raise ConfigError(f"encryption keys need at least {MIN_BITS} bits (got {bits})")
        self.folder = folder
        self.bits = bits
        self.grace = grace
        self.max_age = max_age
        self.configured = configured
        self._clock = clock
        self._current: HubKey | None = None
        self._retired: dict[str, HubKey] = {}
        self._index_stamp: tuple[int, int, int] | None = None
        self._lock: anyio.Lock | None = None

    @classmethod
    def from_settings(cls, settings: Settings, folder: Path | None = None) -> Keyring:
        """The keyring the settings describe (in `folder`, default `settings.encryption_keys_dir`), not yet opened."""
        return cls(folder or settings.encryption_keys_dir, bits=settings.encryption_key_bits,
                   grace=settings.encryption_key_grace, max_age=settings.encryption_key_max_age,
                   configured=settings.encryption_key_file)

    def __repr__(self) -> str:
        return f"Keyring(folder={str(self.folder)!r}, current={self._current!r}, retired={len(self._retired)})"

    # -- opening and reading -----------------------------------------------------------------

    def open(self) -> Keyring:
        """Create the folder (0700), load the keys, drop expired ones; generate nothing yet."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        self._lock = anyio.Lock()
        self._load()
        if self.configured is not None:
            self._use_configured(self.configured)
        return self

    def decryption_keys(self) -> list[HubKey]:
        """Keys to try on an envelope: the published one, then retired ones still in grace (newest first)."""
        self._refresh()
        now = self._clock()
        retired = sorted((k for k in self._retired.values() if self._in_grace(k, now)),
                         key=lambda k: k.retired or 0.0, reverse=True)
        return [self._current, *retired] if self._current is not None else retired

    async def published(self) -> HubKey:
        """The key clients encrypt to; generated (or rotated, past `max_age`) in a worker thread."""
        if self._lock is None:
            raise RuntimeError("the keyring is not open")
        async with self._lock:
            self._refresh()
            current = self._current
            if current is None or self._too_old(current):
                return await anyio.to_thread.run_sync(self.rotate)
            return current

    async def jwks(self) -> dict[str, Any]:
        """The JWKS document: exactly one key, the published one."""
        return {"keys": [(await self.published()).jwk()]}

    # -- rotation --------------------------------------------------------------------------

    def rotate(self) -> HubKey:
        """Generate and publish a new key; the previous one decrypts for `grace` more seconds."""
        if self.configured is not None:
            raise ConfigError(f"the published key comes from {self.configured}; replace that file to rotate it")
        self._refresh()
        now = self._clock()
        key = HubKey.of(rsa.generate_private_key(public_exponent=65537, key_size=self.bits), created=now)
        self._write_private(key)
        if self._current is not None:
            self._retired[self._current.kid] = replace(self._current, retired=now)
        self._current = key
        self._save()
        return key

    # -- internals -----------------------------------------------------------------------------

    def _in_grace(self, key: HubKey, now: float) -> bool:
        return key.retired is not None and now < key.retired + self.grace

    def _too_old(self, key: HubKey) -> bool:
        return self.configured is None and self.max_age is not None and self._clock() - key.created >= self.max_age

    def _use_configured(self, path: Path) -> None:
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(f"cannot read encryption_key_file {path}: {exc.strerror}") from None
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(f"encryption_key_file {path} is not an unencrypted PEM private key") from None
        if not isinstance(private, rsa.RSAPrivateKey) or private.key_size < MIN_BITS:
            raise ConfigError(f"encryption_key_file {path} must hold an RSA key of at least {MIN_BITS} bits")
        key = HubKey.of(private, created=self._clock())
        if self._current is not None and self._current.kid != key.kid:
            # The generated key published until now keeps decrypting through its grace period.
            self._retired[self._current.kid] = replace(self._current, retired=self._clock())
            self._current = None
            self._save()
        self._retired.pop(key.kid, None)
        self._current = key

    def _refresh(self) -> None:
        """Re-read the index when another process (`mcp-hub rotate-encryption-key`) changed it."""
        if self.configured is None and self._stamp() != self._index_stamp:
            self._load()

    def _stamp(self) -> tuple[int, int, int] | None:
        # The index is replaced, never rewritten in place: a new inode marks every change.
        try:
            stat = (self.folder / INDEX).stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _load(self) -> None:
        path = self.folder / INDEX
        self._index_stamp = self._stamp()
        if self._index_stamp is None:
            self._current, self._retired = None, {}
            return
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            entries = {str(kid): (float(meta["created"]), meta.get("retired")) for kid, meta in index["keys"].items()}
            current_kid = index.get("current")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{path} is not a keyring index; move it away to start a new keyring") from None
        now = self._clock()
        current: HubKey | None = None
        retired: dict[str, HubKey] = {}
        expired = False
        for kid, (created, retired_at) in entries.items():
            if retired_at is not None and now >= float(retired_at) + self.grace:
                expired = True
                self._delete(kid)
                continue
            private = self._read_private(kid)
            if private is None:
                expired = True
                continue
            key = HubKey(kid, private, created, None if retired_at is None else float(retired_at))
            if kid == current_kid and retired_at is None:
                current = key
            else:
                retired[kid] = key if key.retired is not None else replace(key, retired=now)
        self._current = current
        self._retired = retired
        if expired:
            self._save()

    def _read_private(self, kid: str) -> rsa.RSAPrivateKey | None:
        path = self.folder / f"{kid}.pem"
        try:
            os.chmod(path, 0o600)
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(f"cannot load the key file {path}") from None
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ConfigError(f"{path} does not hold an RSA key")
        return private

    def _write_private(self, key: HubKey) -> None:
        pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        _write_owner_only(self.folder / f"{key.kid}.pem", pem, exclusive=True)

    def _delete(self, kid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{kid}.pem").unlink()

    def _save(self) -> None:
        now = self._clock()
        for kid, key in list(self._retired.items()):
            if not self._in_grace(key, now):
                del self._retired[kid]
                self._delete(kid)
        keys = {k.kid: {"created": k.created, "retired": k.retired} for k in self._retired.values()}
        current = None
        if self._current is not None and self.configured is None:
            current = self._current.kid
            keys[current] = {"created": self._current.created, "retired": None}
        body = json.dumps({"current": current, "keys": keys}, indent=2).encode()
        tmp = self.folder / f".{INDEX}.{os.getpid()}.tmp"
        _write_owner_only(tmp, body, exclusive=False)
        os.replace(tmp, self.folder / INDEX)
        self._index_stamp = self._stamp()


def _write_owner_only(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write a file that only its owner can read (0600 from the first byte, whatever the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
