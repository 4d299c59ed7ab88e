"""Hub API keys: created once, stored hashed, each belonging to a tenant.

A key looks like `mh_<id>_<secret>`; only SHA-256 of the whole key is stored, with the
id, tenant, name, role and timestamps. Keys are high-entropy random strings, so a fast
hash is enough (there is nothing to brute-force). The store is a SQLite file in the
data folder; lookups are cached briefly so that a request costs no query, and a
revocation takes effect within `CACHE_SECONDS` on every hub sharing the file.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from .errors import HubError, NotFound

CACHE_SECONDS = 5.0
ROLES = ("member", "publisher", "admin")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL DEFAULT 'member',
    created_at REAL NOT NULL,
    revoked_at REAL
)
"""


class AuthError(HubError):
    """A missing, unknown or revoked API key (HTTP 401)."""

    status = 401
    code = "invalid_api_key"
    type = "authentication_error"


@dataclass(frozen=True)
class Principal:
    """Who a request is: the tenant and the key it used (never the key itself)."""

    tenant: str
    key_id: str | None = None
    role: str = "admin"


ANONYMOUS = Principal(tenant="default", key_id=None, role="admin")


@dataclass(frozen=True)
class KeyRecord:
    id: str
    tenant: str
    name: str
    role: str
    created_at: float
    revoked_at: float | None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """API keys in a SQLite file; every method is safe to call from async code via `lookup`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(_SCHEMA)
        return connection

    def create(self, tenant: str, name: str = "", role: str = "member") -> tuple[str, KeyRecord]:
        """A new key: returns the key (shown once) and its record."""
        if role not in ROLES:
            raise HubError(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
        if not tenant or len(tenant) > 128:
            raise HubError("tenant must be 1-128 characters", code="invalid_tenant")
        key_id = secrets.token_hex(6)
        key = f"mh_{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(id=key_id, tenant=tenant, name=name, role=role, created_at=time.time(), revoked_at=None)
        with self._connect() as db:
            db.execute("INSERT INTO api_keys (id, hash, tenant, name, role, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (record.id, _digest(key), tenant, name, role, record.created_at))
        return key, record

    def list(self) -> list[KeyRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT id, tenant, name, role, created_at, revoked_at FROM api_keys "
                              "ORDER BY created_at").fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke(self, key_id: str) -> KeyRecord:
        with self._connect() as db:
            updated = db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                 (time.time(), key_id)).rowcount
        self._cache.clear()
        record = next((r for r in self.list() if r.id == key_id), None)
        if record is None:
            raise NotFound(f"no API key with id {key_id!r}", code="key_not_found")
        if not updated and record.revoked_at is None:  # pragma: no cover - a race with another revoker
            raise NotFound(f"API key {key_id!r} could not be revoked", code="key_not_found")
        return record

    def active_count(self) -> int:
        if not self.path.exists():
            return 0
        with self._connect() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()
        return int(count)

    def _find(self, digest: str) -> Principal | None:
        if not self.path.exists():
            return None
        with self._connect() as db:
            row = db.execute("SELECT id, tenant, role FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
                             (digest,)).fetchone()
        return Principal(tenant=row[1], key_id=row[0], role=row[2]) if row else None

    async def lookup(self, key: str) -> Principal | None:
        """The principal of an active key, or None (cached for `CACHE_SECONDS`)."""
        digest = _digest(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        principal = await anyio.to_thread.run_sync(self._find, digest)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal
