"""Schemathesis against the OpenAPI of the manager, the agent and the forwarder, in process
(ASGI): whatever a client sends, no answer is a 5xx, every answer fits the schema where the
app declares one, a request without the token is refused, and a refused request stores
nothing. Nothing here touches the system: the agents behind the manager, the sandboxes
behind the agent and the host network behind the forwarder are fakes.

Deterministic and bounded (``NFVHA_FUZZ_EXAMPLES`` examples per operation, 10 by default:
``make fuzz`` runs more).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from nfvha.dataplane.api import create_forwarder_app
from nfvha.errors import HostNetworkError, InstanceStateError
from nfvha.store.sqlite import SqliteStore
from nfvha.vim.agent import Agent, AgentConfig, Instance
from nfvha.vim.api import create_app as create_agent_app
from nfvha.vim.cgroups import CgroupDriver
from nfvha.vim.criu import CriuRunner
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.manager import Manager, ManagerConfig

TOKEN = "fuzz-token"
EXAMPLES = int(os.environ.get("NFVHA_FUZZ_EXAMPLES", "10"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         database=None, suppress_health_check=list(HealthCheck))
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# What the app answers is checked against what it declares; the status codes themselves
# are not (FastAPI declares 200 and 422 only, the routes answer 400/401/404/409 on purpose).
CHECKS = [not_a_server_error, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
OPEN = {"/healthz", "/", "/openapi.json", "/docs"}  # answered without a token
STORED = ("vnfd", "vnf", "op", "host", "subscription")  # what a request can create


def _refuse(request: httpx.Request) -> httpx.Response:
    """Every agent or forwarder the manager calls: there is none."""
    return httpx.Response(503, json={"title": "no agent in the fuzz tests"})


def _callback(request: httpx.Request) -> httpx.Response:
    """Every subscriber's callback URI answers as SOL013 asks (GET 204, POST 204)."""
    return httpx.Response(204)


# -- the three apps, each with fakes for what would touch the system ---------------------


def _manager(db: str | Path) -> Manager:
    m = Manager(SqliteStore(db), ManagerConfig(token=TOKEN, base_url="http://10.9.0.1:8600",
                                               vnf_network="10.9.0.0/16"))
    m.http = httpx.AsyncClient(transport=httpx.MockTransport(_refuse))
    m.notifier.http = httpx.AsyncClient(transport=httpx.MockTransport(_callback))
    return m


class _NoSandbox:
    """The sandbox of an instance in these tests: nothing is built, nothing runs (the
    request got through every check of the agent before it would reach the system)."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.built = False

    async def build(self, *, standby: bool = False) -> None:
        raise InstanceStateError(f"instance {self.instance_id}: no VNF runs in the fuzz tests")

    async def destroy(self) -> None:
        pass


class _SystemlessAgent(Agent):
    """The real agent up to its sandboxes."""

    def _new_instance(self, descriptor: Any, instance_id: str | None) -> Instance:
        inst = super()._new_instance(descriptor, instance_id)
        inst.sandbox = _NoSandbox(inst.id)  # type: ignore[assignment]
        return inst


def _agent(state: Path) -> Agent:
    cfg = AgentConfig(host_id="h1", state_dir=state / "agent", token=TOKEN,
                      log_dir=state / "log", work_root=state / "work")
    a = _SystemlessAgent(cfg, criu=CriuRunner(str(state / "no-criu")),
                         cgroups=CgroupDriver(version=2, hierarchies=[]))
    a._http = httpx.AsyncClient(transport=httpx.MockTransport(_refuse))
    return a


class _NoHostNetwork:
    """The forwarder's host: it owns no address and is given none."""

    async def addresses(self, *, netns: str | None = None) -> list[tuple[str, str]]:
        return []

    async def add_address(self, dev: str, cidr: str, *, netns: str | None = None) -> None:
        raise HostNetworkError(f"{cidr}: the host network is not touched in the fuzz tests")


def _forwarder_app() -> FastAPI:
    return create_forwarder_app(TOKEN, net=_NoHostNetwork())  # type: ignore[arg-type]


# The schemas are read once, from apps that serve nothing; each test sends its examples to
# an app of its own (``app=``), on fresh state.
_NOWHERE = Path("/nonexistent/nfvha-fuzz")
manager_api = schemathesis.openapi.from_dict(
    create_manager_app(_manager(":memory:"), manage_lifecycle=False).openapi())
agent_api = schemathesis.openapi.from_dict(
    create_agent_app(_agent(_NOWHERE), manage_lifecycle=False).openapi())
forwarder_api = schemathesis.openapi.from_dict(_forwarder_app().openapi())
manager_api.config.max_stream_events = 1  # the stream's snapshot; a tick takes a second


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = _manager(tmp_path / "m.db")
    yield m
    m.store.close()


@pytest.fixture
def manager_app(manager: Manager) -> FastAPI:
    return create_manager_app(manager, manage_lifecycle=False)


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return _agent(tmp_path)


