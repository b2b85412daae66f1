"""The CLI's connection settings (flags > environment > config file > testbed) and
`nfvha user add`."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    assert conn == ManagerConn("https://config:8600", "from-config", str(tmp_path / "ca.pem"))


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
    assert _manager_conn(_args(), env) == ManagerConn("https://env:1", "from-env-file",
                                                      "/env/ca.pem")
    env["NFVHA_TOKEN"] = "from-env"  # the token itself beats a token file
    assert _manager_conn(_args(), env).token == "from-env"


def test_flags_beat_the_environment_and_the_config_file(config: Path, tmp_path: Path) -> None:
    env = {"NFVHA_CONFIG": str(config), "NFVHA_URL": "https://env:1", "NFVHA_TOKEN": "e"}
    args = _args("--url", "https://flag:2", "--token-file",
                 _secret(tmp_path / "flag-token", "from-flag"), "--ca-file", "/flag/ca.pem")
    assert _manager_conn(args, env) == ManagerConn("https://flag:2", "from-flag",
                                                   "/flag/ca.pem")
    # Each setting on its own: what the flags leave out comes from further down.
    conn = _manager_conn(_args("--url", "https://flag:2"), env)
    assert conn == ManagerConn("https://flag:2", "e", str(tmp_path / "ca.pem"))


def test_flags_need_no_testbed(tmp_path: Path) -> None:
    args = _args("--url", "http://m:1", "--token-file", _secret(tmp_path / "t", "x"),
                 "--name", "nosuchtb")
    assert _manager_conn(args, {"HOME": str(tmp_path)}) == ManagerConn("http://m:1", "x")


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
