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
    NotLeader,
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


# -- a manager cluster: the client finds and follows the leader ---------------------------

M1, M2, M3 = "https://m1.test:8600", "https://m2.test:8600", "https://m3.test:8600"
OP = "/vnflcm/v1/vnf_lcm_op_occs/op-9"


class Cluster:
    """Managers behind one ``httpx.MockTransport``, told apart by host: each answers from
    its own handler; every request is recorded with the manager it reached."""

    def __init__(self, **members: Any) -> None:
        self.members = members
        self.seen: list[tuple[str, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host.split(".")[0]
        self.seen.append((name, request))
        answer = self.members[name]
        return answer(request) if callable(answer) else answer

    def reached(self) -> list[str]:
        return [f"{name} {r.method} {r.url.path}" for name, r in self.seen]


def _follower_of(leader: str) -> Any:
    """A follower as the manager's middleware answers: reads served, writes 307."""
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=[])
        return httpx.Response(
            307, headers={"location": leader + request.url.raw_path.decode(),
                          "x-nfvha-leader": leader},
            json={"type": "urn:nfvha:problem:not-leader", "status": 307, "leader": leader})
    return answer


def _leader(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/heal"):
        return httpx.Response(202, headers={"Location": M2 + OP})
    return httpx.Response(200, json=[{"id": "fm-1"}])


def _no_leader(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, headers={"retry-after": "1"}, json={
        "type": "urn:nfvha:problem:not-leader", "title": "No leader", "status": 503,
        "code": "no-leader", "detail": "no manager leads at the moment"})


def test_a_write_sent_to_a_follower_lands_on_the_leader_which_is_asked_first_after() -> None:
    c = Cluster(m1=_follower_of(M2), m2=_leader)
    with ManagerClient(f"{M1},{M2}", "s3cret", transport=httpx.MockTransport(c)) as m:
        assert m.heal("fm-1", cause="by hand") == M2 + OP
        assert m.url == M2
        assert m.instances() == [{"id": "fm-1"}]  # from the leader, no detour
    assert c.reached() == ["m1 POST /vnflcm/v1/vnf_instances/fm-1/heal",
                           "m2 POST /vnflcm/v1/vnf_instances/fm-1/heal",
                           "m2 GET /vnflcm/v1/vnf_instances"]
    # The leader got the same request: method, body and credential.
    resent = c.seen[1][1]
    assert json.loads(resent.content) == {"cause": "by hand"}
    assert resent.headers["authorization"] == "Bearer s3cret"


def test_urls_as_a_list_and_as_commas_are_the_same_cluster() -> None:
    a = ManagerClient([M1, f"{M2}/", M1], "t")
    b = ManagerClient(f" {M1} ,{M2}", "t")
    assert a.urls == b.urls == (M1, M2)
    with pytest.raises(ConfigError, match="not http"):
        ManagerClient("m1.test:8600", "t")


def test_a_redirect_to_a_manager_not_configured_is_refused_and_nothing_goes_there() -> None:
    c = Cluster(m1=_follower_of("https://elsewhere.test:8600"))
    with ManagerClient(M1, "s3cret", transport=httpx.MockTransport(c)) as m, \
            pytest.raises(ConfigError, match="not one of the configured managers") as err:
        m.heal("fm-1")
    assert "every manager's URL" in str(err.value)
    assert [name for name, _ in c.seen] == ["m1"]  # the token never left for elsewhere


def test_no_leader_on_one_member_the_next_is_asked() -> None:
    c = Cluster(m1=_no_leader, m2=_leader)
    with ManagerClient([M1, M2], "t", transport=httpx.MockTransport(c)) as m:
        assert m.heal("fm-1") == M2 + OP
    assert [name for name, _ in c.seen] == ["m1", "m2"]


def test_no_leader_anywhere_is_said_as_such_after_one_try_each() -> None:
    """Without an election wait, one round; with one, rounds until it runs out."""
    c = Cluster(m1=_no_leader, m2=_no_leader, m3=_no_leader)
    with ManagerClient([M1, M2, M3], "t", transport=httpx.MockTransport(c),
                       election_wait=0) as m, \
            pytest.raises(NotLeader, match="no manager leads"):
        m.heal("fm-1")
    assert [name for name, _ in c.seen] == ["m1", "m2", "m3"]
    c.seen.clear()
    with ManagerClient([M1, M2, M3], "t", transport=httpx.MockTransport(c),
                       election_wait=0.4) as m, \
            pytest.raises(NotLeader, match="no manager leads"):
        m.heal("fm-1")
    assert [name for name, _ in c.seen][:6] == ["m1", "m2", "m3"] * 2


def test_a_dead_manager_is_passed_over_and_not_asked_first_again() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    c = Cluster(m1=refused, m2=_leader)
    with ManagerClient([M1, M2], "t", transport=httpx.MockTransport(c)) as m:
        assert m.heal("fm-1") == M2 + OP  # never arrived at m1: safe to send to m2
        m.instances()
    assert [name for name, _ in c.seen] == ["m1", "m2", "m2"]


def test_a_write_whose_answer_was_lost_is_not_sent_twice() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    c = Cluster(m1=timeout, m2=_leader)
    with ManagerClient([M1, M2], "t", transport=httpx.MockTransport(c)) as m:
        with pytest.raises(ManagerUnreachable, match="may have been acted on"):
            m.heal("fm-1")  # m1 may have started the heal: a second one would be wrong
        assert [name for name, _ in c.seen] == ["m1"]
        assert m.instances() == [{"id": "fm-1"}]  # the next request tries m2 first


def test_every_manager_down_names_them_all() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with ManagerClient([M1, M2], "t", transport=httpx.MockTransport(refused)) as m, \
            pytest.raises(ManagerUnreachable) as err:
        m.hosts()
    assert f"no manager answered ({M1}, {M2})" in str(err.value)
    assert "connection refused" in str(err.value)


def _cluster_view(member: str, leader: str | None, term: int = 7) -> dict[str, Any]:
    return {"mode": "cluster", "member": member, "url": f"https://{member}.test:8600",
            "leading": member == leader,
            "leader": None if leader is None else {
                "member": leader, "url": f"https://{leader}.test:8600", "term": term,
                "since": 1_700_000_000.0}}


def test_status_says_who_leads_and_reads_from_the_leader() -> None:
    def follower(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/nfvha/v1/cluster":
            return httpx.Response(200, json=_cluster_view("m1", "m2"))
        return httpx.Response(200, json=[{"id": "stale-follower-view"}])

    def leader(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/nfvha/v1/forwarders":
            return httpx.Response(200, json={"pair": True, "active": "in2", "term": 3,
                                             "members": [], "alarm": None})
        return httpx.Response(200, json=[{"id": "from-the-leader"}])

    c = Cluster(m1=follower, m2=leader, m3=leader)
    with ManagerClient([M1, M2, M3], "t", transport=httpx.MockTransport(c)) as m:
        st = m.status()
    assert st["cluster"]["leader"]["member"] == "m2" and st["cluster"]["member"] == "m1"
    assert st["managers"] == [
        {"url": M1, "member": "m1", "answered": True, "leader": False},
        {"url": M2, "member": "m2", "answered": False, "leader": True},
        {"url": M3, "member": None, "answered": False, "leader": False}]
    assert st["hosts"] == st["vnfs"] == [{"id": "from-the-leader"}]
    assert st["forwarders"]["active"] == "in2"  # the leader's view: it arbitrates the pair
    assert [name for name, _ in c.seen] == ["m1", "m2", "m2", "m2", "m2"]


def test_status_of_a_manager_without_clusters_still_works() -> None:
    rec = Recorder({("GET", "/nfvha/v1/hosts"): httpx.Response(200, json=[]),
                    ("GET", "/vnflcm/v1/vnf_instances"): httpx.Response(200, json=[]),
                    ("GET", "/vnffm/v1/alarms"): httpx.Response(200, json=[])})
    with ManagerClient(URL, "t", transport=httpx.MockTransport(rec)) as m:
        st = m.status()  # /nfvha/v1/cluster and /nfvha/v1/forwarders are 404s there
    assert st["cluster"] is None and st["hosts"] == [] and st["forwarders"] is None
    assert st["managers"] == [{"url": URL, "member": None, "answered": True, "leader": False}]
