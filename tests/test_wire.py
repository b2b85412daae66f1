"""The wire protocol: its models carry what the daemons send and nothing is lost on the
way, a body that does not fit them is a 422 problem (never a 500), and the clients raise
a problem answer as the exception class of its ``type``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from nfvha.dataplane.client import ForwarderClient, ForwarderError, ReplayGapError
from nfvha.errors import (
    PROBLEM_PREFIX,
    ApiError,
    CheckpointCorrupt,
    InstanceNotFound,
    InstanceStopped,
    NfvhaError,
    ResourceNotFound,
    RestoreError,
)
from nfvha.vim.api import create_app
from nfvha.vnfm.agent_client import AgentCallError, AgentClient, AgentUnreachable
from nfvha.wire import (
    CheckpointMeta,
    FileEntry,
    HostStatusReport,
    InstanceState,
    InstanceView,
    ServiceStatus,
)
from tests.conftest import manager_with_fake_agent
from tests.test_fuzz import TOKEN, _agent, _forwarder_app

SHA = "0" * 64


# -- the models -----------------------------------------------------------------------------


def test_an_instance_view_comes_back_as_the_agent_sent_it() -> None:
    sent = {"id": "fw", "vnfd_id": "fw", "state": "EXITED", "pid": None,
            "exit": {"code": 1, "signal": None, "at": 1.5, "oom": False,
                     "reason": "exited with code 1"},
            "last_checkpoint": {"seq": 4, "created_at": 2.0, "cut_at": 1.9,
                                "total_bytes": 100},
            "netns": "nfvha-h1-fw", "log": "/var/log/nfvha/vnf/fw.log"}
    view = InstanceView.model_validate(sent)
    assert view.state is InstanceState.EXITED and not view.live
    assert view.exit is not None and view.exit.code == 1
    assert view.last_checkpoint is not None and view.last_checkpoint.seq == 4
    # Only what was sent goes back out: no null usage or restore_stats added.
    assert json.loads(view.model_dump_json(exclude_unset=True)) == sent


def test_a_status_report_keeps_what_the_manager_does_not_name() -> None:
    report = HostStatusReport.model_validate({
        "host_id": "h1", "url": "http://10.250.0.11:8700", "lease": 2.0,
        "instances": [{"id": "fw", "state": "RUNNING", "pid": 7,
                       "usage": {"memory_bytes": 4096, "cpu_seconds": 0.5, "pids": 1},
                       "from_a_newer_agent": True}],
        "resources": {"load1": 0.3, "mem_available_bytes": 1 << 30, "cpus": 2},
        "also_newer": {"x": 1}})
    assert report.instances[0].live and report.instances[0].usage is not None
    kept = report.as_dict()
    assert kept["also_newer"] == {"x": 1}
    assert kept["instances"][0]["from_a_newer_agent"] is True
    assert "time" not in kept  # not sent, not invented


@pytest.mark.parametrize("bad", [
    {"host_id": "h 1"},  # not a host id
    {"url": "ftp://10.0.0.1"},
    {"instances": [{"id": "fw", "state": "DANCING"}]},
    {"instances": [{"id": "fw", "state": "RUNNING", "pid": 0}]},
])
def test_a_status_report_that_does_not_fit_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HostStatusReport.model_validate(bad)


def _meta(**kw: Any) -> CheckpointMeta:
    fields: dict[str, Any] = {
        "instance_id": "fw", "vnf_name": "fw", "seq": 3, "created_at": 2.0, "cut_at": 1.9,
        "host_id": "h1", "files": {"pages-1.img": FileEntry(size=10, sha256=SHA)},
        "total_bytes": 10, "extra": {"log_position": 42}}
    return CheckpointMeta(**{**fields, **kw})


def test_checkpoint_metadata_round_trips_and_refuses_what_cannot_be_true() -> None:
    meta = _meta()
    assert CheckpointMeta.model_validate_json(meta.model_dump_json()) == meta
    assert meta.name == "fw/000003"
    with pytest.raises(ValidationError, match="total_bytes"):
        _meta(total_bytes=11)
    with pytest.raises(ValidationError, match="unsafe file name"):
        _meta(files={"../escape": FileEntry(size=10, sha256=SHA)})


def test_a_forwarder_status_round_trips() -> None:
    st = ServiceStatus(name="fw", listen=("10.9.0.1", 7000), target=("10.9.1.2", 7000),
                       position=10, committed=6, held=True, log_packets=4, log_bytes=400,
                       log_age_s=1.0, log_fill=0.25, stats={"rx": 10.0})
    sent = json.loads(st.model_dump_json())
    assert sent["listen"] == ["10.9.0.1", 7000]  # as the forwarder always sent it
    assert ServiceStatus.model_validate(sent) == st


# -- the daemons refuse what does not fit -----------------------------------------------------


async def _ask(app: FastAPI, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 headers={"Authorization": f"Bearer {TOKEN}"},
                                 base_url="http://daemon") as http:
        return await http.request(method, path, **kw)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/instances", {"instance_id": "fw"}, "descriptor"),
    ("/v1/instances/fw/inject", {"fault": "explode"}, "fault"),
    ("/v1/instances/fw/restore", {"seq": "latest"}, "seq"),
    ("/v1/instances/fw/standby", {"seq": [1]}, "seq"),
    ("/v1/instances/fw/checkpoints", {"drain": "maybe"}, "drain"),
    ("/v1/checkpoints/fw/1/push", {"peer_url": "ftp://10.0.0.2"}, "peer_url"),
])
async def test_the_agent_refuses_a_bad_body_with_a_422_problem(
        tmp_path: Path, path: str, body: dict[str, Any], field: str) -> None:
    r = await _ask(create_app(_agent(tmp_path), manage_lifecycle=False), "POST", path,
                   json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == PROBLEM_PREFIX + "invalid-request"
    assert field in r.json()["detail"]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/services/fw/replay", {"position": -1}),
    ("/v1/services/fw/commit", {}),
    ("/v1/services", {"name": "fw", "port": 7000, "target_ip": "10.9.1.300"}),
])
async def test_the_forwarder_refuses_a_bad_body_with_a_422_problem(
        path: str, body: dict[str, Any]) -> None:
    r = await _ask(_forwarder_app(), "POST", path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["type"] == PROBLEM_PREFIX + "invalid-request"


# -- the clients raise typed errors -----------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def _agent_client(handler: Handler) -> AgentClient:
    return AgentClient("h1", "http://10.250.0.11:8700", "t",
                       httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def _problem(status: int, code: str, **extra: Any) -> Handler:
    return lambda _: httpx.Response(status, json={
        "type": PROBLEM_PREFIX + code, "title": "t", "status": status, "detail": "what",
        **extra})


@pytest.mark.parametrize(("status", "code", "extra", "cls"), [
    (422, "checkpoint-corrupt", {"checkpoint": "fw/000003", "file": "pages-1.img"},
     CheckpointCorrupt),
    (409, "instance-stopped", {}, InstanceStopped),
    (404, "instance-not-found", {}, InstanceNotFound),
    (500, "restore-failed", {"criu_log": ["Error (criu/cr-restore.c:1): x"]}, RestoreError),
    (418, "from-a-newer-agent", {}, ApiError),
])
async def test_the_agent_client_raises_a_problem_as_its_class(
        status: int, code: str, extra: dict[str, Any], cls: type[NfvhaError]) -> None:
    client = _agent_client(_problem(status, code, **extra))
    with pytest.raises(cls) as caught:
        await client.restore("fw", 3)
    assert type(caught.value) is cls
    assert str(caught.value) == f"restore on host h1 failed ({status}): what"
    if isinstance(caught.value, CheckpointCorrupt):
        assert caught.value.file == "pages-1.img"  # which file the manager logs
    if isinstance(caught.value, RestoreError):
        assert caught.value.log_lines == ["Error (criu/cr-restore.c:1): x"]


async def test_the_agent_client_tells_no_answer_from_an_answer_it_cannot_read() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(AgentUnreachable) as caught:
        await _agent_client(refuse).get("fw")
    assert caught.value.status == 0
    proxy = _agent_client(lambda _: httpx.Response(502, text="<html>Bad gateway</html>"))
    with pytest.raises(AgentCallError) as answered:
        await proxy.get("fw")
    assert not isinstance(answered.value, AgentUnreachable)
    assert answered.value.status == 502
    odd = _agent_client(lambda _: httpx.Response(200, json={"id": "fw"}))  # no state
    with pytest.raises(AgentCallError, match="unexpected answer"):
        await odd.get("fw")


async def test_the_agent_client_answers_models() -> None:
    def agent(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"seq": 3}
        return httpx.Response(201, json={"id": "fw", "state": "RUNNING", "pid": 43,
                                         "restore_stats": {"pid": 43, "wall_seconds": 0.2}})

    view = await _agent_client(agent).restore("fw", 3)
    assert view.state is InstanceState.RUNNING and view.pid == 43
    assert view.restore_stats is not None and view.restore_stats.wall_seconds == 0.2


async def test_deleting_an_instance_that_is_not_there_is_no_error() -> None:
    await _agent_client(_problem(404, "instance-not-found")).delete("fw")
    with pytest.raises(ResourceNotFound):  # a wrong URL is, though
        await _agent_client(_problem(404, "not-found")).delete("fw")


async def test_the_agent_client_reads_the_agent_app_itself(tmp_path: Path) -> None:
    app = create_app(_agent(tmp_path), manage_lifecycle=False)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    client = AgentClient("h1", "http://daemon", TOKEN, http)
    with pytest.raises(InstanceNotFound):
        await client.get("nope")
    assert await client.all_checkpoints() == []


def _forwarder_client(handler: Handler) -> ForwarderClient:
    return ForwarderClient("http://10.9.0.2:8800", "t",
                           httpx.AsyncClient(transport=httpx.MockTransport(handler)))


async def test_the_forwarder_client_raises_a_replay_gap_with_its_positions() -> None:
    client = _forwarder_client(_problem(409, "replay-gap", position=3, oldest=6))
    with pytest.raises(ReplayGapError) as caught:
        await client.replay("fw", 3)
    assert (caught.value.position, caught.value.oldest) == (3, 6)


async def test_any_other_forwarder_failure_is_a_forwarder_error_with_its_typed_cause() -> None:
    with pytest.raises(ForwarderError) as caught:
        await _forwarder_client(_problem(404, "not-found")).status("fw")
    assert isinstance(caught.value.__cause__, ResourceNotFound)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ForwarderError, match="unreachable"):
        await _forwarder_client(refuse).hold("fw")
    ok = _forwarder_client(lambda _: httpx.Response(200, json={"replayed": 4, "replay_ms": 1.0,
                                                                "held_ms": 5.0}))
    assert (await ok.replay("fw", 6)).replayed == 4


# -- the manager acts on the typed errors --------------------------------------------------

VNFD = {"id": "fw", "command": ["sleep", "1000"], "network": {"address": "10.9.1.10/16"},
        "ha": {"backups": 0}}


class _FakeAgent:
    """Host h1's agent: ``checkpoint`` and ``restore`` say what it answers to those."""

    def __init__(self) -> None:
        self.checkpoint: Handler = _problem(409, "instance-stopped")
        self.restore: dict[int, httpx.Response] = {}
        self.restored: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/v1/instances":
            return httpx.Response(201, json={"id": "fw", "state": "RUNNING", "pid": 42})
        if path.endswith("/checkpoints"):
            return self.checkpoint(request)
        if path.endswith("/restore"):
            seq = json.loads(request.content)["seq"]
            self.restored.append(seq)
            return self.restore.get(seq) or httpx.Response(
                201, json={"id": "fw", "state": "RUNNING", "pid": 43})
        return httpx.Response(204)


