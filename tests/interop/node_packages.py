"""Locating the npm packages the interop and conformance tests run (installed by `npm ci` from package-lock.json).

Tests run the packages' files with `node` directly, never `npx -y`, so nothing is
downloaded at run time. A checkout without `node_modules/` skips these tests on a
developer machine; under CI (`CI=true`) a missing package is a failure, because a
skipped interop suite would look green.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"


def node_package_file(*parts: str) -> Path:
    """The path of a file inside `node_modules/`; skips or fails the test when it cannot be run."""
    path = NODE_MODULES.joinpath(*parts)
    node = shutil.which("node")
    if path.is_file() and node is not None:
        return path
    problem = f"{path.relative_to(ROOT)} is not installed" if node is not None else "`node` is not on PATH"
    advice = f"run `npm ci` in {ROOT} (Node >= 20)"
    if not NODE_MODULES.exists() and os.environ.get("CI") != "true":
        pytest.skip(f"{problem}: {advice} to run the Node interop tests")
    pytest.fail(f"{problem}: {advice}", pytrace=False)
