"""What a host cannot give a VNF is refused before its sandbox is made (no root needed)."""

from __future__ import annotations

import pytest

from nfvha.errors import HostCannotRun
from nfvha.vim import sandbox


def test_run_as_is_refused_where_criu_could_not_checkpoint_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_has_capability", lambda bit: False)
    with pytest.raises(HostCannotRun, match=r"CAP_SYS_RESOURCE.*run the VNF as root"):
        sandbox._check_run_as("65534:65534", "h1")
    sandbox._check_run_as("0:0", "h1")  # root is root: nothing to refuse
    sandbox._check_run_as(None, "h1")


def test_run_as_is_taken_where_root_holds_cap_sys_resource(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_has_capability", lambda bit: bit == 24)
    sandbox._check_run_as("65534", "h1")


def test_capabilities_are_read_from_this_process() -> None:
    # Bit 63 is no capability: never held; the answer for a real one is a bool.
    assert sandbox._has_capability(63) is False
    assert isinstance(sandbox._has_capability(0), bool)
