"""Fence agent for emulated testbed hosts: what cutting power does to a real one.

Speaks the fence-agents stdin protocol (doc/FenceAgentAPI.md), so the manager drives it
exactly like fence_ipmilan: ``python -m nfvha.ha.fence_testbed`` with options on stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file with ``python -S`` (fast start): find the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

__all__ = ["AGENT_NAME", "main", "testbed_fence_config"]

AGENT_NAME = "fence_nfvha_testbed"
_EXIT_OK, _EXIT_ERROR, _EXIT_OFF = 0, 1, 2  # status: 0 = ON, 2 = OFF
_IFF_UP = 0x1
_DEFAULTS = {"testbed": "nfvha", "state_dir": "/run/nfvha"}

_METADATA = f"""<?xml version="1.0" ?>
<resource-agent name="{AGENT_NAME}" shortdesc="Fence agent for nfvha emulated testbed hosts">
<longdesc>Takes a testbed host's uplinks down and SIGKILLs every process in its cgroup, as a
switch-port shutdown plus a power cut would. Power-on is `nfvha testbed revive`.</longdesc>
<parameters>
	<parameter name="action" unique="0" required="1">
		<getopt mixed="action=[action]" />
		<content type="string" />
		<shortdesc lang="en">Fencing action: off, status, monitor, list or metadata</shortdesc>
	</parameter>
	<parameter name="plug" unique="0" required="1">
		<getopt mixed="plug=[host id]" />
		<content type="string" />
		<shortdesc lang="en">Testbed host id, e.g. h2 (port= is accepted too)</shortdesc>
	</parameter>
	<parameter name="testbed" unique="0" required="0">
		<getopt mixed="testbed=[name]" />
		<content type="string" default="nfvha" />
		<shortdesc lang="en">Testbed name</shortdesc>
	</parameter>
	<parameter name="state_dir" unique="0" required="0">
		<getopt mixed="state_dir=[directory]" />
		<content type="string" default="/run/nfvha" />
		<shortdesc lang="en">Directory holding testbed-NAME/testbed.json</shortdesc>
	</parameter>
</parameters>
<actions>
	<action name="off" />
	<action name="status" />
	<action name="monitor" />
	<action name="list" />
	<action name="metadata" />
</actions>
</resource-agent>
"""


class _Failed(Exception):
    """Ends the agent with exit 1 and this message on stderr."""


def parse_options(lines: Sequence[str]) -> dict[str, str]:
    """The fence-agents rules (lib/fencing.py.py, _parse_input_stdin): one key=value a
    line, blank and '#' lines skipped, quotes around a value dropped, the last one wins."""
    options: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        options[key.strip().removeprefix("--").replace("-", "_")] = value
    if "port" in options:
        options.setdefault("plug", options["port"])
    return {**_DEFAULTS, **options}


def _load(options: dict[str, str]) -> dict[str, Any]:
    path = Path(options["state_dir"]) / f"testbed-{options['testbed']}" / "testbed.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _Failed(f"cannot read {path}: {exc}; is testbed {options['testbed']} up?"
                      ) from exc
    return data


def _host(options: dict[str, str]) -> dict[str, Any]:
    data = _load(options)
    plug = options.get("plug")
    if not plug:
        raise _Failed("give plug=<host id> (e.g. plug=h2)")
    hosts: dict[str, Any] = data.get("hosts", {})
    if plug not in hosts:
        raise _Failed(f"host {plug!r} is not in testbed {options['testbed']} "
                      f"(hosts: {', '.join(sorted(hosts)) or 'none'})")
    host: dict[str, Any] = hosts[plug]
    return host


def _link_up(name: str) -> bool:
    """Administratively up (IFF_UP); an absent link is down."""
    try:
        return int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & _IFF_UP != 0
    except (OSError, ValueError):
        return False


def _freezer_dirs(path: str) -> list[Path]:
    """The host's cgroup in the hierarchies that hold its processes: the v1 freezer (a
    hybrid or v1 host) or the unified one. Found by path, not through ``nfvha.vim.cgroups``
    whose import alone costs ~30 ms here, a fence's whole budget (the host is killed in
    a general way by ``Testbed.crash_host``)."""
    return [d for d in (Path("/sys/fs/cgroup/freezer") / path, Path("/sys/fs/cgroup") / path,
                        Path("/sys/fs/cgroup/unified") / path) if d.is_dir()]


def _cgroup_pids(path: str) -> list[int]:
    pids: set[int] = set()
    for top in _freezer_dirs(path):
        for d, _, _ in os.walk(top):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(d, "cgroup.procs").read_text().split())
    return sorted(pids)


def _kill_cgroup(path: str, timeout: float = 5.0) -> None:
    """SIGKILL every process of the host at once: cgroup.kill (v2), else freeze, kill and
    thaw (v1), so that nothing forks away meanwhile; then until none is left."""
    tops = _freezer_dirs(path)
    for top in tops:
        if (top / "cgroup.kill").exists():
            (top / "cgroup.kill").write_text("1")
    freezer = next((t / "freezer.state" for t in tops if (t / "freezer.state").exists()), None)
    if freezer is not None:
        freezer.write_text("FROZEN")
    try:
        for pid in _cgroup_pids(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        if freezer is not None:
            for state in sorted(freezer.parent.rglob("freezer.state"), reverse=True):
                with contextlib.suppress(OSError):
                    state.write_text("THAWED")
    deadline = time.monotonic() + timeout
    while (left := _cgroup_pids(path)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)
    if left:
        raise _Failed(f"{len(left)} process(es) of the host survived SIGKILL (state D?)")


def _uplinks(host: dict[str, Any]) -> list[str]:
    """The host's data uplink and, where the testbed has one, its management uplink."""
    return [link for link in (host["uplink"], host.get("mgmt_uplink")) if link]


