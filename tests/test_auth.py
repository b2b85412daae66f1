"""Operator credentials and roles: hashing, the users file, and what each credential may
do on the manager's real API (in process)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.store.sqlite import SqliteStore
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.auth import (
    Role,
    UsersFileError,
    add_user,
    hash_secret,
    load_users,
    verify_secret,
)
from nfvha.vnfm.manager import Manager, ManagerConfig

CLUSTER = "cluster-token"

# -- hashing ------------------------------------------------------------------------------


def test_a_hash_verifies_its_secret_only() -> None:
    h = hash_secret("alice.s3cret")
    assert h.startswith("scrypt$16384$8$1$")
    assert verify_secret("alice.s3cret", h)
    assert not verify_secret("alice.s3cres", h)
    assert not verify_secret("", h)
    assert not verify_secret("alice.s3cret\u00e9", h)  # non-ASCII: False, not an error


def test_each_hash_has_its_own_salt() -> None:
    a, b = hash_secret("same"), hash_secret("same")
    assert a != b and a.split("$")[4] != b.split("$")[4]
    assert verify_secret("same", a) and verify_secret("same", b)


@pytest.mark.parametrize("entry", [
    "", "scrypt$x$8$1$AAAA$AAAA", "md5$16384$8$1$AAAA$AAAA", "scrypt$16384$8$1$!!$AAAA",
    "scrypt$16384$8$1$AAAA$",
    "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==",  # 1 TiB
])
def test_a_malformed_or_costly_entry_matches_nothing(entry: str) -> None:
    assert not verify_secret("anything", entry)


# -- the users file -----------------------------------------------------------------------

def test_add_user_writes_a_private_file_without_the_credential(tmp_path: Path) -> None:
    f = tmp_path / "etc" / "users.yaml"
    token = add_user(f, "alice", "operator")
    assert token.startswith("alice.") and len(token) > 40
    assert f.stat().st_mode & 0o777 == 0o600
    text = f.read_text()
    assert token.split(".", 1)[1] not in text
    users = load_users(f)
    assert users["alice"].role is Role.OPERATOR and verify_secret(token, users["alice"].hash)


def test_rotating_a_credential_ends_the_old_one(tmp_path: Path) -> None:
    f = tmp_path / "users.json"
    old = add_user(f, "bob", "viewer")
    add_user(f, "alice", "operator")
    new = add_user(f, "bob", "viewer")
    users = load_users(f)
    assert sorted(users) == ["alice", "bob"]
    assert verify_secret(new, users["bob"].hash) and not verify_secret(old, users["bob"].hash)
    assert json.loads(f.read_text())["users"][1]["name"] == "bob"  # JSON for *.json


@pytest.mark.parametrize(("content", "message"), [
    ("users: {alice: x}", "expected `users:`"),
    ("users: [{name: Alice, role: viewer, hash: 'scrypt$1$1$1$a$b'}]", "name 'Alice'"),
    ("users: [{name: a, role: admin, hash: 'scrypt$1$1$1$a$b'}]", "role 'admin'"),
    ("users: [{name: a, role: viewer, hash: plain}]", "hash must be scrypt"),
    ("users: [{name: a, role: viewer, hash: 'scrypt$1$1$1$a$b'},"
     " {name: a, role: viewer, hash: 'scrypt$1$1$1$a$b'}]", "appears twice"),
    ("users: [", "not YAML or JSON"),
])
def test_a_bad_users_file_says_what_is_wrong(tmp_path: Path, content: str,
                                             message: str) -> None:
    f = tmp_path / "users.yaml"
    f.write_text(content)
    f.chmod(0o600)
    with pytest.raises(UsersFileError, match=message):
        load_users(f)


def test_a_users_file_others_can_read_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "users.yaml"
    add_user(f, "alice", "viewer")
    f.chmod(0o640)
    with pytest.raises(UsersFileError, match="chmod 600"):
        load_users(f)
    with pytest.raises(UsersFileError, match="chmod 600"):
        add_user(f, "bob", "viewer")  # and nothing is added to it


def test_bad_names_and_roles_are_refused_by_the_tool(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="user name"):
        add_user(tmp_path / "u.yaml", "a.b", "viewer")
    with pytest.raises(UsersFileError, match="role 'root'"):
        add_user(tmp_path / "u.yaml", "ab", "root")
    assert not (tmp_path / "u.yaml").exists()


# -- roles on the manager's API -----------------------------------------------------------

class Client:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def call(self, method: str, path: str, token: str | None,
                   **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}".encode()} if token is not None else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                     base_url="http://manager") as c:
            return await c.request(method, path, headers=headers, **kw)


@pytest.fixture
async def roles(tmp_path: Path) -> AsyncIterator[tuple[Client, Manager, dict[str, str]]]:
    users = tmp_path / "users.yaml"
    tokens = {"operator": add_user(users, "ops", "operator"),
              "viewer": add_user(users, "noc", "viewer")}
    m = Manager(SqliteStore(tmp_path / "m.db"),
                ManagerConfig(token=CLUSTER, users_file=users,
                              secret_key_file=tmp_path / "m.key"))
    try:
        yield Client(create_manager_app(m, manage_lifecycle=False)), m, tokens
    finally:
        await m.close()
        m.store.close()


_VNFD = {"vnfd": {"id": "v", "command": ["/bin/true"],
                  "network": {"address": "10.9.1.5/16"}}}


async def test_a_viewer_reads_everything(roles: tuple[Client, Manager, dict[str, str]]) -> None:
    c, _, tok = roles
    for path in ("/vnflcm/v1/vnf_instances", "/nfvha/v1/hosts", "/vnffm/v1/alarms",
                 "/vnflcm/v1/subscriptions", "/dashboard/v1/state", "/metrics"):
        r = await c.call("GET", path, tok["viewer"])
        assert r.status_code == 200, (path, r.text)


async def test_a_viewer_cannot_change_anything_and_is_told_which_role(
        roles: tuple[Client, Manager, dict[str, str]]) -> None:
    c, m, tok = roles
    attempts = [("POST", "/nfvha/v1/vnfds", {"json": _VNFD}),
                ("POST", "/vnflcm/v1/vnf_instances", {"json": {"vnfdId": "v"}}),
                ("POST", "/vnflcm/v1/vnf_instances/x/heal", {"json": {}}),
                ("POST", "/vnflcm/v1/vnf_instances/x/terminate", {"json": {}}),
                ("DELETE", "/vnflcm/v1/vnf_instances/x", {}),
                ("POST", "/nfvha/v1/vnf_instances/x/move", {"json": {}}),
                ("POST", "/nfvha/v1/vnf_instances/x/inject", {"json": {"fault": "kill"}}),
                ("POST", "/nfvha/v1/hosts/h1/fence", {}),
                ("POST", "/vnffm/v1/subscriptions", {"json": {"callbackUri": "http://x/"}})]
    for method, path, kw in attempts:
        r = await c.call(method, path, tok["viewer"], **kw)
        assert r.status_code == 403, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        detail = r.json()["detail"]
        assert "needs the operator role" in detail and "'noc' has the viewer role" in detail
    for kind in ("vnfd", "vnf", "subscription", "op"):
        assert m.store.list(kind) == [], kind  # nothing stored from a refused request


async def test_an_operator_deploys(roles: tuple[Client, Manager, dict[str, str]]) -> None:
    c, m, tok = roles
    r = await c.call("POST", "/nfvha/v1/vnfds", tok["operator"], json=_VNFD)
    assert r.status_code == 201, r.text
    r = await c.call("POST", "/vnflcm/v1/vnf_instances", tok["operator"],
                     json={"vnfdId": "v", "vnfInstanceId": "a"})
    assert r.status_code == 201, r.text
    assert [v.id for v in m.store.list("vnf")] == ["a"]
    r = await c.call("DELETE", "/vnflcm/v1/vnf_instances/a", tok["operator"])
    assert r.status_code == 204, r.text


@pytest.mark.parametrize("token", [None, "", "nobody.xyz", "ops.wrong-secret", "ops",
                                   "t\u00e9st", "noc." + "A" * 43])
async def test_an_unknown_credential_is_401(roles: tuple[Client, Manager, dict[str, str]],
                                            token: str | None) -> None:
    c, _, _ = roles
    for method, path in (("GET", "/vnflcm/v1/vnf_instances"),
                         ("POST", "/vnflcm/v1/vnf_instances")):
        r = await c.call(method, path, token, json={"vnfdId": "v"})
        assert r.status_code == 401, (token, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_the_cluster_token_is_for_the_daemons_calls_only(
        roles: tuple[Client, Manager, dict[str, str]]) -> None:
    c, m, tok = roles
    report = {"url": "http://10.0.0.11:8700", "instances": []}
    r = await c.call("POST", "/nfvha/v1/hosts/h1/heartbeat", CLUSTER, json=report)
    assert r.status_code == 200, r.text
    for method, path in (("GET", "/vnflcm/v1/vnf_instances"),
                         ("POST", "/vnflcm/v1/vnf_instances")):
        r = await c.call(method, path, CLUSTER, json={"vnfdId": "v"})
        assert r.status_code == 403 and "daemons' credential" in r.json()["detail"], r.text
    # An operator is not a daemon: it cannot forge an agent's status report.
    r = await c.call("POST", "/nfvha/v1/hosts/h2/heartbeat", tok["operator"], json=report)
    assert r.status_code == 403 and "own daemons" in r.json()["detail"]
    assert [h.id for h in m.store.list("host")] == ["h1"]


async def test_credentials_added_or_rotated_apply_without_a_restart(
        roles: tuple[Client, Manager, dict[str, str]], tmp_path: Path) -> None:
    c, _, tok = roles
    users = tmp_path / "users.yaml"
    path = "/vnflcm/v1/vnf_instances"
    assert (await c.call("GET", path, tok["viewer"])).status_code == 200  # cached now
    new_viewer = add_user(users, "noc", "viewer")
    assert (await c.call("GET", path, tok["viewer"])).status_code == 401
    assert (await c.call("GET", path, new_viewer)).status_code == 200
    late = add_user(users, "late", "operator")
    assert (await c.call("POST", "/nfvha/v1/vnfds", late, json=_VNFD)).status_code == 201
    # A users file broken by hand: user credentials are refused, the daemons keep going.
    users.write_text("users: [")
    r = await c.call("GET", path, late)
    assert r.status_code == 401 and "users file" in r.json()["detail"]
    r = await c.call("POST", "/nfvha/v1/hosts/h1/heartbeat", CLUSTER,
                     json={"url": "http://10.0.0.11:8700", "instances": []})
    assert r.status_code == 200


async def test_without_a_users_file_the_cluster_token_has_every_role(
        manager: Manager) -> None:
    c = Client(create_manager_app(manager, manage_lifecycle=False))
    r = await c.call("POST", "/nfvha/v1/vnfds", "t", json=_VNFD)
    assert r.status_code == 201, r.text
    assert (await c.call("GET", "/vnflcm/v1/vnf_instances", "t")).status_code == 200
    assert (await c.call("GET", "/vnflcm/v1/vnf_instances", "ops.x")).status_code == 401


def test_the_manager_does_not_start_with_a_bad_users_file(tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    users.write_text("users: [{name: a, role: admin, hash: x}]")
    users.chmod(0o600)
    m = Manager(SqliteStore(tmp_path / "m.db"), ManagerConfig(token=CLUSTER, users_file=users))
    try:
        with pytest.raises(UsersFileError, match="role 'admin'"):
            create_manager_app(m, manage_lifecycle=False)
    finally:
        m.store.close()
