"""Runs last: nothing any test made (all named with TEST_PREFIX) may be left behind."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import TEST_PREFIX
from tests.etcdmember import DATA_DIR_PREFIX as ETCD_DATA_DIR_PREFIX


def _out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout


def test_no_namespace_veth_cgroup_or_vnf_process_is_left() -> None:
    netns = [ln.split()[0] for ln in _out("ip", "netns", "list").splitlines() if ln.strip()]
    assert [n for n in netns if n.startswith(TEST_PREFIX)] == []
    links = _out("ip", "-o", "link", "show")
    assert [ln for ln in links.splitlines() if f" {TEST_PREFIX}" in ln] == []
    tables = [ln for ln in _out("nft", "list", "tables").splitlines()
              if ln.split()[-1:] and ln.split()[-1].startswith(f"nfvha_{TEST_PREFIX}")]
    assert tables == []  # the testbeds' data/management separation, in the root netns
    cgroups = [p for p in Path("/sys/fs/cgroup").glob(f"**/{TEST_PREFIX}*") if p.is_dir()]
    assert cgroups == []
    assert not list(Path("/run/nfvha-test").glob("testbed-*"))
    assert not list(Path(tempfile.gettempdir()).glob(f"{ETCD_DATA_DIR_PREFIX}*"))
    mine = os.getpid()
    vnfs = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == mine:
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        try:
            cgroup = (proc / "cgroup").read_text()
        except OSError:
            continue
        # Only what tests made: benchmarks and demos (other names) may run meanwhile.
        ours = f"/{TEST_PREFIX}" in cgroup or "/run/nfvha-test" in cmd
        if ours and ("examples/vnfs/" in cmd or "nfvha agent" in cmd):
            vnfs.append(f"{proc.name}: {cmd}")
        if cmd.startswith("etcd ") and f"/{ETCD_DATA_DIR_PREFIX}" in cmd:
            vnfs.append(f"{proc.name}: {cmd}")  # a test's etcd member (tests/etcdmember.py)
    assert vnfs == []
