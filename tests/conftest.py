"""Shared fixtures: registries of real test servers, a running hub, and its HTTP API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2
import pytest

from mcp_hub.app import create_app
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

pytest_plugins = ["tests.model_fixtures"]
# The suite's MCP servers listen on loopback, which the egress guard blocks by default. Every
# hub the tests build (in this process or a child) allows it; tests/test_egress.py passes
# `egress_allow=[]` where it checks the default.
os.environ.setdefault("MCP_HUB_EGRESS_ALLOW", "127.0.0.0/8,::1,localhost")
T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "fixtures" / "probe_server.py"
HEADER_SERVER = ROOT / "tests" / "fixtures" / "header_server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 20.0) -> None:
    """Block until something accepts on 127.0.0.1:port (bounded; fails if the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listened on port {port} within {timeout}s")


def spawn(args: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server process in its own process group and wait until it listens."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        wait_for_port(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, 9)
            proc.wait()


def probe_entry(*, sandbox: bool = True, **version: Any) -> dict[str, Any]:
    """A registry entry for the probe server; `sandbox=False` where a test needs its host pid or host files."""
    return {"description": "probe", "tags": ["test"], "versions": {"1.0.0": {"command": ["{python}", str(PROBE)], **version}},
            **({} if sandbox else {"sandbox": False})}


@pytest.fixture
def header_url(tmp_path: Path) -> Iterator[str]:
    """The header server (its tool reports the request headers it got) over streamable HTTP; its URL."""
    port = free_port()
    proc = spawn([sys.executable, str(HEADER_SERVER), "--http", str(port)], port, tmp_path / "header-server.log")
    yield f"http://127.0.0.1:{port}/mcp"
    stop(proc)


@pytest.fixture
def probe_http(tmp_path: Path) -> Iterator[str]:
    """The probe server over streamable HTTP on 127.0.0.1; yields its URL."""
    port = free_port()
    proc = spawn([sys.executable, str(PROBE), "--http", str(port)], port, tmp_path / "probe-http.log")
    yield f"http://127.0.0.1:{port}/mcp"
    stop(proc)


REDIS_URL = "redis://127.0.0.1:6379/15"  # a database of its own; each test also gets its own key prefix


@pytest.fixture
def redis_state() -> Iterator[tuple[str, str]]:
    """(url, prefix) of the local Redis for one test; its keys are deleted afterwards.

    Skips when Redis is unreachable, except in CI (`CI=true`), where that is a failure.
    """
    import uuid

    import redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        client.close()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable in CI: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    prefix = f"mcp-hub-test:{uuid.uuid4().hex}:"
    try:
        yield REDIS_URL, prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose tables land in a fresh schema of their own, dropped afterwards.

    Skips when PostgreSQL is unreachable, except in CI (`CI=true`), where that is a failure.
    """
    import uuid

    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")
    schema = f"t_{uuid.uuid4().hex}"
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def registry() -> Registry:
    return Registry.from_data({"servers": {"test/probe": probe_entry()}}, root=ROOT)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", connect_timeout=20, restart_backoff=0.05)


async def create_key(settings: Settings, tenant: str, name: str = "", role: str = "member") -> str:
    """A new hub API key in the records database of `settings` (as `mcp-hub keys create` makes it)."""
    from mcp_hub.apikeys import open_key_store

    async with open_key_store(settings) as keys:
        return (await keys.create(tenant, name, role))[0]


def create_key_now(settings: Settings, tenant: str, name: str = "", role: str = "member") -> str:
    """`create_key` from synchronous code, even code an event loop called (in a thread of its own)."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(anyio.run, create_key, settings, tenant, name, role).result()


@contextlib.asynccontextmanager
async def owned(context: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter and exit `context` in one dedicated task.

    pytest-asyncio runs a fixture's setup and teardown in different tasks, but the
    hub holds anyio task groups that must be exited by the task that entered them.
    """
    ready: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def owner() -> None:
        try:
            async with context as value:
                ready.set_result(value)
                await done.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    task = asyncio.create_task(owner())
    try:
        yield await ready
    finally:
        done.set()
        await task


@pytest.fixture
async def hub(settings: Settings, registry: Registry) -> AsyncIterator[Hub]:
    async with owned(Hub(settings, registry)) as running:
        yield running


@contextlib.asynccontextmanager
async def asgi_client(settings: Settings, registry: Registry,
                      timeout: float = 30) -> AsyncIterator[tuple[httpx2.AsyncClient, Hub]]:
    """An HTTP client for the hub's app in-process (its lifespan running), and the hub."""
    app = create_app(settings, registry)
    async with owned(app.router.lifespan_context(app)) as state:
        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        assert state is not None
        transport = httpx2.ASGITransport(app=with_state)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000", timeout=timeout) as client:
            yield client, state["hub"]


@pytest.fixture
async def api(settings: Settings, registry: Registry) -> AsyncIterator[httpx2.AsyncClient]:
    """An HTTP client for the hub's API, with the app's lifespan running."""
    async with asgi_client(settings, registry) as (client, _):
        yield client
