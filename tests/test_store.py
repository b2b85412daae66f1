"""The checkpoint store: only complete, intact checkpoints are ever offered for restore."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nfvha.errors import CheckpointCorrupt, CheckpointError, CheckpointNotFound, ConfigError
from nfvha.vim import store as store_module
from nfvha.vim.store import CheckpointMeta, CheckpointStore, PendingCheckpoint

IMAGES = {
    "inventory.img": b"inventory" * 10,
    "pages-1.img": os.urandom(200_000),
    "pstree.img": b"",
    "dump.log": b"(00.001) dump ok\n",
}


def write_images(pending: PendingCheckpoint, images: dict[str, bytes] = IMAGES) -> None:
    for name, data in images.items():
        (pending.path / name).write_bytes(data)


def make_checkpoint(store: CheckpointStore, instance_id: str = "vnf1",
                    images: dict[str, bytes] = IMAGES) -> CheckpointMeta:
    pending = store.begin(instance_id)
    write_images(pending, images)
    return store.commit(pending, vnf_name="fw", host_id="host-a",
                        descriptor={"id": "fw"}, criu_stats={"frozen_time_us": 1200})


def pending_dirs(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".pending-", ".deleting-"))]


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "ckpt", keep=3)


# -- commit and visibility -----------------------------------------------------------


def test_pending_checkpoint_is_invisible_until_committed(store: CheckpointStore) -> None:
    pending = store.begin("vnf1")
    write_images(pending)

    assert store.list() == []
    assert store.latest("vnf1") is None
    with pytest.raises(CheckpointNotFound):
        store.get("vnf1", 1)

    meta = store.commit(pending, vnf_name="fw", host_id="host-a", descriptor={"id": "fw"},
                        created_at=1700000000.0)

    assert [m.name for m in store.list()] == ["vnf1/000001"]
    assert store.latest("vnf1") == meta
    assert store.get("vnf1", 1) == meta
    assert store.path("vnf1", 1) == store.root / "vnf1" / "000001"
    assert (store.path("vnf1", 1) / "meta.json").is_file()
    assert not pending.path.exists()
    assert pending_dirs(store.root) == []
    assert meta.host_id == "host-a" and meta.vnf_name == "fw"
    assert meta.created_at == 1700000000.0
    assert meta.descriptor == {"id": "fw"}
    assert set(meta.files) == set(IMAGES)
    assert meta.files["pages-1.img"].sha256 == hashlib.sha256(IMAGES["pages-1.img"]).hexdigest()
    assert meta.files["pstree.img"].size == 0
    assert meta.total_bytes == sum(len(d) for d in IMAGES.values())


def test_abort_removes_pending_and_is_idempotent(store: CheckpointStore) -> None:
    pending = store.begin("vnf1")
    write_images(pending)
    pending.abort()
    pending.abort()
    assert not pending.path.exists()
    with pytest.raises(CheckpointError, match="already committed or aborted"):
        store.commit(pending, vnf_name="fw", host_id="host-a")
    assert store.list() == []


def test_sequence_numbers_count_committed_and_pending(store: CheckpointStore) -> None:
    first = store.begin("vnf1")
    second = store.begin("vnf1")
    assert (first.seq, second.seq) == (1, 2)

    write_images(second)
    store.commit(second, vnf_name="fw", host_id="h")
    assert store.begin("vnf1").seq == 3
    assert store.begin("other").seq == 1


def test_concurrent_begins_get_distinct_numbers(store: CheckpointStore) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        seqs = list(pool.map(lambda _: store.begin("vnf1").seq, range(16)))
    assert sorted(seqs) == list(range(1, 17))


def test_retention_keeps_the_last_k(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for _ in range(5):
        make_checkpoint(store, "vnf1")
    make_checkpoint(store, "vnf2")

    assert [(m.instance_id, m.seq) for m in store.list()] == [
        ("vnf1", 4), ("vnf1", 5), ("vnf2", 1)]
    assert sorted(p.name for p in (tmp_path / "vnf1").iterdir()) == ["000004", "000005"]


def test_keep_below_one_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        CheckpointStore(tmp_path, keep=0)


def test_disk_full_during_commit_says_so_and_leaves_nothing(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(directory: Path, meta: CheckpointMeta, **_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "meta.json"))

    monkeypatch.setattr(store_module, "_write_meta", no_space)
    pending = store.begin("vnf1")
    write_images(pending)

    with pytest.raises(CheckpointError, match=r"no space left on .* while committing "
                       r"vnf1/000001; free space or lower retention"):
        store.commit(pending, vnf_name="fw", host_id="h")
    assert store.list() == []
    assert pending_dirs(store.root) == []


def test_commit_refuses_a_symlink(store: CheckpointStore, tmp_path: Path) -> None:
    pending = store.begin("vnf1")
    write_images(pending)
    (pending.path / "pages-2.img").symlink_to(tmp_path)
    with pytest.raises(CheckpointError, match=r"pages-2\.img is not a regular file"):
        store.commit(pending, vnf_name="fw", host_id="h")
    assert pending_dirs(store.root) == []


# -- verify ------------------------------------------------------------------------


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(1000)


@pytest.mark.parametrize(("damage", "fname", "problem"), [
    (flip_byte, "pages-1.img", r"sha256 mismatch \(expected [0-9a-f]{64}, got [0-9a-f]{64}\)"),
    (truncate, "pages-1.img", "has 1000 bytes, expected 200000"),
    (Path.unlink, "inventory.img", "is missing"),
    (lambda d: d.write_bytes(b"x"), "stray.img", "is not listed in meta.json"),
])
def test_verify_names_the_damaged_file(store: CheckpointStore, damage: object,
                                       fname: str, problem: str) -> None:
    previous = make_checkpoint(store)
    latest = make_checkpoint(store)
    damage(store.path("vnf1", latest.seq) / fname)  # type: ignore[operator]

    with pytest.raises(CheckpointCorrupt,
                       match=rf"^checkpoint vnf1/000002 is corrupt: file {fname} {problem};"
                             " restore the previous checkpoint$") as caught:
        store.verify("vnf1", 2)
    assert caught.value.checkpoint == "vnf1/000002"
    assert caught.value.file == fname
    assert store.verify("vnf1", previous.seq) == previous


def test_verify_of_an_intact_checkpoint_returns_its_meta(store: CheckpointStore) -> None:
    meta = make_checkpoint(store)
    assert store.verify("vnf1", 1) == meta


def test_unreadable_meta_is_skipped_in_list_and_corrupt_in_get(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    make_checkpoint(store)
    make_checkpoint(store)
    (store.path("vnf1", 2) / "meta.json").write_text("{not json")

    with caplog.at_level(logging.WARNING, logger="nfvha.vim.store"):
        assert [m.seq for m in store.list("vnf1")] == [1]
    assert "vnf1/000002" in caplog.text
    latest = store.latest("vnf1")
    assert latest is not None and latest.seq == 1
    with pytest.raises(CheckpointCorrupt, match=r"vnf1/000002 is corrupt: its meta\.json is "
                                                r"unreadable") as caught:
        store.get("vnf1", 2)
    assert caught.value.file == "meta.json"


def test_not_found_says_what_exists(store: CheckpointStore) -> None:
    make_checkpoint(store)
    make_checkpoint(store)
    with pytest.raises(CheckpointNotFound,
                       match=r"vnf1/000009 not found .*vnf1 has 000001, 000002"):
        store.get("vnf1", 9)
    with pytest.raises(CheckpointNotFound, match="holds no checkpoints of vnf7"):
        store.verify("vnf7", 1)


# -- housekeeping -------------------------------------------------------------------


def test_cleanup_pending_removes_only_abandoned_dirs(store: CheckpointStore) -> None:
    crashed = CheckpointStore(store.root).begin("vnf1")  # another process that died
    write_images(crashed)
    live = store.begin("vnf2")
    make_checkpoint(store, "vnf1")

    assert store.cleanup_pending() == 1
    assert not crashed.path.exists()
    assert live.path.exists()
    assert [m.name for m in store.list()] == ["vnf1/000002"]


def test_delete_one_or_all(store: CheckpointStore) -> None:
    for _ in range(3):
        make_checkpoint(store, "vnf1")
    make_checkpoint(store, "vnf2")

    store.delete("vnf1", 2)
    assert [m.seq for m in store.list("vnf1")] == [1, 3]
    with pytest.raises(CheckpointNotFound, match="vnf1/000002"):
        store.delete("vnf1", 2)

    store.delete("vnf1")
    assert [m.name for m in store.list()] == ["vnf2/000001"]
    assert not (store.root / "vnf1").exists()
    store.delete("vnf1")  # nothing left: no error


def test_usage_bytes_counts_images_and_meta(store: CheckpointStore) -> None:
    assert store.usage_bytes() == 0
    meta = make_checkpoint(store)
    assert store.usage_bytes() > meta.total_bytes


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "-x", "x" * 65, "a\x00b"])
def test_bad_instance_ids_are_refused(store: CheckpointStore, bad: str) -> None:
    with pytest.raises(CheckpointError, match="invalid instance id"):
        store.begin(bad)
    with pytest.raises(CheckpointError, match="invalid instance id"):
        store.list(bad)
    with pytest.raises(CheckpointError, match="invalid instance id"):
        store.path(bad, 1)
    assert list(store.root.parent.iterdir()) == [store.root]


# -- import from a peer ------------------------------------------------------------


def copy_into(src: Path, pending: PendingCheckpoint) -> None:
    for f in src.iterdir():
        if f.name != "meta.json":
            shutil.copyfile(f, pending.path / f.name)


def test_import_keeps_seq_and_verifies(store: CheckpointStore, tmp_path: Path) -> None:
    for _ in range(2):
        meta = make_checkpoint(store)
    peer = CheckpointStore(tmp_path / "peer")

    pending = peer.begin_import(meta)
    assert pending.seq == 2
    assert peer.list() == []
    copy_into(store.path("vnf1", 2), pending)
    imported = peer.commit_import(pending, meta)

    assert imported == meta
    assert peer.list() == [meta]
    assert peer.verify("vnf1", 2) == meta
    assert peer.begin("vnf1").seq == 3


def test_import_replaces_a_stale_checkpoint_of_the_same_number(
        store: CheckpointStore, tmp_path: Path) -> None:
    """A host that crashed as primary may hold a checkpoint numbered like the one the
    new primary pushes: the pushed one (the current incarnation) replaces it."""
    peer = CheckpointStore(tmp_path / "peer", keep=3)
    stale = peer.begin("vnf1")
    (stale.path / "pages-1.img").write_bytes(b"old incarnation")
    peer.commit(stale, vnf_name="fw", host_id="old")
    pending = store.begin("vnf1")
    write_images(pending)
    meta = store.commit(pending, vnf_name="fw", host_id="new")
    incoming = peer.begin_import(meta)
    copy_into(store.path("vnf1", 1), incoming)
    peer.commit_import(incoming, meta)
    assert peer.verify("vnf1", 1) == meta
    assert [m.host_id for m in peer.list("vnf1")] == ["new"]


@pytest.mark.parametrize(("damage", "fname", "problem"), [
    (flip_byte, "pages-1.img", "sha256 mismatch"),
    (Path.unlink, "dump.log", "is missing"),
    (lambda d: d.write_bytes(b"x"), "extra.img", "is not listed in meta.json"),
])
def test_import_of_damaged_files_is_refused(store: CheckpointStore, tmp_path: Path,
                                            damage: object, fname: str, problem: str) -> None:
    meta = make_checkpoint(store)
    peer = CheckpointStore(tmp_path / "peer")
    pending = peer.begin_import(meta)
    copy_into(store.path("vnf1", 1), pending)
    damage(pending.path / fname)  # type: ignore[operator]

    with pytest.raises(CheckpointCorrupt, match=f"vnf1/000001 is corrupt: file {fname} "
                                                f"{problem}.*push it again") as caught:
        peer.commit_import(pending, meta)
    assert (caught.value.checkpoint, caught.value.file) == ("vnf1/000001", fname)
    assert peer.list() == []
    assert pending_dirs(peer.root) == []