def _is_off(host: dict[str, Any]) -> bool:
    return (not any(_link_up(link) for link in _uplinks(host))
            and not _cgroup_pids(host["cgroup"]))


def _cut(uplink: str) -> None:
    """The link goes down through sysfs (IFF_UP cleared): no ``ip`` process to start."""
    flags = Path(f"/sys/class/net/{uplink}/flags")
    try:
        flags.write_text(hex(int(flags.read_text(), 16) & ~_IFF_UP))
    except FileNotFoundError:
        pass  # no link, nothing to cut
    except (OSError, ValueError):
        import subprocess  # only here: its import alone is a tenth of the fence's time

        done = subprocess.run(["ip", "link", "set", uplink, "down"], capture_output=True,
                              text=True, timeout=5, check=False)
        if done.returncode != 0 and _link_up(uplink):
            raise _Failed(f"ip link set {uplink} down: {done.stderr.strip()}") from None


def _off(host: dict[str, Any]) -> None:
    """Cut the networks first (management and data, as a switch-port shutdown of both
    would), so nothing the host does while dying reaches its peers or clients."""
    for uplink in _uplinks(host):
        _cut(uplink)
    _kill_cgroup(host["cgroup"])
    if not _is_off(host):
        raise _Failed("Failed: Timed out waiting to power OFF")


def run(options: dict[str, str]) -> int:
    """Carry out ``options["action"]``; the exit code follows doc/FenceAgentAPI.md."""
    action = options.get("action", "").lower()
    if action == "metadata":
        sys.stdout.write(_METADATA)
        return _EXIT_OK
    if action == "monitor":
        _load(options)
        return _EXIT_OK
    if action == "list":
        for hid, host in sorted(_load(options).get("hosts", {}).items()):
            print(f"{hid},{host.get('netns', '')}")
        return _EXIT_OK
    if action == "status":
        off = _is_off(_host(options))
        print(f"Status: {'OFF' if off else 'ON'}")
        return _EXIT_OFF if off else _EXIT_OK
    if action == "off":
        _off(_host(options))
        print("Success: Powered OFF")
        return _EXIT_OK
    if action in ("on", "reboot"):
        raise _Failed(f"action {action} is not possible here: power-on is done by "
                      "`nfvha testbed revive`")
    raise _Failed(f"unknown action {action!r}: use off, status, monitor, list or metadata"
                  if action else "give action=off|status|monitor|list|metadata")


def main(argv: Sequence[str] | None = None) -> int:
    """Options come on stdin; ``key=value`` arguments are accepted too, for debugging."""
    args = sys.argv[1:] if argv is None else list(argv)
    options = parse_options(args if args else sys.stdin.read().splitlines())
    try:
        return run(options)
    except _Failed as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except Exception as exc:  # an agent reports, it does not dump a traceback
        print(f"ERROR: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _EXIT_ERROR


def testbed_fence_config(testbed_name: str, host_ids: list[str],
                         state_dir: str = "/run/nfvha") -> dict[str, Any]:
    """A ``load_fence_config`` mapping that fences each testbed host with this agent."""
    return {"hosts": {
        # As a file with -S: no site-packages scan, so it starts in ~20 ms, not ~50.
        hid: {"agent": [sys.executable, "-S", str(Path(__file__).resolve())],
              "options": {"testbed": testbed_name, "plug": hid, "state_dir": str(state_dir)},
              "timeout": 5,
              # Its off checks link and cgroup itself before exiting 0: no second call.
              "verify": False}
        for hid in host_ids
    }}


if __name__ == "__main__":
    sys.exit(main())
