"""Hub API keys: created once, stored hashed, each belonging to a tenant.

A key looks like `mh_<id>_<secret>`; only SHA-256 of the whole key is stored, with the
id, tenant, name, role and timestamps. Keys are high-entropy random strings, so a fast
hash is enough (there is nothing to brute-force). The keys live in the durable-records
database (table `api_keys`, migrations owner "api_keys"), so every hub sharing the
database accepts the same keys.

Lookups are cached for `CACHE_SECONDS` so that a request costs no query: a revocation
(or a key created on another hub, for a key already tried here) takes effect within
that time on every hub; on the hub that made the change, at once. Whether the hub is
open (no key was ever created: revoked keys count, so revoking the last key never opens
it) is cached as long: a hub stays open at most `CACHE_SECONDS` after a key is created
on another hub.

Upgrade: keys of earlier versions lived in the SQLite file `<data_dir>/hub.sqlite3`.
`open(legacy=...)` imports them (same ids, hashes and times) when the database holds none
of them, once; the file is left in place and read for nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from .database import Database, Migration, records_database
from .errors import HubError, NotFound
from .settings import Settings

CACHE_SECONDS = 5.0
ROLES = ("member", "publisher", "admin")
STEPS = [Migration(1, (
    """CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        role TEXT NOT NULL DEFAULT 'member',
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    )""",
    "CREATE INDEX api_keys_active ON api_keys (revoked_at)",
))]
_COLUMNS = "id, hash, tenant, name, role, created_at, revoked_at"
_INSERT = f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
log = logging.getLogger("mcp_hub.apikeys")


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
    role: str = "member"


# A caller without a key: on public routes, and on a hub that never had a key. Never an admin
# (a browser page could be that caller), unless the operator opts in (`anonymous_admin`).
ANONYMOUS = Principal(tenant="default", key_id=None, role="member")
ANONYMOUS_ADMIN = Principal(tenant="default", key_id=None, role="admin")


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


def _record(row: dict[str, Any]) -> KeyRecord:
    revoked = row["revoked_at"]
    return KeyRecord(id=row["id"], tenant=row["tenant"], name=row["name"], role=row["role"],
                     created_at=float(row["created_at"]), revoked_at=None if revoked is None else float(revoked))


def read_legacy(path: Path) -> list[tuple[Any, ...]]:
    """The rows (in `_COLUMNS` order) of a key file of earlier versions; none if it has no keys."""
    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(path, timeout=10)
    except sqlite3.Error as exc:
        raise HubError(f"cannot open the legacy API key file {path}: {exc}", code="legacy_keys_unreadable") from None
    try:
        return db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at").fetchall()
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return []
        raise HubError(f"cannot read the legacy API key file {path}: {exc}", code="legacy_keys_unreadable") from None
    finally:
        db.close()


class KeyStore:
    """API keys in the records database; `open()` migrates (and imports legacy keys) first."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._open_checked = -CACHE_SECONDS
        self._open = False

    async def open(self, legacy: Path | None = None) -> KeyStore:
        """Create the table if needed; import the keys of the legacy file `legacy` if the database has none of them."""
        await self.database.migrate("api_keys", STEPS)
        if legacy is not None:
            await self._import(legacy)
        return self

    async def _import(self, path: Path) -> None:
        rows = await anyio.to_thread.run_sync(read_legacy, path)
        if not rows:
            return
        ids = [row[0] for row in rows]
        marks = ", ".join("?" for _ in ids)
        present = await self.database.fetch_all(f"SELECT id FROM api_keys WHERE id IN ({marks})", ids)
        if present:
            missing = len(ids) - len(present)
            if missing:
                log.warning("%d API key(s) of the legacy file %s are not in the records database and were not "
                            "imported (its keys were imported before); create them anew with `mcp-hub keys create`",
                            missing, path)
            return
        async with self.database.transaction() as tx:
            # DO NOTHING: another hub may be importing the same file at the same moment.
            await tx.execute_many(f"{_INSERT} ON CONFLICT DO NOTHING", rows)
        self._forget()
        active = sum(1 for row in rows if row[6] is None)
        log.warning("imported %d API key(s) (%d active) from the legacy file %s into the records database; "
                    "that file is no longer used for keys", len(rows), active, path)

    def _forget(self) -> None:
        self._cache.clear()
        self._open_checked = -CACHE_SECONDS

    async def create(self, tenant: str, name: str = "", role: str = "member") -> tuple[str, KeyRecord]:
        """A new key: returns the key (shown once) and its record."""
        if role not in ROLES:
            raise HubError(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
        if not tenant or len(tenant) > 128:
            raise HubError("tenant must be 1-128 characters", code="invalid_tenant")
        key_id = secrets.token_hex(6)
        key = f"mh_{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(id=key_id, tenant=tenant, name=name, role=role, created_at=time.time(), revoked_at=None)
        async with self.database.transaction() as tx:
            await tx.execute(_INSERT, (record.id, _digest(key), tenant, name, role, record.created_at, None))
        self._forget()
        return key, record

    async def list(self) -> list[KeyRecord]:
        rows = await self.database.fetch_all(
            "SELECT id, tenant, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at, id")
        return [_record(row) for row in rows]

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoke a key (revoking a revoked key changes nothing); its record."""
        async with self.database.transaction() as tx:
            await tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                             (time.time(), key_id))
            row = await tx.fetch_one("SELECT id, tenant, name, role, created_at, revoked_at FROM api_keys WHERE id = ?",
                                     (key_id,))
        self._forget()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}", code="key_not_found")
        return _record(row)

    async def active_count(self) -> int:
        """Active (unrevoked) keys in the database, uncached."""
        row = await self.database.fetch_one("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
        return int(row["n"]) if row else 0

    async def key_count(self) -> int:
        """Keys ever created (revoked ones too), uncached."""
        row = await self.database.fetch_one("SELECT COUNT(*) AS n FROM api_keys")
        return int(row["n"]) if row else 0

    async def is_open(self) -> bool:
        """Whether no key was ever created, so the hub is open (cached for `CACHE_SECONDS`).

        Revoked keys count: revoking every key leaves the hub closed (nobody's key works), it
        does not hand it to anonymous callers."""
        now = time.monotonic()
        if now - self._open_checked >= CACHE_SECONDS:
            self._open = await self.database.fetch_one("SELECT id FROM api_keys LIMIT 1") is None
            self._open_checked = now
        return self._open

    async def lookup(self, key: str) -> Principal | None:
        """The principal of an active key, or None (cached for `CACHE_SECONDS`)."""
        digest = _digest(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        row = await self.database.fetch_one(
            "SELECT id, tenant, role FROM api_keys WHERE hash = ? AND revoked_at IS NULL", (digest,))
        principal = Principal(tenant=row["tenant"], key_id=row["id"], role=row["role"]) if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal


@asynccontextmanager
async def open_key_store(settings: Settings) -> AsyncIterator[KeyStore]:
    """The key store of the records database named by `settings`, without a running hub (CLI, tests)."""
    async with records_database(settings) as database:
        yield await KeyStore(database).open(legacy=settings.keys_path)
