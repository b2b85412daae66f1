"""Problem details carry a stable ``type`` per error class (docs/api.md), which clients
map back to the class: every daemon answers with it, and no two classes share one."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import nfvha
from nfvha.errors import (
    PROBLEM_PREFIX,
    ApiError,
    CheckpointCorrupt,
    CriuError,
    InstanceNotFound,
    NfvhaError,
    error_for_problem,
    problem_class,
    problem_type,
)
from nfvha.store.sqlite import SqliteStore
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.manager import Manager, ManagerConfig

TOKEN = "problem-token"


def _all_subclasses() -> list[type[NfvhaError]]:
    for mod in pkgutil.walk_packages(nfvha.__path__, "nfvha."):
        if mod.name not in ("nfvha.__main__",):
            importlib.import_module(mod.name)
    out: list[type[NfvhaError]] = []
    todo: list[type[NfvhaError]] = [NfvhaError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(c for c in cls.__subclasses__() if c.__module__.startswith("nfvha."))
    return out


def test_every_error_class_has_a_problem_type_of_its_own() -> None:
    classes = _all_subclasses()
    assert len(classes) > 30
    seen: dict[str, str] = {}
    for cls in classes:
        own = cls.__dict__.get("problem_type")
        assert own, f"{cls.__module__}.{cls.__name__} declares no problem_type"
        assert own.startswith(PROBLEM_PREFIX), cls
        assert own not in seen, f"{cls.__name__} and {seen[own]} share {own}"
        seen[own] = cls.__name__
        assert problem_class(own) is cls


def test_a_second_class_cannot_take_a_type() -> None:
    with pytest.raises(TypeError, match="already"):
        type("Copy", (NfvhaError,), {"problem_type": InstanceNotFound.problem_type})


def test_every_class_is_made_again_from_its_problem() -> None:
    for cls in _all_subclasses():
        exc = error_for_problem(409, {"type": cls.problem_type, "title": "t", "status": 409,
                                      "detail": "what went wrong"})
        assert type(exc) is cls
        assert "what went wrong" in str(exc)
        assert exc.problem is not None and exc.problem["status"] == 409


def test_a_problem_keeps_what_its_class_carries() -> None:
    exc = error_for_problem(422, {"type": CheckpointCorrupt.problem_type, "detail": "bad",
                                  "checkpoint": "fw-1/3", "file": "pages-1.img"})
    assert isinstance(exc, CheckpointCorrupt)
    assert (exc.checkpoint, exc.file) == ("fw-1/3", "pages-1.img")
    exc2 = error_for_problem(500, {"type": "urn:nfvha:problem:criu-failed", "detail": "no",
                                   "criu_log": ["Error (criu/cr-dump.c)"],
                                   "criu_log_path": "/x/dump.log"})
    assert isinstance(exc2, CriuError)
    assert exc2.log_lines == ["Error (criu/cr-dump.c)"] and exc2.log_path == "/x/dump.log"


def test_an_unknown_type_falls_back_on_the_status() -> None:
    exc = error_for_problem(401, {"type": "about:blank", "detail": "who?"})
    assert problem_type(exc) == "urn:nfvha:problem:unauthorized"
    other = error_for_problem(418, {"type": "urn:example:teapot", "title": "Teapot",
                                    "detail": "short and stout"})
    assert type(other) is ApiError
    assert (other.status, other.type, other.title, other.detail) == (
        418, "urn:example:teapot", "Teapot", "short and stout")


# -- what the daemons answer --------------------------------------------------------------


@pytest.fixture
async def manager_app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    m = Manager(SqliteStore(tmp_path / "m.db"), ManagerConfig(
        token=TOKEN, secret_key_file=tmp_path / "m.key", max_body=4096))
    try:
        yield create_manager_app(m, manage_lifecycle=False)
    finally:
        await m.close()
        m.store.close()


async def _ask(app: FastAPI, method: str, path: str, token: str | None = TOKEN,
               **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), headers=headers,
                                 base_url="http://daemon") as http:
        return await http.request(method, path, **kw)


@pytest.mark.parametrize(("method", "path", "kw", "status", "code"), [
    ("GET", "/vnflcm/v1/vnf_instances/nope", {}, 404, "instance-not-found"),
    ("POST", "/vnflcm/v1/vnf_instances", {"json": {}}, 400, "invalid-request"),
    ("POST", "/nfvha/v1/vnfds", {"content": b"- a list"}, 422, "invalid-descriptor"),
    ("POST", "/nfvha/v1/vnfds", {"content": b"x" * 5000}, 413, "body-too-large"),
    ("GET", "/no/such/path", {}, 404, "not-found"),
    ("PATCH", "/vnflcm/v1/vnf_instances", {}, 405, "method-not-allowed"),
])
async def test_the_manager_answers_with_the_type_of_the_error(
        manager_app: FastAPI, method: str, path: str, kw: dict[str, Any], status: int,
        code: str) -> None:
    r = await _ask(manager_app, method, path, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == PROBLEM_PREFIX + code


async def test_refusals_have_their_types(manager_app: FastAPI) -> None:
    r = await _ask(manager_app, "GET", "/vnflcm/v1/vnf_instances", token="wrong")
    assert (r.status_code, r.json()["type"]) == (401, PROBLEM_PREFIX + "unauthorized")


async def test_the_agent_and_the_forwarder_answer_with_types(tmp_path: Path) -> None:
    from nfvha.vim.api import create_app
    from tests.test_fuzz import TOKEN as FUZZ_TOKEN
    from tests.test_fuzz import _agent, _forwarder_app

    agent_app = create_app(_agent(tmp_path), manage_lifecycle=False)
    r = await _ask(agent_app, "GET", "/v1/instances/nope", token=FUZZ_TOKEN)
    assert (r.status_code, r.json()["type"]) == (404, PROBLEM_PREFIX + "instance-not-found")
    r = await _ask(agent_app, "GET", "/v1/instances/nope", token="wrong")
    assert (r.status_code, r.json()["type"]) == (401, PROBLEM_PREFIX + "unauthorized")
    fwd = _forwarder_app()
    r = await _ask(fwd, "GET", "/v1/services/nope", token=FUZZ_TOKEN)
    assert (r.status_code, r.json()["type"]) == (404, PROBLEM_PREFIX + "not-found")
    r = await _ask(fwd, "POST", "/v1/services", token=FUZZ_TOKEN,
                   json={"name": "s", "port": 5000, "target_ip": "10.9.1.10",
                         "listen_ip": "10.9.2.1"})
    assert (r.status_code, r.json()["type"]) == (409, PROBLEM_PREFIX + "host-network-failed")
