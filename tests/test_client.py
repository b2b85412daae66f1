"""nfvha.client: requests as the manager takes them, answers as typed results or errors."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.client import AsyncManagerClient, ManagerClient, ManagerUnreachable, ssl_verify
from nfvha.errors import (
    ApiError,
    CheckpointCorrupt,
    ConfigError,
    DescriptorError,
    Forbidden,
    InstanceNotFound,
    InstanceStateError,
    Unauthorized,
)
from nfvha.store.base import ConflictError

URL = "https://manager.test:8600"


class Recorder:
    """A manager behind ``httpx.MockTransport``: answers from a table, records requests."""

    def __init__(self, answers: dict[tuple[str, str], httpx.Response]) -> None:
        self.answers = answers
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.answers.get((request.method, request.url.path), httpx.Response(
            404, json={"type": "urn:nfvha:problem:not-found", "title": "Not Found",
                       "status": 404, "detail": "Not Found"}))


def _problem(status: int, code: str, detail: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, headers={"content-type": "application/problem+json"},
                          json={"type": f"urn:nfvha:problem:{code}", "title": "t",
                                "status": status, "detail": detail, **extra})


def test_a_request_carries_the_token_and_json() -> None:
    rec = Recorder({
        ("POST", "/nfvha/v1/vnfds"): httpx.Response(201, json={"id": "fm"}),
        ("POST", "/vnflcm/v1/vnf_instances"): httpx.Response(201, json={"id": "fm-1"}),
        ("POST", "/vnflcm/v1/vnf_instances/fm-1/instantiate"): httpx.Response(
            202, headers={"Location": f"{URL}/vnflcm/v1/vnf_lcm_op_occs/op-1"}),
        ("GET", "/vnflcm/v1/vnf_lcm_op_occs"): httpx.Response(200, json=[{"id": "op-1"}]),
        ("DELETE", "/vnflcm/v1/vnf_instances/fm-1"): httpx.Response(204),
    })
    with ManagerClient(URL + "/", "s3cret", transport=httpx.MockTransport(rec)) as m:
        assert m.onboard({"id": "fm"}) == {"id": "fm"}
        assert m.create("fm-1", "fm") == {"id": "fm-1"}
        assert m.instantiate("fm-1").endswith("/vnf_lcm_op_occs/op-1")
        assert m.ops("fm-1") == [{"id": "op-1"}]
        assert m.delete("fm-1") is None
    assert all(r.headers["authorization"] == "Bearer s3cret" for r in rec.seen)
    assert all(str(r.url).startswith(URL + "/") for r in rec.seen)
    assert json.loads(rec.seen[1].content) == {"vnfdId": "fm", "vnfInstanceId": "fm-1"}
    assert rec.seen[3].url.params["vnfInstanceId"] == "fm-1"


def test_no_token_no_header() -> None:
    rec = Recorder({("GET", "/nfvha/v1/hosts"): httpx.Response(200, json=[])})
    with ManagerClient(URL, None, transport=httpx.MockTransport(rec)) as m:
        assert m.hosts() == []
    assert "authorization" not in rec.seen[0].headers


@pytest.mark.parametrize(("answer", "cls"), [
    (_problem(404, "instance-not-found", "no VNF instance 'x'"), InstanceNotFound),
    (_problem(409, "instance-state", "x is not instantiated"), InstanceStateError),
    (_problem(409, "store-conflict", "lost"), ConflictError),
    (_problem(422, "invalid-descriptor", "vnfd.command: required"), DescriptorError),
    (_problem(401, "unauthorized", "missing or wrong bearer token"), Unauthorized),
    (_problem(403, "forbidden", "needs the operator role"), Forbidden),
    # An answer with no nfvha type: by its status, else an ApiError.
    (httpx.Response(403, json={"type": "about:blank", "detail": "no"}), Forbidden),
    (httpx.Response(502, text="<html>bad gateway</html>"), ApiError),
])
def test_a_problem_is_raised_as_its_class(answer: httpx.Response, cls: type) -> None:
    rec = Recorder({("POST", "/vnflcm/v1/vnf_instances/x/heal"): answer})
    with ManagerClient(URL, "t", transport=httpx.MockTransport(rec)) as m, \
            pytest.raises(cls) as err:
        m.heal("x", "by hand")
    assert type(err.value) is cls
    # The message names the request and the status, as the CLI prints it.
    assert str(err.value).startswith(f"POST /vnflcm/v1/vnf_instances/x/heal: "
                                     f"{answer.status_code}: ")
    assert len(rec.seen) == 1  # never retried


def test_an_api_error_carries_what_was_answered() -> None:
    rec = Recorder({("GET", "/nfvha/v1/hosts"): _problem(418, "teapot", "short and stout")})
    with ManagerClient(URL, "t", transport=httpx.MockTransport(rec)) as m, \
            pytest.raises(ApiError) as err:
        m.hosts()
    e = err.value
    assert (e.status, e.type, e.title, e.detail) == (
        418, "urn:nfvha:problem:teapot", "t", "short and stout")


def test_a_corrupt_checkpoint_keeps_its_names() -> None:
    rec = Recorder({("GET", "/nfvha/v1/checkpoints"): _problem(
        422, "checkpoint-corrupt", "bad sum", checkpoint="fm-1/3", file="pages-1.img")})
    with ManagerClient(URL, "t", transport=httpx.MockTransport(rec)) as m, \
            pytest.raises(CheckpointCorrupt) as err:
        m.checkpoints()
    assert (err.value.checkpoint, err.value.file) == ("fm-1/3", "pages-1.img")


def test_allowed_statuses_are_answers_not_errors() -> None:
    rec = Recorder({("DELETE", "/nfvha/v1/hosts/h9"): _problem(409, "instance-state", "up")})
    with ManagerClient(URL, "t", transport=httpx.MockTransport(rec)) as m:
        r = m.request("DELETE", "/nfvha/v1/hosts/h9", ok=(409,))
    assert r.status_code == 409


def test_an_unreachable_manager_is_said_once_not_retried() -> None:
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    with ManagerClient(URL, "t", transport=httpx.MockTransport(refuse)) as m, \
            pytest.raises(ManagerUnreachable, match=r"manager\.test:8600 unreachable"):
        m.status()
    assert len(calls) == 1


def test_tls_verify_is_passed_through(tmp_path: Path) -> None:
    ctx = ssl.create_default_context()
    with ManagerClient(URL, "t", verify=ctx) as m:
        assert m.http._transport._pool._ssl_context is ctx  # type: ignore[attr-defined]
    assert ssl_verify(False) is False
    with pytest.raises(ConfigError, match="CA file"):
        ManagerClient(URL, "t", verify=tmp_path / "missing.pem")
    from nfvha.pki import init_ca

    ca = init_ca(tmp_path / "pki")  # a CA file of a cluster's own CA
    with ManagerClient(URL, "t", verify=ca.cert_path) as m:
        made = m.http._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert isinstance(made, ssl.SSLContext) and made.get_ca_certs()


async def test_the_async_client_shares_the_handling() -> None:
    rec = Recorder({
        ("GET", "/vnflcm/v1/vnf_instances/fm-1"): httpx.Response(200, json={"id": "fm-1"}),
        ("POST", "/nfvha/v1/vnf_instances/fm-1/move"): httpx.Response(
            202, headers={"Location": f"{URL}/vnflcm/v1/vnf_lcm_op_occs/op-2"}),
        ("POST", "/nfvha/v1/vnf_instances/fm-2/inject"): _problem(
            404, "instance-not-found", "no VNF instance 'fm-2'"),
    })
    async with AsyncManagerClient(URL, "t", transport=httpx.MockTransport(rec)) as m:
        assert await m.instance("fm-1") == {"id": "fm-1"}
        assert (await m.move("fm-1", "h2")).endswith("op-2")
        with pytest.raises(InstanceNotFound, match="no VNF instance 'fm-2'"):
            await m.inject("fm-2", "kill")
    assert rec.seen[0].headers["authorization"] == "Bearer t"
    assert json.loads(rec.seen[1].content) == {"host": "h2"}
