"""The audit writer outlives a lost PostgreSQL connection: 503 `audit_unavailable` while the database is
away (nothing queues up), success again once it is back, without a restart, and a chain that verifies.

The shared PostgreSQL stays up: the test terminates only its own backends (by application name), or
reaches the database through a TCP proxy it closes and reopens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import httpx2
import psycopg

from mcp_hub.audit.child import Reconnecting, Unreachable
from mcp_hub.database import Steps, T
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import POSTGRES_URL, ROOT, asgi_client, probe_entry
from .tcp_proxy import TcpProxy

REGISTRY = {"servers": {"test/plain": probe_entry()}}
DEADLINE = 30.0


def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", database_url=database_url, restart_backoff=0.05,
                         connect_timeout=10, audit_commit_delay=0)


async def call(http: httpx2.AsyncClient, text: str) -> httpx2.Response:
    return await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "echo", "arguments": {"text": text}})


def assert_withheld(response: httpx2.Response, text: str) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "audit_unavailable" and text not in response.text


async def until_recorded(http: httpx2.AsyncClient, text: str) -> list[str]:
    """Call until one succeeds (within the deadline); the texts of the calls that were withheld meanwhile."""
    withheld: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while True:
        attempt = f"{text}-{len(withheld)}"
        response = await call(http, attempt)
        if response.status_code == 200:
            return withheld
        assert_withheld(response, attempt)
        withheld.append(attempt)
        assert time.monotonic() < deadline, "the audit trail did not recover"


async def assert_consistent(http: httpx2.AsyncClient, recorded: list[str]) -> None:
    report = (await http.get("/v1/audit/verify")).json()
    assert report["ok"] is True, report
    texts = [r["arguments"]["text"] for r in (await http.get("/v1/audit/tool-calls", params={"limit": "500"})).json()["data"]]
    assert set(recorded) <= set(texts) and report["records_checked"] == len(texts)


def terminate(application_name: str) -> int:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                             (application_name,)).fetchall()
    return len(rows)


async def test_terminated_backends_are_replaced(tmp_path: Path, postgres_url: str) -> None:
    name = f"mcp-hub-test-{uuid4().hex[:12]}"
    url = f"{postgres_url}&application_name={name}"
    async with asgi_client(settings(tmp_path, url), Registry.from_data(REGISTRY, root=ROOT)) as (http, _):
        assert (await call(http, "before")).status_code == 200
        assert terminate(name) >= 2  # the hub's pool and the writer process
        response = await call(http, "during")  # a lost connection is retried once on a new one
        assert response.status_code == 200 or response.json()["error"]["code"] == "audit_unavailable"
        await until_recorded(http, "after")
        for i in range(3):
            assert (await call(http, f"later-{i}")).status_code == 200
        assert terminate(name) >= 1
        await until_recorded(http, "again")
        await assert_consistent(http, ["before", "after-0", "later-0", "later-1", "later-2", "again-0"])


async def test_a_database_away_for_a_while_answers_503_then_recovers(tmp_path: Path, postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    assert parts.hostname is not None and parts.port is not None
    with TcpProxy((parts.hostname, parts.port)) as proxy:
        url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        async with asgi_client(settings(tmp_path, url), Registry.from_data(REGISTRY, root=ROOT)) as (http, hub):
            assert (await call(http, "before")).status_code == 200
            proxy.close()
            started = time.monotonic()
            for i in range(20):  # answered promptly (no unbounded queue): each call is refused, not parked
                assert_withheld(await call(http, f"down-{i}"), f"down-{i}")
            assert time.monotonic() - started < DEADLINE
            assert not hub.audit.writer._pending  # nothing waits for the database
            proxy.open()
            await until_recorded(http, "back")
            assert (await call(http, "next")).status_code == 200
            await assert_consistent(http, ["before", "next"])


def test_the_writer_backs_off_while_it_cannot_connect(tmp_path: Path) -> None:
    """Unit: a lost connection is replaced at once; while that fails, attempts are spaced out (doubling)."""
    now = [0.0]
    attempts: list[float] = []

    class Lost:
        lost = True

        def run(self, steps: Steps[T]) -> T:
            raise OSError("gone")

        def close(self) -> None:
            pass

    where: dict[str, Any] = {"url": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", "sqlite_path": None}
    writer = Reconnecting(where, Lost(), clock=lambda: now[0])

    def attempt() -> type[Exception]:
        attempts.append(now[0])
        try:
            writer.run(lambda: iter(()))  # type: ignore[arg-type, return-value]
        except Exception as exc:
            return type(exc)
        raise AssertionError("a write succeeded without a database")

    assert attempt() is not Unreachable  # the lost connection, then a refused new one
    assert attempt() is Unreachable  # within the backoff: refused at once
    now[0] += 0.05
    assert attempt() is not Unreachable
    now[0] += 0.05
    assert attempt() is Unreachable  # the backoff doubled to 0.1 s
    now[0] += 0.05
    assert attempt() is not Unreachable
