"""`nfvha status` and the client commands against a real manager cluster (`nfvha up
--managers 3`): status names the leader the members agree on; when the leader is
killed, the commands, given every manager by the testbed's config, find the new one."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from nfvha.testbed import Testbed
from tests.conftest import TEST_PREFIX
from tests.e2e.conftest import keep_logs
from tests.e2e.test_testbed_cluster import agreed_leader, nfvha
from tests.vnfclient import wait_until


def test_status_names_the_leader_and_commands_follow_a_new_one(tmp_path: Path) -> None:
    name = f"{TEST_PREFIX}sc{os.getpid() % 100}"
    n = ("--name", name)
    subnet = f"10.{40 + os.getpid() % 10}.0.0/16"
    try:
        info = json.loads(nfvha("up", *n, "--managers", "3", "--hosts", "0", "--subnet",
                                subnet, "--json").stdout)
        urls = info["manager_urls"]
        leader = wait_until(lambda: agreed_leader(Testbed.load(name)), 10)

        def status() -> dict[str, Any]:
            return json.loads(nfvha("status", *n, "--json").stdout)  # type: ignore[no-any-return]

        st = status()
        assert st["cluster"]["mode"] == "cluster"
        assert st["cluster"]["leader"]["member"] == leader
        term = st["cluster"]["leader"]["term"]
        assert [m["url"] for m in st["managers"]] == urls
        assert [m["member"] for m in st["managers"] if m["leader"]] == [leader]
        assert sum(m["answered"] for m in st["managers"]) == 1
        text = nfvha("status", *n).stdout
        lead_url = info["managers"][leader]
        assert f"leader: {leader} at {lead_url}, term {term}, since" in text

        # The leader dies: status, asked through the same config, names its successor.
        nfvha("inject", "kill-manager", leader, *n)
        new = wait_until(lambda: agreed_leader(Testbed.load(name),
                                               among=set(info["managers"]) - {leader}), 10)
        st = wait_until(lambda: (s := status())["cluster"]["leader"]
                        and s["cluster"]["leader"]["member"] == new and s, 10)
        assert st["cluster"]["leader"]["term"] > term
        assert next(m for m in st["managers"] if m["leader"])["url"] == info["managers"][new]

        # A write goes to the new leader whichever manager is asked first (the first URL
        # may be the dead one, or a follower): the operation is the new leader's.
        base = subnet.split(".0.0/")[0]
        vnfd = tmp_path / "fm.yaml"
        vnfd.write_text(f"vnfd:\n  id: clfm\n  command: [sleep, '1000']\n"
                        f"  network: {{address: {base}.1.5/16}}\n")
        out = json.loads(nfvha("deploy", str(vnfd), "--id", "clfm-1", *n, "--json").stdout)
        assert out["operation"].startswith(info["managers"][new] + "/vnflcm/v1/")
    finally:
        with contextlib.suppress(Exception):
            keep_logs(Testbed.load(name))
        subprocess.run([sys.executable, "-m", "nfvha", "down", *n], capture_output=True,
                       timeout=120, check=False)
