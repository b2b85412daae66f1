"""The etcd state store's own guarantees: a deposed leader's writes are refused, members
fail over, TLS, and what it finds in etcd; the contract is tests/test_store_contract.py."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.cli import build_parser
from nfvha.pki import init_ca
from nfvha.store import (
    ConflictError,
    EtcdStore,
    Guard,
    LeadershipLost,
    NotFound,
    Op,
    StoreError,
)
from nfvha.store.etcd import EtcdClient, parse_store_url
from nfvha.tls import TlsConfig
from tests.conftest import TEST_PREFIX
from tests.etcdmember import _free_port, etcd_member
from tests.test_store_contract import wipe_etcd_prefix


@pytest.fixture
def prefix(etcd_url: str) -> Iterator[str]:
    p = f"/{TEST_PREFIX}/{uuid.uuid4().hex}"
    yield p
    wipe_etcd_prefix(etcd_url, p)


@pytest.fixture
def store(etcd_url: str, prefix: str) -> Iterator[EtcdStore]:
    with EtcdStore(etcd_url, prefix=prefix) as s:
        yield s


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def campaign(client: EtcdClient, key: str, ttl: int = 30) -> Guard:
    """What a manager elected leader would hold: ``key`` bound to a fresh lease."""
    lease = int(client.call("/lease/grant", {"TTL": ttl}, idempotent=False)["ID"])
    client.call("/kv/put", {"key": b64(key), "value": b64("me"), "lease": str(lease)},
                idempotent=False)
    kv = client.call("/kv/range", {"key": b64(key)}, idempotent=True)["kvs"][0]
    return Guard(key, int(kv["create_revision"]), lease)


# --- the leader's fencing token ----------------------------------------------------------


def test_writes_under_a_guard_apply_while_the_leader_key_is_held(store: EtcdStore,
                                                                 prefix: str) -> None:
    store.guard = campaign(store.client, f"{prefix}-leader")
    v1 = store.create("vnf", "fw", {"haState": "ACTIVE"})
    assert store.cas_update("vnf", "fw", v1.version, {"haState": "SUSPECTED"}).version == 2
    store.transaction([Op.put("op", "o1", {}), Op.delete("vnf", "fw")])
    assert store.find("vnf", "fw") is None


@pytest.mark.parametrize("how", ["re-elected", "lease revoked"])
def test_a_deposed_leaders_every_write_is_refused_and_changes_nothing(
    store: EtcdStore, prefix: str, how: str
) -> None:
    """The leader key changed hands (deleted and campaigned for by another manager), or
    the lease behind it ran out: each kind of write fails with LeadershipLost, and the
    records stay as the new leader left them."""
    key = f"{prefix}-leader"
    store.guard = campaign(store.client, key)
    store.create("vnf", "fw", {"haState": "ACTIVE"})
    store.create("op", "o1", {"operationState": "PROCESSING"})
    if how == "re-elected":
        store.client.call("/kv/deleterange", {"key": b64(key)}, idempotent=False)
        campaign(store.client, key)
    else:
        store.client.call("/kv/lease/revoke", {"ID": str(store.guard.lease)},
                          idempotent=False)
    before = {(r.kind, r.id): (r.version, r.data)
              for kind in ("vnf", "op", "host") for r in store.list(kind)}

    writes: list[Any] = [
        lambda: store.create("host", "h1", {}),
        lambda: store.put("vnf", "fw", {"haState": "RECOVERING"}),
        lambda: store.cas_update("vnf", "fw", 1, {"haState": "RECOVERING"}),
        lambda: store.delete("op", "o1"),
        lambda: store.delete("op", "o1", expected_version=1),
        lambda: store.transaction([Op.cas("vnf", "fw", 1, {"haState": "FAILED"}),
                                   Op.put("op", "o1", {"operationState": "FAILED"})]),
    ]
    for write in writes:
        with pytest.raises(LeadershipLost, match=f"leader key {key} is no longer"):
            write()
    assert {(r.kind, r.id): (r.version, r.data)
            for kind in ("vnf", "op", "host") for r in store.list(kind)} == before


def test_leadership_lost_is_not_retried_as_a_conflict(store: EtcdStore, prefix: str) -> None:
    key = f"{prefix}-leader"
    store.guard = campaign(store.client, key)
    store.create("vnf", "fw", {"n": 0})
    store.client.call("/kv/deleterange", {"key": b64(key)}, idempotent=False)
    calls = 0

    def bump(data: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"n": data["n"] + 1}

    with pytest.raises(LeadershipLost) as info:
        store.update("vnf", "fw", bump)
    assert not isinstance(info.value, ConflictError)
    assert calls == 1
    assert info.value.problem_type == "urn:nfvha:problem:leadership-lost"
    store.guard = None  # a store without a guard writes as before
    assert store.update("vnf", "fw", bump).data == {"n": 1}


def test_a_record_conflict_under_a_held_guard_is_still_a_conflict(store: EtcdStore,
                                                                  prefix: str) -> None:
    store.guard = campaign(store.client, f"{prefix}-leader")
    store.create("vnf", "fw", {})
    with pytest.raises(ConflictError, match="version 1, not the expected 4"):
        store.cas_update("vnf", "fw", 4, {})
    with pytest.raises(NotFound):
        store.cas_update("vnf", "nope", 1, {})


# --- what is in etcd -----------------------------------------------------------------------


def test_a_record_is_one_key_whose_etcd_version_is_the_records(store: EtcdStore,
                                                              prefix: str) -> None:
    store.create("vnf", "fw/1", {"haState": "ACTIVE"})
    store.put("vnf", "fw/1", {"haState": "SUSPECTED"})
    kv = store.client.call("/kv/range", {"key": b64(f"{prefix}/vnf/fw/1")},
                           idempotent=True)["kvs"][0]
    assert int(kv["version"]) == 2 == store.get("vnf", "fw/1").version
    assert [r.id for r in store.list("vnf")] == ["fw/1"]
    assert store.list("vnfd") == []  # vnf/ and vnfd/ are separate ranges


def test_stores_with_other_prefixes_do_not_see_each_other(etcd_url: str, prefix: str) -> None:
    with EtcdStore(etcd_url, prefix=prefix + "/a") as a, \
            EtcdStore(etcd_url, prefix=prefix + "/b") as b:
        a.create("host", "h1", {"site": "a"})
        assert b.find("host", "h1") is None
        assert b.list("host") == []


def test_a_foreign_value_under_the_prefix_is_reported(store: EtcdStore, prefix: str) -> None:
    store.client.call("/kv/put", {"key": b64(f"{prefix}/host/h1"), "value": b64("hello")},
                      idempotent=False)
    with pytest.raises(StoreError, match=r"does not hold an nfvha record"):
        store.list("host")


# --- members, connections, TLS ----------------------------------------------------------------


def test_a_dead_member_in_the_list_is_passed_over(etcd_url: str, prefix: str) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    with EtcdStore([dead, etcd_url], prefix=prefix) as s:
        s.create("vnf", "fw", {})
        assert s.get("vnf", "fw").version == 1
    with EtcdStore(f"{dead},{etcd_url}", prefix=prefix) as s:  # the CLI's form
        assert s.get("vnf", "fw").version == 1


def test_no_member_reachable_is_a_store_error_naming_them() -> None:
    dead = [f"http://127.0.0.1:{_free_port()}" for _ in range(2)]
    with pytest.raises(StoreError, match=r"no member answered.*quorum") as info:
        EtcdStore(dead)
    assert all(url in str(info.value) for url in dead)


def test_a_read_moves_on_but_a_write_without_answer_is_never_sent_twice() -> None:
    """A write whose answer was lost may have been applied: sending it to the next member
    could apply it twice, so it is reported instead. A read is simply asked again."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}:{request.url.port}{request.url.path}")
        if request.url.port == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(200, json={"kvs": [], "succeeded": True})

    def members() -> EtcdClient:
        return EtcdClient(["http://10.0.0.1:1", "http://10.0.0.2:2"],
                          transport=httpx.MockTransport(handler))

    client = members()
    assert client.call("/kv/range", {}, idempotent=True) == {"kvs": [], "succeeded": True}
    assert seen == ["10.0.0.1:1/v3/kv/range", "10.0.0.2:2/v3/kv/range"]
    client.call("/kv/range", {}, idempotent=True)  # the member that answered is kept
    assert seen[2:] == ["10.0.0.2:2/v3/kv/range"]
    client.close()

    seen.clear()
    client = members()
    with pytest.raises(StoreError, match="may or may not have been applied"):
        client.call("/kv/txn", {}, idempotent=False)
    assert seen == ["10.0.0.1:1/v3/kv/txn"]
    client.close()
    with pytest.raises(StoreError, match="closed"):
        client.call("/kv/range", {}, idempotent=True)