@pytest.fixture
def agent_app(agent: Agent) -> FastAPI:
    return create_agent_app(agent, manage_lifecycle=False)


# -- the properties ----------------------------------------------------------------------


def _counts(m: Manager) -> dict[str, int]:
    return {kind: len(m.store.list(kind)) for kind in STORED}


def _anonymous(case: Any, app: FastAPI) -> None:
    """The same request without the token (and once with a wrong one): refused, never
    a 5xx, and never served."""
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer not-the-token"}):
        r = case.call(headers=headers, app=app)
        assert r.status_code < 500, (r.status_code, r.text)
        if case.path not in OPEN:
            # 401, or a refusal before authentication (405, 413, a too-deep body's 422)
            assert 400 <= r.status_code < 500, (r.status_code, r.text)


@manager_api.parametrize()
@FUZZ_SETTINGS
def test_manager_api(case: Any, manager: Manager, manager_app: FastAPI) -> None:
    before = _counts(manager)
    _anonymous(case, manager_app)
    assert _counts(manager) == before, "an unauthenticated request stored something"
    r = case.call_and_validate(headers=AUTH, checks=CHECKS, app=manager_app)
    if r.status_code >= 400:
        assert _counts(manager) == before, f"a refused request ({r.status_code}) stored " \
            "something"


@agent_api.parametrize()
@FUZZ_SETTINGS
def test_agent_api(case: Any, agent: Agent, agent_app: FastAPI) -> None:
    _anonymous(case, agent_app)
    before = set(agent.instances)
    r = case.call_and_validate(headers=AUTH, checks=CHECKS, app=agent_app)
    if r.status_code >= 400:
        assert set(agent.instances) == before


@forwarder_api.parametrize()
@FUZZ_SETTINGS
def test_forwarder_api(case: Any) -> None:
    app = _forwarder_app()
    _anonymous(case, app)
    case.call_and_validate(headers=AUTH, checks=CHECKS, app=app)


# -- what the fuzzing found, as fixed examples -------------------------------------------


async def _ask(app: FastAPI, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), headers=AUTH,
                                 base_url="http://daemon") as http:
        return await http.request(method, path, **kw)


@pytest.mark.parametrize("url", ["http://\u0000/", "10.250.0.12:8700", "ftp://h2/",
                                 "http://h2:99999/", "x" * 3000])
async def test_the_agent_refuses_a_peer_url_it_cannot_call(agent_app: FastAPI,
                                                           url: str) -> None:
    """A control character made httpx raise InvalidURL (not an HTTPError): a 500."""
    r = await _ask(agent_app, "GET", "/v1/probe", params={"url": url})
    assert r.status_code == 422 and "url" in r.json()["detail"], r.text
    r = await _ask(agent_app, "POST", "/v1/checkpoints/fw-1/1/push", json={"peer_url": url})
    assert r.status_code == 422 and "peer_url" in r.json()["detail"], r.text


async def test_the_forwarder_refuses_an_address_that_is_not_one() -> None:
    """``listen_ip`` and ``target_ip`` were parsed after validation: a ValueError, a 500."""
    base = {"name": "svc", "port": 5000, "target_ip": "10.9.1.10"}
    for body, field in [({**base, "listen_ip": "10.9.300.1"}, "listen_ip"),
                        ({**base, "listen_ip": "10.9.2.1", "target_ip": "fw"}, "target_ip"),
                        ({**base, "after": "head", "target_ip": "::1"}, "target_ip")]:
        r = await _ask(_forwarder_app(), "POST", "/v1/services", json=body)
        assert r.status_code == 422 and field in r.text, r.text


@pytest.mark.parametrize("body", [b"", b"not a tar", b"\0" * 1024])
async def test_a_checkpoint_stream_that_is_not_one_is_the_senders_fault(
        agent: Agent, agent_app: FastAPI, body: bytes) -> None:
    """A truncated or garbled upload was answered 502 (as if this agent had failed to reach
    a peer): a client's bad stream is a 400, and nothing of it is kept."""
    r = await _ask(agent_app, "PUT", "/v1/checkpoints/fw-1/1", content=body)
    assert r.status_code == 400 and "stream" in r.json()["detail"], r.text
    assert await agent.list_checkpoints("fw-1") == []


async def test_a_body_that_is_not_json_is_a_problem_like_any_refusal(agent_app: FastAPI) -> None:
    """FastAPI's own refusals (a body it cannot parse, a method a path does not take) were
    ``{"detail": ...}`` in application/json on the agent and the forwarder, not the
    problem details their OpenAPI declares and clients read."""
    for app, path in [(agent_app, "/v1/instances"), (_forwarder_app(), "/v1/services")]:
        r = await _ask(app, "POST", path, content=b"\xff\x11N\xfe",
                       headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "parsing the body" in r.json()["detail"]
        r = await _ask(app, "PATCH", path)
        assert r.status_code == 405 and r.json()["title"] == "Method Not Allowed", r.text
        assert r.headers["allow"]  # kept from FastAPI's answer
