"""The state store's contract, run against every backend (SQLite and etcd): versioned
records whose compare-and-set never loses a write."""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.errors import NfvhaError
from nfvha.store import (
    KINDS,
    ConflictError,
    EtcdStore,
    NotFound,
    Op,
    SqliteStore,
    StateStore,
    StoreError,
)
from tests.conftest import TEST_PREFIX

#: Opens another handle on the same stored records (another manager, or a restart).
StoreFactory = Callable[[], StateStore]


@pytest.fixture(params=["sqlite", "etcd", "etcd-cached"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """SQLite: one database file. etcd: the module's member (conftest.etcd_url), under a
    key prefix of this test's own, removed afterwards."""
    opened: list[StateStore] = []
    if request.param == "sqlite":
        path = tmp_path / "state.db"

        def make() -> StateStore:
            opened.append(SqliteStore(path))
            return opened[-1]

        yield make
        for s in opened:
            s.close()
        return

    url: str = request.getfixturevalue("etcd_url")
    prefix = f"/{TEST_PREFIX}/{uuid.uuid4().hex}"

    def make_etcd() -> StateStore:
        store = EtcdStore(url, prefix=prefix)
        # etcd-cached: the first handle reads from its cache, as a leader does (the
        # others, other managers or a restarted one, read etcd).
        store.cache_reads(request.param == "etcd-cached" and not opened)
        opened.append(store)
        return opened[-1]

    try:
        yield make_etcd
    finally:
        for s in opened:
            s.close()
        wipe_etcd_prefix(url, prefix)


def wipe_etcd_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (the gateway's range: the prefix with its last
    byte incremented as the end)."""
    start = (prefix + "/").encode()
    end = start[:-1] + bytes([start[-1] + 1])
    httpx.post(f"{url}/v3/kv/deleterange", timeout=5, json={
        "key": base64.b64encode(start).decode(), "range_end": base64.b64encode(end).decode()})


@pytest.fixture
def store(open_store: StoreFactory) -> StateStore:
    return open_store()


def snapshot(store: StateStore) -> dict[tuple[str, str], tuple[int, dict[str, Any]]]:
    return {(r.kind, r.id): (r.version, r.data) for kind in KINDS for r in store.list(kind)}


# --- single records ------------------------------------------------------------------------


def test_create_then_get_gives_version_1_and_a_copy_the_caller_may_change(
    store: StateStore,
) -> None:
    created = store.create("vnf", "fw-1", {"state": "ACTIVE", "host": "a", "ports": [1, 2]})
    assert (created.kind, created.id, created.version) == ("vnf", "fw-1", 1)
    assert created.updated_at > 0

    fetched = store.get("vnf", "fw-1")
    assert fetched == created
    fetched.data["state"] = "FAILED"
    assert store.get("vnf", "fw-1").data["state"] == "ACTIVE"


def test_create_of_an_existing_record_conflicts_and_keeps_the_first(store: StateStore) -> None:
    store.create("host", "a", {"up": True})
    with pytest.raises(ConflictError, match="host/a already exists"):
        store.create("host", "a", {"up": False})
    assert store.get("host", "a").data == {"up": True}


def test_absent_record_is_not_found_by_get_and_none_for_find(store: StateStore) -> None:
    with pytest.raises(NotFound, match="vnf/nope"):
        store.get("vnf", "nope")
    assert store.find("vnf", "nope") is None


def test_put_creates_at_version_1_then_increments(store: StateStore) -> None:
    assert store.put("alarm", "x", {"n": 1}).version == 1
    assert store.put("alarm", "x", {"n": 2}).version == 2
    record = store.get("alarm", "x")
    assert (record.version, record.data) == (2, {"n": 2})


def test_cas_update_writes_only_on_the_expected_version(store: StateStore) -> None:
    v1 = store.create("vnf", "fw", {"state": "ACTIVE"})
    v2 = store.cas_update("vnf", "fw", v1.version, {"state": "SUSPECTED"})
    assert v2.version == 2

    with pytest.raises(ConflictError, match="version 2, not the expected 1"):
        store.cas_update("vnf", "fw", v1.version, {"state": "RECOVERING"})
    assert store.get("vnf", "fw").data == {"state": "SUSPECTED"}

    with pytest.raises(NotFound):
        store.cas_update("vnf", "ghost", 1, {"state": "ACTIVE"})
    assert store.find("vnf", "ghost") is None


def test_expected_version_0_never_matches_an_absent_record(store: StateStore) -> None:
    """Versions start at 1: a compare-and-set on 0 is NotFound for an absent record (not
    a create), and a conflict for an existing one."""
    with pytest.raises(NotFound):
        store.cas_update("vnf", "ghost", 0, {"state": "ACTIVE"})
    with pytest.raises(NotFound):
        store.delete("vnf", "ghost", expected_version=0)
    assert store.find("vnf", "ghost") is None
    store.create("vnf", "fw", {})
    with pytest.raises(ConflictError):
        store.cas_update("vnf", "fw", 0, {"state": "ACTIVE"})


def test_delete_without_version_is_idempotent(store: StateStore) -> None:
    store.create("op", "o1", {})
    store.delete("op", "o1")
    store.delete("op", "o1")
    assert store.find("op", "o1") is None


def test_delete_with_version_refuses_a_changed_or_missing_record(store: StateStore) -> None:
    store.create("op", "o1", {"step": 1})
    store.put("op", "o1", {"step": 2})
    with pytest.raises(ConflictError):
        store.delete("op", "o1", expected_version=1)
    assert store.get("op", "o1").version == 2

    store.delete("op", "o1", expected_version=2)
    assert store.find("op", "o1") is None
    with pytest.raises(NotFound):
        store.delete("op", "o1", expected_version=2)


def test_a_record_created_again_after_delete_starts_over(store: StateStore) -> None:
    store.create("vnf", "a", {})
    store.put("vnf", "a", {})
    store.create("vnf", "b", {})
    store.delete("vnf", "a")
    again = store.create("vnf", "a", {"new": True})
    assert again.version == 1
    assert [r.id for r in store.list("vnf")] == ["b", "a"]


# --- listing -------------------------------------------------------------------------------


def test_list_keeps_creation_order_through_updates(store: StateStore) -> None:
    for vnf_id in ("c", "a", "b"):
        store.create("vnf", vnf_id, {"state": "ACTIVE"})
    store.put("vnf", "c", {"state": "FAILED"})
    store.create("host", "h", {})
    assert [r.id for r in store.list("vnf")] == ["c", "a", "b"]
    assert store.list("checkpoint") == []


def test_list_where_matches_equal_top_level_values(store: StateStore) -> None:
    store.create("vnf", "fw-1", {"state": "ACTIVE", "host": "a", "ha": True, "prio": 1})
    store.create("vnf", "fw-2", {"state": "FAILED", "host": "a", "ha": 1, "prio": None})
    store.create("vnf", "lb-1", {"state": "ACTIVE", "host": "b", "tags": ["x", "y"]})
    store.create("vnf", "odd", {"state": "ACTIVE", "a.b": "dotted"})

    def ids(**where: Any) -> list[str]:
        return [r.id for r in store.list("vnf", where=where)]

    assert ids(state="ACTIVE") == ["fw-1", "lb-1", "odd"]
    assert ids(state="ACTIVE", host="a") == ["fw-1"]
    assert ids(ha=True) == ["fw-1"]  # JSON true is not 1
    assert ids(ha=1) == ["fw-2"]
    assert ids(prio=None) == ["fw-2"]  # present and null; absent keys do not match
    assert ids(tags=["x", "y"]) == ["lb-1"]
    assert ids(**{"a.b": "dotted"}) == ["odd"]
    assert ids(state="GONE") == []
    assert [r.id for r in store.list("vnf", where={})] == ["fw-1", "fw-2", "lb-1", "odd"]


# --- transactions --------------------------------------------------------------------------


def test_transaction_applies_every_op_and_returns_the_written_records(
    store: StateStore,
) -> None:
    vnf = store.create("vnf", "fw", {"state": "RECOVERING"})
    store.create("op", "old", {})
    written = store.transaction([
        Op.cas("vnf", "fw", vnf.version, {"state": "ACTIVE", "host": "b"}),
        Op.create("op", "o2", {"result": "restored"}),
        Op.delete("op", "old"),
        Op.put("host", "b", {"load": 1}),
    ])
    assert [(r.kind, r.id, r.version) for r in written] == [
        ("vnf", "fw", 2), ("op", "o2", 1), ("host", "b", 1),
    ]
    assert store.get("vnf", "fw").data == {"state": "ACTIVE", "host": "b"}
    assert store.find("op", "old") is None
    assert store.transaction([]) == []


@pytest.mark.parametrize(
    ("failing_op", "error"),
    [
        (Op.cas("vnf", "fw", 7, {"state": "ACTIVE"}), ConflictError),
        (Op.create("vnf", "fw", {}), ConflictError),
        (Op.cas("vnf", "ghost", 1, {}), NotFound),
        (Op.delete("vnf", "fw", expected_version=3), ConflictError),
    ],
)
def test_transaction_that_fails_in_the_middle_changes_nothing(
    store: StateStore, failing_op: Op, error: type[StoreError]
) -> None:
    store.create("vnf", "fw", {"state": "RECOVERING"})
    store.create("host", "a", {"vnfs": ["fw"]})
    before = snapshot(store)
    with pytest.raises(error):
        store.transaction([
            Op.put("host", "a", {"vnfs": []}),
            Op.create("op", "o1", {"result": "restored"}),
            failing_op,
            Op.put("checkpoint", "c1", {"vnf": "fw"}),
        ])
    assert snapshot(store) == before


def test_transaction_refuses_two_ops_on_one_record(store: StateStore) -> None:
    with pytest.raises(StoreError, match="appears twice"):
        store.transaction([Op.create("vnf", "a", {}), Op.put("vnf", "a", {"x": 1})])
    assert store.find("vnf", "a") is None


def test_malformed_ops_are_refused_when_built() -> None:
    with pytest.raises(StoreError, match="needs expected_version"):
        Op("cas", "vnf", "a", {})
    with pytest.raises(StoreError, match="takes no data"):
        Op("delete", "vnf", "a", {})
    with pytest.raises(StoreError, match="unknown op"):
        Op("upsert", "vnf", "a", {})  # type: ignore[arg-type]


# --- update(): read-modify-write -----------------------------------------------------------


def test_update_retries_when_another_manager_wrote_in_between(open_store: StoreFactory) -> None:
    with open_store() as mine, open_store() as theirs:
        mine.create("vnf", "fw", {"restarts": 0, "state": "ACTIVE"})
        calls: list[dict[str, Any]] = []

        def count_restart(data: dict[str, Any]) -> dict[str, Any]:
            calls.append(dict(data))
            if len(calls) == 1:  # the other process commits between our read and write
                theirs.put("vnf", "fw", {**data, "state": "SUSPECTED"})
            return {**data, "restarts": data["restarts"] + 1}

        record = mine.update("vnf", "fw", count_restart)

    assert len(calls) == 2
    assert calls[1]["state"] == "SUSPECTED"
    assert record.data == {"restarts": 1, "state": "SUSPECTED"}
    assert record.version == 3


def test_update_gives_up_with_conflict_after_its_retries(open_store: StoreFactory) -> None:
    with open_store() as mine, open_store() as theirs:
        mine.create("vnf", "fw", {"n": 0})
        calls = 0

        def always_overtaken(data: dict[str, Any]) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            theirs.put("vnf", "fw", {"n": -1})
            return {"n": 1}

        with pytest.raises(ConflictError, match="gave up after 3 attempts"):
            mine.update("vnf", "fw", always_overtaken, retries=2)
    assert calls == 3


def test_update_together_writes_all_or_nothing(open_store: StoreFactory) -> None:
    """A VNF's state and its operation's end are one write: a writer that got in between
    on either record makes both be recomputed, and a failing change writes neither."""
    with open_store() as mine, open_store() as theirs:
        mine.create("vnf", "fw", {"haState": "RECOVERING", "host": "h1"})
        mine.create("op", "o1", {"operationState": "PROCESSING"})
        seen: list[dict[str, Any]] = []

        def to_active(data: dict[str, Any]) -> dict[str, Any]:
            seen.append(dict(data))
            if len(seen) == 1:  # another manager moves the VNF between our read and write
                theirs.put("vnf", "fw", {**data, "host": "h2"})
            return {**data, "haState": "ACTIVE"}

        vnf, op = mine.update_together([
            ("vnf", "fw", to_active),
            ("op", "o1", lambda d: {**d, "operationState": "COMPLETED"})])
        assert [d["host"] for d in seen] == ["h1", "h2"]
        assert (vnf.data, vnf.version) == ({"haState": "ACTIVE", "host": "h2"}, 3)
        assert (op.data, op.version) == ({"operationState": "COMPLETED"}, 2)

        def refuse(data: dict[str, Any]) -> dict[str, Any]:
            raise ValueError("illegal")

        before = snapshot(mine)
        with pytest.raises(ValueError):
            mine.update_together([("op", "o1", lambda d: {**d, "operationState": "X"}),
                                  ("vnf", "fw", refuse)])
        with pytest.raises(NotFound):
            mine.update_together([("op", "o1", lambda d: {**d, "operationState": "X"}),
                                  ("vnf", "nope", lambda d: d)])
        assert snapshot(mine) == before


def test_update_loses_no_increment_under_concurrent_writers(open_store: StoreFactory) -> None:
    stores = [open_store(), open_store()]
    stores[0].create("alarm", "counter", {"n": 0})
    per_thread, threads_per_store = 25, 2
    errors: list[BaseException] = []

    def bump(store: StateStore) -> None:
        try:
            for _ in range(per_thread):
                store.update("alarm", "counter", lambda d: {"n": d["n"] + 1}, retries=1000)
        except BaseException as exc:  # surfaced through `errors` below
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(s,)) for s in stores
               for _ in range(threads_per_store)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    try:
        assert errors == []
        total = per_thread * threads_per_store * len(stores)
        record = stores[1].get("alarm", "counter")
        assert record.data == {"n": total}
        assert record.version == total + 1
    finally:
        for s in stores:
            s.close()


async def test_one_store_can_serve_the_loop_and_to_thread_workers(store: StateStore) -> None:
    store.create("vnf", "fw", {"n": 0})

    def bump() -> None:
        store.update("vnf", "fw", lambda d: {"n": d["n"] + 1}, retries=100)

    await asyncio.gather(*(asyncio.to_thread(bump) for _ in range(20)))
    bump()  # and directly from the event loop thread
    assert store.get("vnf", "fw").data == {"n": 21}


# --- persistence and closing ----------------------------------------------------------------


def test_records_survive_a_manager_restart(open_store: StoreFactory) -> None:
    with open_store() as before:
        before.create("vnfd", "fw", {"image": "fw:1"})
        first = before.create("vnf", "fw-1", {"state": "ACTIVE"})
        before.create("vnf", "fw-0", {"state": "ACTIVE"})
        before.put("vnf", "fw-1", {"state": "RECOVERING"})

    with open_store() as after:
        assert [r.id for r in after.list("vnf")] == ["fw-1", "fw-0"]
        record = after.get("vnf", "fw-1")
        assert (record.version, record.data) == (2, {"state": "RECOVERING"})
        with pytest.raises(ConflictError):  # a version read before the restart is stale
            after.cas_update("vnf", "fw-1", first.version, {"state": "ACTIVE"})
        assert after.cas_update("vnf", "fw-1", 2, {"state": "ACTIVE"}).version == 3


def test_closed_store_refuses_calls(open_store: StoreFactory) -> None:
    s = open_store()
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.get("vnf", "a")


# --- input checks --------------------------------------------------------------------------


def test_unknown_kind_is_refused_naming_the_valid_ones(store: StateStore) -> None:
    with pytest.raises(StoreError, match=r"unknown record kind 'vm'.*vnfd, vnf, op") as info:
        store.create("vm", "a", {})
    assert isinstance(info.value, NfvhaError)
    with pytest.raises(StoreError, match="unknown record kind"):
        store.list("vms")
    with pytest.raises(StoreError, match="unknown record kind"):
        store.get("VNF", "a")
    with pytest.raises(StoreError, match="unknown record kind"):
        Op.put("instance", "a", {})


def test_empty_id_and_non_json_data_are_refused(store: StateStore) -> None:
    with pytest.raises(StoreError, match="invalid vnf id"):
        store.create("vnf", "", {})
    with pytest.raises(StoreError, match="not storable as JSON"):
        store.create("vnf", "a", {"when": object()})
    with pytest.raises(StoreError, match="not storable as JSON"):
        store.put("vnf", "a", {"load": float("nan")})
    assert store.find("vnf", "a") is None

