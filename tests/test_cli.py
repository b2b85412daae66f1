"""The CLI's connection settings (flags > environment > config file > testbed) and
`nfvha user add`."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.cli import DEFAULT_TESTBED, ManagerConn, _manager_conn, build_parser, load_config, main
from nfvha.errors import NfvhaError
from nfvha.vnfm.auth import load_users, verify_secret


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["status", *argv])


def _secret(path: Path, token: str) -> str:
    path.write_text(token + "\n")
    return str(path)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "cfg-token").write_text("from-config\n")
    c = tmp_path / "config.yaml"
    c.write_text("manager_url: https://config:8600\ntoken_file: cfg-token\n"
                 "ca_file: ca.pem\n")
    return c


def test_the_config_file_alone(config: Path, tmp_path: Path) -> None:
    conn = _manager_conn(_args(), {"NFVHA_CONFIG": str(config)})
    # Relative files are relative to the config file.
    assert conn == ManagerConn(("https://config:8600",), "from-config",
                           str(tmp_path / "ca.pem"))


def test_the_default_config_file_is_under_xdg_config_home(config: Path,
                                                          tmp_path: Path) -> None:
    (tmp_path / "nfvha").mkdir()
    config.rename(tmp_path / "nfvha" / "config.yaml")
    (tmp_path / "cfg-token").rename(tmp_path / "nfvha" / "cfg-token")
    conn = _manager_conn(_args(), {"XDG_CONFIG_HOME": str(tmp_path)})
    assert conn.url == "https://config:8600" and conn.token == "from-config"


def test_the_environment_beats_the_config_file(config: Path, tmp_path: Path) -> None:
    env = {"NFVHA_CONFIG": str(config), "NFVHA_URL": "https://env:1",
           "NFVHA_TOKEN_FILE": _secret(tmp_path / "env-token", "from-env-file"),
           "NFVHA_CA_FILE": "/env/ca.pem"}
    assert _manager_conn(_args(), env) == ManagerConn(("https://env:1",), "from-env-file",
                                                      "/env/ca.pem")
    env["NFVHA_TOKEN"] = "from-env"  # the token itself beats a token file
    assert _manager_conn(_args(), env).token == "from-env"


def test_flags_beat_the_environment_and_the_config_file(config: Path, tmp_path: Path) -> None:
    env = {"NFVHA_CONFIG": str(config), "NFVHA_URL": "https://env:1", "NFVHA_TOKEN": "e"}
    args = _args("--url", "https://flag:2", "--token-file",
                 _secret(tmp_path / "flag-token", "from-flag"), "--ca-file", "/flag/ca.pem")
    assert _manager_conn(args, env) == ManagerConn(("https://flag:2",), "from-flag",
                                                   "/flag/ca.pem")
    # Each setting on its own: what the flags leave out comes from further down.
    conn = _manager_conn(_args("--url", "https://flag:2"), env)
    assert conn == ManagerConn(("https://flag:2",), "e", str(tmp_path / "ca.pem"))


def test_flags_need_no_testbed(tmp_path: Path) -> None:
    args = _args("--url", "http://m:1", "--token-file", _secret(tmp_path / "t", "x"),
                 "--name", "nosuchtb")
    assert _manager_conn(args, {"HOME": str(tmp_path)}) == ManagerConn(("http://m:1",), "x")


def test_a_cluster_from_each_source(config: Path, tmp_path: Path) -> None:
    """Every member's URL, from a flag or NFVHA_URL (commas) or the config file (a list,
    after the manager_url an older file has): the first is asked first."""
    env = {"NFVHA_CONFIG": str(config), "NFVHA_TOKEN": "e"}
    config.write_text(config.read_text() + "manager_urls: [https://c2:8600, https://c3:8600]\n")
    assert _manager_conn(_args(), env).urls == (
        "https://config:8600", "https://c2:8600", "https://c3:8600")
    env["NFVHA_URL"] = "https://e1:1, https://e2:1/"
    assert _manager_conn(_args(), env).urls == ("https://e1:1", "https://e2:1")
    args = _args("--url", "https://f1:2,https://f2:2,https://f1:2")
    assert _manager_conn(args, env).urls == ("https://f1:2", "https://f2:2")
    # A source's URLs are taken whole: no member of another source is mixed in, and
    # a stale variable does not spoil the flag that overrides it.
    env["NFVHA_URL"] = "not a url"
    assert _manager_conn(args, env).urls == ("https://f1:2", "https://f2:2")
    with pytest.raises(NfvhaError, match="NFVHA_URL: manager URL 'not a url'"):
        _manager_conn(_args(), env)


def test_a_cluster_config_lists_every_manager(tmp_path: Path) -> None:
    """`nfvha up --managers 3` writes manager_urls; a caller that knows one manager
    takes manager_url, or the first of the list where none is given."""
    (tmp_path / "t").write_text("x\n")
    c = tmp_path / "config.yaml"
    c.write_text("manager_urls: [https://a:8600, https://b:8600]\ntoken_file: t\n")
    assert _manager_conn(_args(), {"NFVHA_CONFIG": str(c)}).url == "https://a:8600"
    assert load_config(c, True)["manager_urls"] == ["https://a:8600", "https://b:8600"]
    c.write_text("manager_url: https://b:8600\nmanager_urls: [https://a:8600, "
                 "https://b:8600]\ntoken_file: t\n")
    assert _manager_conn(_args(), {"NFVHA_CONFIG": str(c)}).url == "https://b:8600"


def test_two_or_four_managers_are_refused_with_the_reason(
        capsys: pytest.CaptureFixture[str]) -> None:
    for n in ("2", "4"):  # refused before anything is made
        assert main(["up", "--managers", n, "--name", "nfvtnone"]) == 1
        err = capsys.readouterr().err
        assert f"managers={n}" in err and "majority" in err and "use 1, 3 or 5" in err


def test_an_inject_without_its_target_says_what_to_name(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inject", "kill-vnf", "--url", "http://m", "--token-file", "/nope"]) == 1
    assert "name the VNF instance" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    ("manager_url: http://m\ntoken: abc\n", "unknown key(s) token"),
    ("- manager_url\n", "expected keys"),
    ("manager_url: [1]\n", "manager_url must be a string"),
    ("manager_urls: http://m\n", "manager_urls must be a list"),
    ("manager_urls: []\n", "manager_urls must be a list"),
    ("manager_url: 'http://m\n", "not YAML"),
    ("manager_urls: http://m\n", "manager_urls must be a list of URLs"),
    ("manager_urls: [http://m, 3]\n", "manager_urls must be a list of URLs"),
    ("manager_urls: [http://m, 'ftp://x']\n", "manager URL 'ftp://x'"),
])
def test_a_bad_config_file_says_what_is_wrong(tmp_path: Path, content: str,
                                              message: str) -> None:
    c = tmp_path / "config.yaml"
    c.write_text(content)
    with pytest.raises(NfvhaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _manager_conn(_args(), {"NFVHA_CONFIG": str(c)})


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(NfvhaError, match="does not exist"):
        _manager_conn(_args(), {"NFVHA_CONFIG": str(tmp_path / "nope.yaml")})
    with pytest.raises(NfvhaError, match=r"token file .*nope"):
        _manager_conn(_args("--url", "http://m", "--token-file", str(tmp_path / "nope")),
                      {"HOME": str(tmp_path)})
    with pytest.raises(NfvhaError, match="no testbed nosuchtb is up"):
        _manager_conn(_args("--name", "nosuchtb"), {"HOME": str(tmp_path)})


@pytest.mark.skipif(Path(f"/run/nfvha/testbed-{DEFAULT_TESTBED}").exists(),
                    reason="a testbed named nfvha is up on this machine: the CLI uses it")
def test_with_nothing_to_go_on_the_cli_says_what_would_do(tmp_path: Path) -> None:
    with pytest.raises(NfvhaError) as err:
        _manager_conn(_args(), {"HOME": str(tmp_path)})
    for hint in ("--url", "NFVHA_URL", str(tmp_path / ".config/nfvha/config.yaml"),
                 "nfvha up"):
        assert hint in str(err.value)


def test_user_add_prints_the_credential_once(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users.yaml"
    assert main(["user", "add", "noc", "--role", "viewer", "--users-file", str(users)]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("noc.") and "shown once" in err
    assert verify_secret(token, load_users(users)["noc"].hash)
    assert users.stat().st_mode & 0o777 == 0o600
    tf = tmp_path / "ops.token"
    assert main(["user", "add", "ops", "--role", "operator", "--users-file", str(users),
                 "--token-file", str(tf)]) == 0
    out, _ = capsys.readouterr()
    assert out == "" and tf.stat().st_mode & 0o777 == 0o600
    assert verify_secret(tf.read_text().strip(), load_users(users)["ops"].hash)
    assert sorted(load_users(users)) == ["noc", "ops"]


def test_user_add_refuses_a_bad_name_with_a_message(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["user", "add", "No.Way", "--role", "viewer", "--users-file",
               str(tmp_path / "u.yaml")])
    assert rc == 1 and "user name 'No.Way'" in capsys.readouterr().err


# -- `nfvha status` against a manager cluster (stand-ins behind httpx.MockTransport) ----

SINCE = 1_700_000_000.0
_CLIENT = httpx.Client


def _view(member: str, leader: str | None, term: int = 12) -> dict[str, Any]:
    return {"mode": "cluster", "member": member, "url": f"https://{member}:8600",
            "leading": member == leader, "election": "leader key held by someone",
            "leader": None if leader is None else {
                "member": leader, "url": f"https://{leader}:8600", "term": term,
                "since": SINCE}}


def _members(**views: dict[str, Any]) -> httpx.MockTransport:
    """Managers by host: each answers its cluster view; the leader (the member whose view
    says it leads) heard host h1 40 ms ago, a follower knows its stored state only."""
    def answer(request: httpx.Request) -> httpx.Response:
        view = views[request.url.host]
        if request.url.path == "/nfvha/v1/cluster":
            return httpx.Response(200, json=view)
        if request.url.path == "/nfvha/v1/hosts":
            return httpx.Response(200, json=[{
                "id": "h1", "state": "UP", "instances": [],
                "lastHeartbeatAgoMs": 40 if view["leading"] else None}])
        return httpx.Response(200, json=[])
    return httpx.MockTransport(answer)


def _status(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
            transport: httpx.MockTransport, urls: str, *extra: str) -> str:
    monkeypatch.setattr(httpx, "Client", lambda **kw: _CLIENT(**{**kw, "transport": transport}))
    rc = main(["status", "--url", urls, "--token-file", _secret(tmp_path / "t", "x"), *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def test_status_shows_the_leader_and_which_manager_answered(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    members = _members(m1=_view("m1", "m2"), m2=_view("m2", "m2"), m3=_view("m3", "m2"))
    out = _status(monkeypatch, tmp_path, capsys, members,
                  "https://m1:8600,https://m2:8600,https://m3:8600")
    since = datetime.fromtimestamp(SINCE).strftime("%Y-%m-%d %H:%M:%S")
    assert f"leader: m2 at https://m2:8600, term 12, since {since}" in out
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()
            if line.startswith("│") and "https://m" in line]
    assert rows == [["m1", "https://m1:8600", "follower", "yes"],
                    ["m2", "https://m2:8600", "leader", ""],
                    ["?", "https://m3:8600", "", ""]]  # m3: not asked, nothing known
    # The hosts were read from the leader, which hears them.
    assert "│ h1   │ UP    │ 40 ms" in out
    assert "follower, which hears no heartbeats" not in out

    out = _status(monkeypatch, tmp_path, capsys, members,
                  "https://m1:8600,https://m2:8600,https://m3:8600", "--json")
    st = json.loads(out)
    assert st["cluster"]["leader"] == {"member": "m2", "url": "https://m2:8600", "term": 12,
                                       "since": SINCE}
    assert [(x["member"], x["answered"], x["leader"]) for x in st["managers"]] == [
        ("m1", True, False), ("m2", False, True), (None, False, False)]
    assert [h["state"] for h in st["hosts"]] == ["UP"]


def test_status_says_when_no_leader_can_be_reached(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = _status(monkeypatch, tmp_path, capsys, _members(m1=_view("m1", None)),
                  "https://m1:8600")
    assert "no leader" in out and "writes are refused" in out
    assert "a follower, which hears no heartbeats" in out
    assert "│ h1   │ UP    │ –" in out
    # A leader that is not among the managers given: writes to it would be refused.
    out = _status(monkeypatch, tmp_path, capsys, _members(m1=_view("m1", "m9")),
                  "https://m1:8600")
    assert "leader: m9 at https://m9:8600" in out
    assert "not among the managers given" in out and "a follower" in out


def test_status_of_a_single_manager_says_so_in_one_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    single = {"mode": "single", "member": None, "url": "http://127.0.0.1:8600",
              "leading": True, "leader": {"member": "manager", "url": "http://127.0.0.1:8600",
                                          "term": 0, "since": None}}
    out = _status(monkeypatch, tmp_path, capsys, _members(mgr=single), "https://mgr:8600")
    assert out.splitlines()[0] == "manager: https://mgr:8600 (single manager, no cluster)"
    assert "managers" not in out and "leader" not in out


# -- the forwarder pair: `nfvha up --forwarders`, `status`, `inject` ------------------------


def test_up_starts_a_forwarder_pair_unless_told_one() -> None:
    assert build_parser().parse_args(["up"]).forwarders == 2
    assert build_parser().parse_args(["up", "--forwarders", "1"]).forwarders == 1
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--forwarders", "3"])


PAIR = {"pair": True, "active": "in2", "term": 4, "alarm": None, "members": [
    {"id": "in1", "url": "https://172.31.250.5:8800", "role": "standby",
     "last_beat_ago_s": 0.21, "in_sync": True},
    {"id": "in2", "url": "https://172.31.250.4:8800", "role": "active",
     "last_beat_ago_s": 0.05, "in_sync": None}]}


def _with_forwarders(view: dict[str, Any] | None) -> httpx.MockTransport:
    """A single manager whose GET /nfvha/v1/forwarders answers ``view`` (None: 404)."""
    single = {"mode": "single", "member": None, "url": "https://mgr:8600", "leading": True,
              "leader": {"member": "manager", "url": "https://mgr:8600", "term": 0,
                         "since": None}}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/nfvha/v1/forwarders":
            return httpx.Response(404) if view is None else httpx.Response(200, json=view)
        if request.url.path == "/nfvha/v1/cluster":
            return httpx.Response(200, json=single)
        return httpx.Response(200, json=[])
    return httpx.MockTransport(answer)


def _table(out: str, first: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()
            if line.startswith("│") and line.split("│")[1].strip().startswith(first)]


def test_status_shows_which_forwarder_is_active(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = _status(monkeypatch, tmp_path, capsys, _with_forwarders(PAIR), "https://mgr:8600")
    assert "forwarders" in out
    assert _table(out, "in") == [["in1", "standby", "0.2 s ago", "yes"],
                                 ["in2", "active", "0.1 s ago", "–"]]
    assert "ALARM" not in out
    st = json.loads(_status(monkeypatch, tmp_path, capsys, _with_forwarders(PAIR),
                            "https://mgr:8600", "--json"))
    assert st["forwarders"] == PAIR
    lost = {**PAIR, "active": None, "alarm": "no forwarder is active: in2 silent for 3.0 s",
            "members": [{**PAIR["members"][0], "role": "demoted", "in_sync": False},
                        {**PAIR["members"][1], "role": "unknown", "last_beat_ago_s": None}]}
    out = _status(monkeypatch, tmp_path, capsys, _with_forwarders(lost), "https://mgr:8600")
    assert _table(out, "in") == [["in1", "demoted", "0.2 s ago", "no"],
                                 ["in2", "unknown", "–", "–"]]
    assert "ALARM forwarders: no forwarder is active: in2 silent for 3.0 s" in out


def test_status_of_a_manager_without_forwarders_says_nothing_of_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = _status(monkeypatch, tmp_path, capsys, _with_forwarders(None), "https://mgr:8600")
    assert "forwarders" not in out and "hosts" in out
    st = json.loads(_status(monkeypatch, tmp_path, capsys, _with_forwarders(None),
                            "https://mgr:8600", "--json"))
    assert st["forwarders"] is None


@pytest.mark.parametrize("argv", [["crash-ingress-host"], ["crash-ingress-host", "active"],
                                  ["kill-forwarder", "--heal"],
                                  ["kill-forwarder", "standby", "--heal"]])
def test_a_forwarder_fault_without_its_ingress_host_says_what_to_name(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inject", *argv, "--name", "nfvtnone"]) == 1
    assert "name the ingress host, e.g. in2" in capsys.readouterr().err


class FakeBed:
    """What ``nfvha inject`` asks of a testbed with a forwarder pair, recorded."""

    agent_restart_delay = 0.2

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def kill_forwarder(self, which: str) -> tuple[str, int]:
        self.calls.append(("kill_forwarder", which))
        return ("in2" if which in ("active", "in2") else "in1"), 4242

    async def crash_ingress_host(self, ingress_id: str) -> None:
        self.calls.append(("crash_ingress_host", ingress_id))

    async def restore_ingress_host(self, ingress_id: str) -> None:
        self.calls.append(("restore_ingress_host", ingress_id))

    def ingress_host(self, ingress_id: str) -> Any:
        return argparse.Namespace(pidfile=f"/run/x/forwarder-{ingress_id}.pid")


def test_inject_kills_the_active_forwarder_and_powers_ingress_hosts_off_and_on(
        capsys: pytest.CaptureFixture[str]) -> None:
    from nfvha.cli import _inject_forwarder

    def inject(*argv: str) -> str:
        assert _inject_forwarder(build_parser().parse_args(["inject", *argv]), bed) == 0
        return capsys.readouterr().out.strip()

    bed = FakeBed()
    assert inject("kill-forwarder") == ("in2: forwarder (pid 4242, the active one) killed; "
                                        "its supervisor starts it again in 0.2 s")
    assert inject("kill-forwarder", "standby").startswith("in1: forwarder (pid 4242, the "
                                                          "standby one) killed")
    assert inject("kill-forwarder", "in2").startswith("in2: forwarder (pid 4242) killed")
    assert inject("crash-ingress-host", "in2") == (
        "in2: links cut, every process killed (the forwarder and its supervisor)")
    assert inject("crash-ingress-host", "in2", "--heal").startswith("in2: powered on")
    assert bed.calls == [("kill_forwarder", "active"), ("kill_forwarder", "standby"),
                         ("kill_forwarder", "in2"), ("crash_ingress_host", "in2"),
                         ("restore_ingress_host", "in2")]
