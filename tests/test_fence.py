"""Active fencing: fence-agent drivers, their configuration, and the testbed agent."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfvha.errors import ConfigError
from nfvha.ha import fence_testbed
from nfvha.ha.fence_testbed import parse_options
from nfvha.ha.fencing import FenceAgentDriver, FenceResult, load_fence_config
from tests.conftest import TEST_PREFIX

SECRET = "Sw0rdf1sh-7731"
OPTIONS = {"ip": "10.0.0.5", "username": "admin", "password": SECRET, "lanplus": "1"}
TESTBED_AGENT = [sys.executable, "-S", fence_testbed.__file__]


def fake_agent(tmp_path: Path, on_off: str, on_status: str = "echo 'Status: OFF'; exit 2"
               ) -> Path:
    """A fence agent that appends each stdin it gets to ``calls`` and then runs the shell
    snippet for the action it was given."""
    script = tmp_path / "fence_fake"
    script.write_text(
        "#!/bin/sh\n"
        f'[ $# -eq 0 ] || {{ echo "unexpected arguments: $*" >&2; exit 9; }}\n'
        "input=$(cat)\n"
        f"printf '%s\\n--\\n' \"$input\" >> {tmp_path}/calls\n"
        "action=$(printf '%s\\n' \"$input\" | sed -n 's/^action=//p' | tail -n 1)\n"
        f'case "$action" in\n  off) {on_off};;\n  status) {on_status};;\nesac\nexit 7\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def calls(tmp_path: Path) -> list[str]:
    return [c.strip("\n") for c in (tmp_path / "calls").read_text().split("--\n") if c.strip()]


def assert_no_secret(result: FenceResult, driver: FenceAgentDriver) -> None:
    assert SECRET not in str(result.as_dict())
    assert SECRET not in repr(result)
    assert SECRET not in repr(driver)


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet: either way it runs no more code."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


# -- the driver, against fake agents ------------------------------------------------


async def test_off_confirmed_by_status_is_ok(tmp_path: Path) -> None:
    driver = FenceAgentDriver("h1", str(fake_agent(tmp_path, "exit 0")), OPTIONS)
    result = await driver.off()
    assert (result.ok, result.status, result.action, result.host) == (True, "off", "off", "h1")
    assert result.driver == "fence_fake"
    assert "confirms OFF" in result.detail
    off_call, status_call = calls(tmp_path)
    # The fence-agents protocol: options as key=value lines, the action last.
    assert off_call.splitlines() == [f"{k}={v}" for k, v in OPTIONS.items()] + ["action=off"]
    assert status_call.splitlines()[-1] == "action=status"
    assert_no_secret(result, driver)


async def test_failed_off_is_not_ok_and_says_why(tmp_path: Path) -> None:
    msg = "Failed: Unable to obtain correct plug status or plug is not available"
    agent = fake_agent(tmp_path, f"echo 'ERROR: {msg}' >&2; exit 1")
    result = await FenceAgentDriver("h1", str(agent), OPTIONS).off()
    assert (result.ok, result.status) == (False, "unknown")
    assert result.detail == f"fence_fake off exited 1: ERROR: {msg}"
    assert len(calls(tmp_path)) == 1  # no status query after a failed off


async def test_host_still_on_after_off_is_not_ok(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "exit 0", "echo 'Status: ON'; exit 0")
    result = await FenceAgentDriver("h2", str(agent), OPTIONS).off()
    assert (result.ok, result.status) == (False, "on")
    assert "still reports ON" in result.detail


async def test_unconfirmable_off_is_not_ok(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "exit 0", "echo 'ERROR: Connection timed out' >&2; exit 1")
    result = await FenceAgentDriver("h2", str(agent), OPTIONS).off()
    assert (result.ok, result.status) == (False, "unknown")
    assert "could not confirm" in result.detail and "Connection timed out" in result.detail


@pytest.mark.parametrize(("code", "ok", "status"),
                         [(0, False, "on"), (2, True, "off"), (1, False, "unknown")])
async def test_status_exit_codes(tmp_path: Path, code: int, ok: bool, status: str) -> None:
    agent = fake_agent(tmp_path, "exit 0", f"exit {code}")
    result = await FenceAgentDriver("h3", str(agent), {}).status()
    assert (result.ok, result.status, result.action) == (ok, status, "status")


async def test_hanging_agent_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    agent = fake_agent(tmp_path, f"echo powering off; sleep 60 & echo $! > {pidfile}; wait")
    driver = FenceAgentDriver("h4", str(agent), OPTIONS, timeout_s=0.5)
    t0 = time.monotonic()
    result = await driver.off()
    assert time.monotonic() - t0 < 0.5 + 1.5
    assert (result.ok, result.status) == (False, "unknown")
    assert result.detail == "fence_fake off timed out after 0.5 s: powering off"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while not _dead(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _dead(child), "the agent's child survived the process-group kill"


async def test_password_is_never_shown_even_if_the_agent_echoes_it(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, 'printf "%s\\n" "$input" >&2; exit 1')
    driver = FenceAgentDriver("h1", str(agent), OPTIONS)
    result = await driver.off()
    assert not result.ok
    assert "password=***" in result.detail  # the echo is there, the secret is not
    assert_no_secret(result, driver)
    assert "password=***" in repr(driver) and "ip=10.0.0.5" in repr(driver)


async def test_missing_agent_binary_is_a_result_not_an_exception(tmp_path: Path) -> None:
    result = await FenceAgentDriver("h1", str(tmp_path / "fence_gone"), {}).off()
    assert (result.ok, result.status) == (False, "unknown")
    assert "cannot start" in result.detail and "No such file" in result.detail


def test_option_that_would_inject_a_line_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line break"):
        FenceAgentDriver("h1", "/bin/true", {"plug": "3\naction=on"})


# -- configuration ------------------------------------------------------------------


def test_load_fence_config_from_yaml(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "exit 0")
    path = tmp_path / "fence.yaml"
    path.write_text(
        "hosts:\n"
        "  h1: {agent: fence_ipmilan_probe, options: {ip: 10.0.0.5, ipport: 623,"
        f" username: admin, password: {SECRET}, lanplus: true, inet6_only: false}}, timeout: 4}}\n"
        f"  h2: {{agent: {agent}}}\n"
    )
    # A bare name is looked up on PATH and in /usr/sbin; put one on PATH for the test.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "fence_ipmilan_probe").symlink_to(agent)
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{tmp_path / 'bin'}:{old_path}"
    try:
        drivers = load_fence_config(path)
    finally:
        os.environ["PATH"] = old_path
    h1, h2 = drivers["h1"], drivers["h2"]
    assert h1.argv == [str(tmp_path / "bin" / "fence_ipmilan_probe")]
    assert h1.options == {"ip": "10.0.0.5", "ipport": "623", "username": "admin",
                          "password": SECRET, "lanplus": "1", "inet6_only": "0"}
    assert (h1.timeout_s, h1.name, h1.host) == (4.0, "fence_ipmilan_probe", "h1")
    assert (h2.argv, h2.options, h2.timeout_s) == ([str(agent)], {}, 10.0)


def test_testbed_fence_config_loads() -> None:
    drivers = load_fence_config(fence_testbed.testbed_fence_config("tb1", ["h1", "h2"], "/tmp/x"))
    assert sorted(drivers) == ["h1", "h2"]
    h2 = drivers["h2"]
    assert h2.argv == TESTBED_AGENT and h2.name == "fence_testbed" and h2.timeout_s == 5
    assert h2.options == {"testbed": "tb1", "plug": "h2", "state_dir": "/tmp/x"}


@pytest.mark.parametrize(("host", "hint"), [
    ({"agent": "/bin/true", "opts": {}}, "host 'h1', field opts: unknown key; remove it"),
    ({"agent": "/bin/true", "options": {"IP": "x"}}, "option name 'IP' is not valid"),
    ({"agent": "/bin/true", "options": {"bad name": "x"}}, "option name 'bad name'"),
    ({"agent": "/bin/true", "options": {"action": "reboot"}}, "set by nfvha for each call"),
    ({"agent": "fence_does_not_exist_x"}, "neither on PATH nor in /usr/sbin: install it"),
    ({"agent": "bin/fence_x"}, "relative path"),
    ({"agent": "/proc/self/status"}, "not an executable file"),
    ({"agent": []}, "argv list must be non-empty"),
    ({"agent": "/bin/true", "timeout": 0}, "field timeout: Input should be greater than 0"),
    ({"options": {}}, "host 'h1', field agent: required; add it"),
    ({"agent": "/bin/true", "options": {"plug": "1\naction=on"}}, "line break"),
    ({"agent": "/bin/true", "options": {"plug": [1]}}, "field options.plug"),
])
def test_config_errors_name_host_field_and_fix(host: dict[str, object], hint: str) -> None:
    host = {**host}
    if isinstance(host.get("options"), dict):
        host["options"] = {**host["options"], "password": SECRET}  # type: ignore[dict-item]
    with pytest.raises(ConfigError) as err:
        load_fence_config({"hosts": {"h1": host}})
    text = str(err.value)
    assert hint in text
    assert "'h1'" in text
    assert SECRET not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_config_unknown_top_level_key_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="field fencing: unknown key"):
        load_fence_config({"hosts": {}, "fencing": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"hosts:\n  h1: {{agent: x, options: {{password: {SECRET}\n")
    with pytest.raises(ConfigError, match="not valid YAML at line") as err:
        load_fence_config(bad)
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match="cannot read fence config"):
        load_fence_config(tmp_path / "absent.yaml")


# -- the real Debian fence agents -------------------------------------------------------

FENCE_DUMMY = Path("/usr/sbin/fence_dummy")
FENCE_IPMILAN = Path("/usr/sbin/fence_ipmilan")


@pytest.fixture
def fence_agents() -> None:
    """`make test` installs Debian's fence agents (scripts/setup.sh): missing, they are a
    failure of the set-up, not a reason to skip."""
    missing = [str(p) for p in (FENCE_DUMMY, FENCE_IPMILAN) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing; run `make deps` (scripts/setup.sh)")


needs_agents = pytest.mark.usefixtures("fence_agents")


@needs_agents
@pytest.mark.parametrize("agent", [FENCE_IPMILAN, FENCE_DUMMY])
def test_real_agent_metadata_names_the_agent(agent: Path) -> None:
    out = subprocess.run([str(agent)], input="action=metadata\n", capture_output=True,
                         text=True, timeout=30, check=True).stdout
    root = ET.fromstring(out)
    assert root.tag == "resource-agent" and root.get("name") == agent.name
    params = {p.get("name") for p in root.iter("parameter")}
    assert "action" in params
    assert {a.get("name") for a in root.iter("action")} >= {"off", "status"}


@needs_agents
async def test_real_fence_dummy_off_is_confirmed(tmp_path: Path) -> None:
    status_file = tmp_path / "power"
    status_file.write_text("on")
    driver = FenceAgentDriver("h1", "/usr/sbin/fence_dummy", {"status_file": str(status_file)})
    assert (await driver.status()).status == "on"
    result = await driver.off()
    assert (result.ok, result.status) == (True, "off"), result.detail
    assert status_file.read_text() == "off"


@needs_agents
async def test_real_fence_ipmilan_without_a_bmc_fails_in_bounded_time() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    options = {"ip": "127.0.0.1", "ipport": str(closed_port), "username": "admin",
               "password": SECRET, "lanplus": "1", "login_timeout": "1", "power_timeout": "1",
               "shell_timeout": "1", "ipmitool_timeout": "1"}
    [driver] = load_fence_config(
        {"hosts": {"bmc-less": {"agent": "fence_ipmilan", "options": options, "timeout": 15}}}
    ).values()
    t0 = time.monotonic()
    result = await driver.off()
    assert time.monotonic() - t0 < 10
    assert (result.ok, result.status, result.driver) == (False, "unknown", "fence_ipmilan")
    assert result.detail.startswith("fence_ipmilan off exited 1: "), result.detail
    assert "Connection timed out" in result.detail or "Unable" in result.detail, result.detail
    assert_no_secret(result, driver)


# -- the testbed fence agent ----------------------------------------------------------


def run_testbed_agent(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(TESTBED_AGENT, input=stdin, capture_output=True, text=True,
                          timeout=30, check=False)


def write_testbed(state_dir: Path, name: str, hosts: dict[str, dict[str, str]]) -> None:
    d = state_dir / f"testbed-{name}"
    d.mkdir(parents=True)
    (d / "testbed.json").write_text(
        json.dumps({"name": name, "hosts": hosts}))


def test_testbed_agent_metadata() -> None:
    done = run_testbed_agent("action=metadata\n")
    assert done.returncode == 0
    root = ET.fromstring(done.stdout)
    assert root.get("name") == "fence_nfvha_testbed"
    assert {p.get("name") for p in root.iter("parameter")} >= {"action", "plug", "testbed"}
    assert {a.get("name") for a in root.iter("action")} >= {"off", "status", "monitor"}


def test_testbed_agent_parses_options_like_fencing_py() -> None:
    opts = parse_options(["# comment", "", "  port=h3 ", 'testbed="tb"', "action=on",
                          "action=status", "state-dir=/x"])
    assert opts == {"testbed": "tb", "state_dir": "/x", "port": "h3", "plug": "h3",
                    "action": "status"}
    assert parse_options([]) == {"testbed": "nfvha", "state_dir": "/run/nfvha"}


def test_testbed_agent_actions_without_root(tmp_path: Path) -> None:
    """A host whose uplink and cgroup are both gone is OFF; errors exit 1 and say why."""
    gone = {"uplink": f"{TEST_PREFIX}gone0", "cgroup": f"{TEST_PREFIX}-gone-{os.getpid()}/h1",
            "netns": "tb-h1"}
    write_testbed(tmp_path, "tb", {"h1": gone})
    base = f"testbed=tb\nstate_dir={tmp_path}\n"
    status = run_testbed_agent(base + "plug=h1\naction=status\n")
    assert (status.returncode, status.stdout) == (2, "Status: OFF\n"), status.stderr
    assert run_testbed_agent(base + "action=monitor\n").returncode == 0
    listing = run_testbed_agent(base + "action=list\n")
    assert (listing.returncode, listing.stdout) == (0, "h1,tb-h1\n")
    for stdin, code, words in [
        (base + "plug=h7\naction=status\n", 1, "host 'h7' is not in testbed tb (hosts: h1)"),
        (base + "plug=h1\naction=on\n", 1, "nfvha testbed revive"),
        (base + "plug=h1\naction=dance\n", 1, "unknown action 'dance'"),
        (base + "action=status\n", 1, "give plug="),
        (f"testbed=nope\nstate_dir={tmp_path}\naction=monitor\n", 1, "is testbed nope up?"),
    ]:
        done = run_testbed_agent(stdin)
        assert done.returncode == code and words in done.stderr, (stdin, done.stderr)
        assert "Traceback" not in done.stderr


# -- the testbed agent for real: a veth and a cgroup with a process in it -------------


@pytest.fixture
def fenceable_host(tmp_path: Path) -> Iterator[tuple[dict[str, str], subprocess.Popen[bytes]]]:
    """Two root-netns veths (the host's data and management uplinks), a cgroup with
    `sleep 60` in it, and a testbed.json naming them; everything removed afterwards,
    whatever happened."""
    from nfvha.vim.cgroups import CgroupDriver, CgroupLimits

    tag = os.getpid() % 100000
    uplink, peer = f"{TEST_PREFIX}f{tag}a", f"{TEST_PREFIX}f{tag}b"
    mgmt, mgmt_peer = f"{TEST_PREFIX}f{tag}m", f"{TEST_PREFIX}f{tag}n"
    top = CgroupDriver.detect().cgroup(f"{TEST_PREFIX}-fence-{os.getpid()}")
    cgroup = CgroupDriver.detect().cgroup(f"{top.path}/h9")
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "link", "add", uplink, "type", "veth", "peer", "name", peer],
                       check=True, timeout=10)
        subprocess.run(["ip", "link", "set", uplink, "up"], check=True, timeout=10)
        subprocess.run(["ip", "link", "add", mgmt, "type", "veth", "peer", "name", mgmt_peer],
                       check=True, timeout=10)
        subprocess.run(["ip", "link", "set", mgmt, "up"], check=True, timeout=10)
        cgroup.create(CgroupLimits())
        procs = [str(p) for p in cgroup.procs_paths()]

        def join() -> None:
            for path in procs:
                with open(path, "w") as f:
                    f.write("0")

        proc = subprocess.Popen(["sleep", "60"], preexec_fn=join)
        host = {"uplink": uplink, "mgmt_uplink": mgmt, "cgroup": cgroup.path,
                "netns": f"{TEST_PREFIX}-h9"}
        write_testbed(tmp_path, "fencetest", {"h9": host})
        yield host, proc
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        for link in (uplink, mgmt):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10,
                           check=False)
        top.delete()


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a veth and a cgroup")
async def test_testbed_agent_fences_a_host_for_real(
        tmp_path: Path, fenceable_host: tuple[dict[str, str], subprocess.Popen[bytes]]) -> None:
    host, sleeper = fenceable_host
    [driver] = load_fence_config(
        fence_testbed.testbed_fence_config("fencetest", ["h9"], state_dir=str(tmp_path))).values()

    before = await driver.status()
    assert (before.ok, before.status) == (False, "on"), before.detail

    result = await driver.off()
    assert (result.ok, result.status) == (True, "off"), result.detail
    assert sleeper.wait(timeout=5) == -9  # SIGKILLed, as a power cut would
    for link in ("uplink", "mgmt_uplink"):  # a host still on either network is not off
        flags = int(Path(f"/sys/class/net/{host[link]}/flags").read_text(), 16)
        assert flags & 0x1 == 0, f"the {link} is still up"

    after = await driver.status()
    assert (after.ok, after.status) == (True, "off"), after.detail
    again = await driver.off()  # fencing a fenced host is fine: still OFF
    assert again.ok, again.detail
