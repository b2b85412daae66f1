"""The `nfvha` command as an operator uses it: up, deploy, status, inject, ops, heal, down."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nfvha.demo import VNF_SCRIPTS
from nfvha.testbed import Testbed
from tests.conftest import EXAMPLES, TEST_PREFIX, VNF_PYTHON
from tests.e2e.conftest import keep_logs
from tests.vnfclient import wait_until

NAME = f"{TEST_PREFIX}c{os.getpid() % 1000}"[:8]


def nfvha(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "nfvha", *args], capture_output=True, text=True,
                       timeout=120, check=False)
    if check:
        assert r.returncode == 0, f"nfvha {' '.join(args)}: {r.stderr}"
    return r


def jcall(*args: str) -> Any:
    return json.loads(nfvha(*args, "--name", NAME, "--json").stdout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    subnet = f"10.{60 + os.getpid() % 30}.0.0/16"
    try:
        info = json.loads(nfvha("up", "--name", NAME, "--hosts", "2", "--subnet", subnet,
                                "--json").stdout)
        yield {**info, "subnet": subnet}
    finally:
        with contextlib.suppress(Exception):
            keep_logs(Testbed.load(NAME))
        nfvha("down", "--name", NAME, check=False)


def test_up_deploy_status_inject_heal_down(cluster: dict[str, Any], tmp_path: Path) -> None:
    assert cluster["manager_url"].startswith("https://") and len(cluster["hosts"]) == 2
    assert Path(cluster["ca_file"]).is_file()
    assert Path(cluster["token_file"]).stat().st_mode & 0o077 == 0  # the token is private
    base = cluster["subnet"].split(".0.0/")[0]
    vnfd = tmp_path / "fm.yaml"
    vnfd.write_text(f"""
vnfd:
  id: clifm
  command: [{VNF_PYTHON}, {VNF_SCRIPTS}/flowmon.py]
  volumes: [{{source: {EXAMPLES}, target: {VNF_SCRIPTS}}}]
  network: {{address: {base}.1.5/16}}
  ha:
    checkpoint_interval: 0.5
    probe: {{type: udp, port: 5001, send: PING, expect: PONG, interval: 0.1, timeout: 0.1}}
""")
    out = jcall("deploy", str(vnfd), "--id", "clifm-1")
    assert out["vnfInstanceId"] == "clifm-1" and "/vnf_lcm_op_occs/" in out["operation"]
    wait_until(lambda: any(v["haState"] == "ACTIVE" for v in jcall("status")["vnfs"]), 15)
    wait_until(lambda: len(jcall("checkpoints")) >= 1, 10)

    jcall("inject", "kill-vnf", "clifm-1")
    wait_until(lambda: any(o["operation"] == "HEAL" and o["operationState"] == "COMPLETED"
                           for o in jcall("ops")), 15)
    heal = [o for o in jcall("ops") if o["operation"] == "HEAL"][-1]
    assert heal["isAutomaticInvocation"]
    assert heal["nfvha"]["strategy"] in ("restore-local", "restore-remote")  # state kept

    jcall("heal", "clifm-1")
    wait_until(lambda: sum(o["operation"] == "HEAL" and o["operationState"] == "COMPLETED"
                           for o in jcall("ops")) >= 2, 15)
    manual = [o for o in jcall("ops") if o["operation"] == "HEAL"][-1]
    assert manual["isAutomaticInvocation"] is False
    status = jcall("status")
    assert [v["haState"] for v in status["vnfs"]] == ["ACTIVE"]
    assert {h["state"] for h in status["hosts"]} == {"UP"}


def test_operator_and_viewer_credentials_of_nfvha_up(cluster: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """`nfvha up` made an operator and a viewer credential, and a config file the CLI
    reads: the operator deploys through it, the viewer reads and is refused a heal."""
    files = [Path(cluster[k]) for k in ("token_file", "viewer_token_file", "config_file")]
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)  # private
    assert Path(cluster["ca_file"]).is_file()  # the testbed's CA: its daemons use TLS
    config = json.loads(Path(cluster["config_file"]).read_text())
    assert config == {"manager_url": cluster["manager_url"],
                      "manager_urls": [cluster["manager_url"]],
                      "token_file": cluster["token_file"], "ca_file": cluster["ca_file"]}
    cfg_env = {**os.environ, "NFVHA_CONFIG": cluster["config_file"]}
    base = cluster["subnet"].split(".0.0/")[0]
    vnfd = tmp_path / "rl.yaml"
    vnfd.write_text(f"""
vnfd:
  id: clirl
  command: [{VNF_PYTHON}, {VNF_SCRIPTS}/flowmon.py]
  volumes: [{{source: {EXAMPLES}, target: {VNF_SCRIPTS}}}]
  network: {{address: {base}.1.9/16}}
""")
    # No --name: the manager and the operator credential come from the config file.
    r = subprocess.run([sys.executable, "-m", "nfvha", "deploy", str(vnfd), "--id", "clirl-1",
                        "--json"], capture_output=True, text=True, timeout=120, env=cfg_env,
                       check=False)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: any(v["id"] == "clirl-1" and v["haState"] == "ACTIVE"
                           for v in jcall("status")["vnfs"]), 15)

    viewer = ["--url", cluster["manager_url"], "--token-file", cluster["viewer_token_file"],
              "--ca-file", cluster["ca_file"]]
    assert "clirl-1" in {v["id"] for v in json.loads(
        nfvha("status", *viewer, "--json").stdout)["vnfs"]}
    ops_before = len(jcall("ops"))
    r = nfvha("heal", "clirl-1", *viewer, check=False)
    assert r.returncode == 1 and "403" in r.stderr and "needs the operator role" in r.stderr
    assert len(jcall("ops")) == ops_before  # no operation started
    # The daemons' cluster token is no operator credential either.
    r = nfvha("heal", "clirl-1", "--url", cluster["manager_url"], "--token-file",
              str(Path(cluster["token_file"]).parent / "token"), "--ca-file", cluster["ca_file"],
              check=False)
    assert r.returncode == 1 and "403" in r.stderr and "daemons' credential" in r.stderr


def test_bad_input_says_what_is_wrong(cluster: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("vnfd:\n  id: x\n  command: []\n")
    r = nfvha("deploy", str(bad), "--name", NAME, check=False)
    assert r.returncode == 1 and "command" in r.stderr and "network" in r.stderr
    r = nfvha("heal", "no-such-vnf", "--name", NAME, check=False)
    assert r.returncode == 1 and "no-such-vnf" in r.stderr
    r = nfvha("status", "--name", "nfvtnone", check=False)
    assert r.returncode == 1 and "nfvha up" in r.stderr