def test_a_write_raft_dropped_is_sent_again_and_a_persistent_drop_is_reported() -> None:
    """While etcd's raft leadership moves (nfvha keeps it off the leading manager's host)
    a proposal may be dropped before it enters the log: nothing was applied, so even a
    write goes again. It failed a terminate in the cluster e2e test once, and the VNF
    stayed TERMINATING."""
    dropped = httpx.Response(500, json={"error": "raft proposal dropped", "code": 2,
                                        "message": "raft proposal dropped"})
    answers = [dropped, dropped, httpx.Response(200, json={"succeeded": True})]
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return answers.pop(0) if answers else dropped

    client = EtcdClient(["http://10.0.0.1:1"], transport=httpx.MockTransport(handler))
    assert client.call("/kv/txn", {}, idempotent=False) == {"succeeded": True}
    assert sent == ["/v3/kv/txn"] * 3
    sent.clear()
    with pytest.raises(StoreError, match="raft proposal dropped"):
        client.call("/kv/txn", {}, idempotent=False)
    assert len(sent) == 4  # the first try and three more, then it is reported
    client.close()


def test_endpoints_must_be_client_urls() -> None:
    with pytest.raises(StoreError, match="no endpoint"):
        EtcdStore([])
    with pytest.raises(StoreError, match="give a client URL"):
        EtcdStore("127.0.0.1:2379")
    with pytest.raises(StoreError, match="no TLS certificate"):
        EtcdStore("https://127.0.0.1:2379")
    with pytest.raises(StoreError, match="key prefix"):
        EtcdStore("http://127.0.0.1:1", prefix="nfvha")