@pytest.fixture
async def manager(tmp_path: Path) -> Any:

    fake = _FakeAgent()
    async with manager_with_fake_agent(tmp_path, fake, VNFD) as (m, http):
        r = await http.post("/vnflcm/v1/vnf_instances/fw/instantiate", json={})
        assert (await _final(m, r.headers["Location"]))["operationState"] == "COMPLETED"
        yield m, http, fake


async def _final(m: Any, location: str) -> dict[str, Any]:
    op_id = location.rsplit("/", 1)[1]
    for _ in range(500):
        data: dict[str, Any] = m.store.get("op", op_id).data
        if data["operationState"] not in ("STARTING", "PROCESSING"):
            return data
        await asyncio.sleep(0.01)
    raise AssertionError(f"operation {op_id} still {data['operationState']}")


async def test_a_checkpoint_refused_as_instance_stopped_is_a_hang(manager: Any) -> None:
    m, _, _ = manager
    await m.checkpoints.checkpoint("fw")
    failure = m._rt("fw").failure
    assert failure is not None and failure[0] == "hang", failure
    alarms = [a.data["faultType"] for a in m.store.list("alarm")]
    assert "checkpoint-failed" in alarms


async def test_a_checkpoint_refused_otherwise_is_no_hang(manager: Any) -> None:
    m, _, fake = manager
    fake.checkpoint = _problem(409, "instance-state")  # e.g. still CREATING
    await m.checkpoints.checkpoint("fw")
    assert m._rt("fw").failure is None


async def test_a_heal_skips_a_corrupt_checkpoint_for_the_previous_one(manager: Any) -> None:
    m, http, fake = manager
    for seq in (1, 2):
        m.store.put("checkpoint", f"fw/{seq}", {
            "id": f"fw/{seq}", "vnfInstanceId": "fw", "seq": seq, "createdAt": time.time(),
            "cutAt": time.time(), "host": "h1", "replicas": ["h1"], "bytes": 10,
            "generation": 1, "logPosition": None})
    fake.restore[2] = httpx.Response(422, json={
        "type": PROBLEM_PREFIX + "checkpoint-corrupt", "title": "Checkpoint corrupt",
        "status": 422, "detail": "pages-1.img does not match its sha256",
        "checkpoint": "fw/000002", "file": "pages-1.img"})
    r = await http.post("/vnflcm/v1/vnf_instances/fw/heal", json={})
    op = await _final(m, r.headers["Location"])
    assert op["operationState"] == "COMPLETED", op
    assert fake.restored == [2, 1] and op["nfvha"]["checkpoint"] == 1
    assert m.get_vnf("fw")["pid"] == 43
