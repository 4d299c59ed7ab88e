"""The session pool: live sessions keyed by tenant, target and credential, reused across requests.

The pool owns one task group (entered in the app lifespan) in which every session's
owner task runs, a reaper that closes sessions idle past `idle_timeout`, and the
caps on hosted children and on sessions overall. Closing the pool stops every
session and waits for each owner to close its transport (and so its child's
process group).
"""

from __future__ import annotations

import time
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from .credentials import Binding
from .errors import CapacityError
from .pinning import ToolGate
from .resolution import Target
from .sessions import ManagedSession, SessionKey, SessionPolicy
from .settings import Settings
from .transports import Opener

SHUTDOWN_GRACE = 10.0


class SessionPool:
    """Keyed, capped, reaped set of `ManagedSession`s."""

    def __init__(self, settings: Settings, opener: Opener, gate: ToolGate | None = None) -> None:
        self._settings = settings
        self._opener = opener
        self._gate = gate  # reviews every tool listing against its pins
        self._policy = SessionPolicy(
            connect_timeout=settings.connect_timeout,
            restart_backoff=settings.restart_backoff,
            restart_backoff_max=settings.restart_backoff_max,
            concurrency=settings.concurrency,
            busy_probe_timeout=settings.busy_probe_timeout,
        )
        self._sessions: dict[SessionKey, ManagedSession] = {}
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> SessionPool:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._reap_forever)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._tg is not None
        with anyio.CancelScope(shield=True):
            await self.close_all()
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(exc_type, exc, tb)
        self._tg = None

    async def close_all(self) -> None:
        """Stop every session and wait (bounded) for the owners to close their transports."""
        sessions = list(self._sessions.values())
        for session in sessions:
            session.stop()
        with anyio.move_on_after(SHUTDOWN_GRACE):
            for session in sessions:
                await session.finished.wait()
        self._sessions.clear()

    def sessions(self) -> list[ManagedSession]:
        return list(self._sessions.values())

    def get(self, target: Target, binding: Binding, tenant: str = "default") -> ManagedSession:
        """The live session for this key, started if there is none (returns at once)."""
        if self._tg is None:
            raise RuntimeError("the session pool is not open")
        key = SessionKey(tenant=tenant, ident=target.ident, credential=binding.fingerprint)
        session = self._sessions.get(key)
        if session is not None and session.alive:
            return session
        self._make_room(hosted=target.version.kind == "stdio", name=target.name)
        session = ManagedSession(key, target, binding, self._opener, self._policy, gate=self._gate)
        self._sessions[key] = session
        self._tg.start_soon(session.run)
        return session

    def _make_room(self, *, hosted: bool, name: str) -> None:
        """Drop dead sessions, then evict least recently used idle ones past a cap."""
        for key, session in list(self._sessions.items()):
            if not session.alive:
                del self._sessions[key]
        live = list(self._sessions.values())
        children = [s for s in live if s.hosted]
        if hosted and len(children) >= self._settings.max_children:
            self._evict(children, name, "hosted server processes", self._settings.max_children)
        elif len(live) >= self._settings.max_sessions:
            self._evict(live, name, "sessions", self._settings.max_sessions)

    def _evict(self, candidates: list[ManagedSession], name: str, what: str, cap: int) -> None:
        idle = sorted((s for s in candidates if s.in_flight == 0), key=lambda s: s.last_used)
        if not idle:
            raise CapacityError(f"the hub runs its maximum of {cap} {what}, all busy", server=name)
        victim = idle[0]
        victim.stop()
        del self._sessions[victim.key]

    async def _reap_forever(self) -> None:
        idle_timeout = self._settings.idle_timeout
        while True:
            await anyio.sleep(min(max(idle_timeout / 4, 0.05), 30.0))
            self.reap(idle_timeout)

    def reap(self, idle_timeout: float) -> list[ManagedSession]:
        """Stop sessions unused for `idle_timeout` seconds; return them."""
        now = time.monotonic()
        reaped = []
        for key, session in list(self._sessions.items()):
            if not session.alive:
                del self._sessions[key]
            elif session.in_flight == 0 and now - session.last_used > idle_timeout:
                session.stop()
                del self._sessions[key]
                reaped.append(session)
        return reaped