def test_tls_member_takes_a_client_certificate_from_its_ca(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca")
    server = ca.issue("manager", ips=["127.0.0.1"], out_dir=tmp_path / "etcd")
    client = ca.issue("manager", ips=["127.0.0.1"], out_dir=tmp_path / "client")
    with etcd_member(tls=TlsConfig(server.cert, server.key, ca.cert_path)) as url:
        assert url.startswith("https://")
        with EtcdStore(url, prefix=f"/{TEST_PREFIX}/tls",
                       tls=TlsConfig(client.cert, client.key, ca.cert_path)) as s:
            assert s.create("vnf", "fw", {"x": 1}).version == 1
            assert s.get("vnf", "fw").data == {"x": 1}
        other = init_ca(tmp_path / "other-ca")
        stranger = other.issue("manager", out_dir=tmp_path / "stranger")
        with pytest.raises(StoreError, match="no member answered"):
            EtcdStore(url, tls=TlsConfig(stranger.cert, stranger.key, other.cert_path))


# --- the manager's --store URL ------------------------------------------------------------


def test_store_urls_name_the_members_and_the_prefix() -> None:
    assert parse_store_url("etcd://10.0.0.1:2379,10.0.0.2:2379/site-a/") == (
        ["http://10.0.0.1:2379", "http://10.0.0.2:2379"], "/site-a")
    assert parse_store_url("etcd+https://[::1]:2379") == (
        ["https://[::1]:2379"], "/nfvha/default")
    for bad in ("sqlite:///x.db", "etcd://host", "etcd://a:1,:2", "etcd://a:port"):
        with pytest.raises(StoreError, match="store URL"):
            parse_store_url(bad)


def test_the_manager_takes_a_store_url(etcd_url: str, prefix: str) -> None:
    args = build_parser().parse_args(["manager", "--store", f"etcd://{etcd_url[7:]}{prefix}"])
    with EtcdStore.from_url(args.store) as s:
        assert (s.client.endpoints, s.prefix) == ((etcd_url,), prefix)
        s.create("host", "h1", {})
