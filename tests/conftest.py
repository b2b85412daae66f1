"""Shared test settings: every resource a test makes is named with TEST_PREFIX."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

TEST_PREFIX = "nfvt"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "vnfs"


def real_system_ready() -> str | None:
    """Why e2e tests cannot run here, or None. `make test` installs everything, so a
    missing piece fails loudly rather than skipping quietly."""
    if os.geteuid() != 0:
        return "e2e tests need root (namespaces, cgroups, CRIU)"
    for tool in ("ip", "criu", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed; run `make deps`"
    return None


@pytest.fixture(scope="session")
def python_bin() -> str:
    return sys.executable
