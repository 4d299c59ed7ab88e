"""Pytest fixtures for the scripted upstream model (`tests/fixtures/scripted_model.py`).

Registered for the whole suite by `pytest_plugins = ["tests.model_fixtures"]` in
`tests/conftest.py`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fixtures.scripted_model import Call, Recorded, Reply, ScriptClient, ScriptedModel, ToolThenAnswer

__all__ = ["Call", "Recorded", "Reply", "ScriptClient", "ScriptedModel", "ToolThenAnswer"]

SCRIPT = Path(__file__).resolve().parent / "fixtures" / "scripted_model.py"


@pytest.fixture
def scripted_model() -> Iterator[ScriptedModel]:
    """A scripted model served in-process over real HTTP; `.openai_url`, `.anthropic_url`, `.push(...)`."""
    with ScriptedModel.serve() as model:
        yield model


@pytest.fixture
def scripted_model_process(tmp_path: Path) -> Iterator[ScriptClient]:
    """A scripted model in its own process (benchmark-like); scripted over its control routes."""
    from .conftest import free_port, spawn, stop

    port = free_port()
    proc = spawn([sys.executable, str(SCRIPT), "--port", str(port)], port, tmp_path / "scripted-model.log")
    try:
        yield ScriptClient(f"http://127.0.0.1:{port}")
    finally:
        stop(proc)
