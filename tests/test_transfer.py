"""Checkpoint transfer: a peer ends up with an identical, verified checkpoint or nothing."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request

from nfvha.errors import CheckpointCorrupt, CheckpointError, TransferError
from nfvha.vim.store import CheckpointMeta, CheckpointStore, FileEntry
from nfvha.vim.transfer import (
    _member_header,
    iter_checkpoint_tar,
    push_checkpoint,
    receive_checkpoint_tar,
)

PAGES = os.urandom(300_000)  # spans several 64 KiB chunks and ends mid-block
IMAGES = {
    "pages-1.img": PAGES,
    "pagemap-1.img": b"P" * 1024,  # an exact number of blocks: no padding
    "pstree.img": b"",
    "core-1.img": b"core",
}
TOKEN = "s3cret"


@pytest.fixture
def source(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "a")


@pytest.fixture
def target(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "b")


def make_checkpoint(store: CheckpointStore, instance_id: str = "vnf1") -> CheckpointMeta:
    pending = store.begin(instance_id)
    for name, data in IMAGES.items():
        (pending.path / name).write_bytes(data)
    return store.commit(pending, vnf_name="fw", host_id="host-a",
                        descriptor={"id": "fw", "image": "fw:1"}, extra={"note": "x"})


async def tar_bytes(store: CheckpointStore, instance_id: str, seq: int) -> bytes:
    return b"".join([c async for c in iter_checkpoint_tar(store, instance_id, seq,
                                                          chunk_size=65536)])


async def in_slices(data: bytes, sizes: tuple[int, ...] = (7, 512, 1000, 65536)
                    ) -> AsyncIterator[bytes]:
    """Yield ``data`` in uneven pieces, as a network would."""
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        yield data[pos:pos + n]
        pos, i = pos + n, i + 1


def nothing_left(store: CheckpointStore) -> bool:
    leftovers = [p for p in store.root.rglob("*") if p.name.startswith(".pending-")]
    return store.list() == [] and leftovers == []


# -- the tar stream ----------------------------------------------------------------


async def test_round_trip_gives_an_identical_checkpoint(
    source: CheckpointStore, target: CheckpointStore
) -> None:
    meta = make_checkpoint(source)
    data = await tar_bytes(source, "vnf1", 1)

    received = await receive_checkpoint_tar(target, in_slices(data), expect_instance="vnf1",
                                            expect_seq=1)

    assert received == meta
    assert target.list() == [meta]
    assert target.verify("vnf1", 1) == meta
    for name, content in IMAGES.items():
        assert (target.path("vnf1", 1) / name).read_bytes() == content


async def test_stream_is_a_plain_tar_with_meta_first(source: CheckpointStore) -> None:
    meta = make_checkpoint(source)
    data = await tar_bytes(source, "vnf1", 1)

    assert len(data) % 512 == 0
    assert data.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["meta.json", *meta.files]
        meta_file = tar.extractfile(members[0])
        assert meta_file is not None
        assert CheckpointMeta.model_validate_json(meta_file.read()) == meta
        pages = tar.extractfile("pages-1.img")
        assert pages is not None and pages.read() == PAGES


def test_sizes_past_the_ustar_limit_still_fit_a_header() -> None:
    block = _member_header("pages-1.img", 9 << 30, 0)
    assert len(block) == 512
    assert tarfile.TarInfo.frombuf(block, "utf-8", "strict").size == 9 << 30


@pytest.mark.parametrize("cut", [100, 512 + 10, 40_000, -1024, -1])
async def test_truncated_stream_leaves_nothing(
    source: CheckpointStore, target: CheckpointStore, cut: int
) -> None:
    make_checkpoint(source)
    data = await tar_bytes(source, "vnf1", 1)

    with pytest.raises(TransferError, match="ended early"):
        await receive_checkpoint_tar(target, in_slices(data[:cut]))
    assert nothing_left(target)


async def test_flipped_byte_mid_stream_is_caught(
    source: CheckpointStore, target: CheckpointStore
) -> None:
    make_checkpoint(source)
    data = bytearray(await tar_bytes(source, "vnf1", 1))
    data[data.find(PAGES) + 150_000] ^= 0x01

    with pytest.raises(CheckpointCorrupt, match=r"vnf1/000001 is corrupt: file pages-1\.img "
                                                r"sha256 mismatch") as caught:
        await receive_checkpoint_tar(target, in_slices(bytes(data)))
    assert caught.value.file == "pages-1.img"
    assert nothing_left(target)


def handmade_stream(meta: CheckpointMeta, members: list[tuple[str, bytes]]) -> bytes:
    meta_json = meta.model_dump_json().encode()
    out = bytearray()
    for name, content in [("meta.json", meta_json), *members]:
        out += _member_header(name, len(content), 0) + content + bytes(-len(content) % 512)
    return bytes(out + bytes(1024))


def meta_for(files: dict[str, bytes]) -> CheckpointMeta:
    import hashlib

    entries = {n: FileEntry(size=len(d), sha256=hashlib.sha256(d).hexdigest())
               for n, d in files.items()}
    return CheckpointMeta(instance_id="vnf1", vnf_name="fw", seq=1, created_at=0.0,
                          host_id="evil", files=entries,
                          total_bytes=sum(e.size for e in entries.values()))


@pytest.mark.parametrize("member", ["../escape.img", "sub/pages.img", "unlisted.img"])
async def test_members_outside_the_checkpoint_are_refused(
    target: CheckpointStore, tmp_path: Path, member: str
) -> None:
    meta = meta_for({"pages-1.img": b"data"})
    stream = handmade_stream(meta, [(member, b"evil")])

    with pytest.raises(TransferError, match=f"refusing tar member '{member}'"):
        await receive_checkpoint_tar(target, in_slices(stream))
    assert nothing_left(target)
    assert not any(p.name == "escape.img" for p in tmp_path.rglob("*"))


async def test_meta_listing_a_subdirectory_is_refused(target: CheckpointStore) -> None:
    meta = meta_for({"sub/pages.img": b"data"})
    with pytest.raises(TransferError, match="without '/'"):
        await receive_checkpoint_tar(target, in_slices(handmade_stream(meta, [])))
    assert nothing_left(target)


async def test_stream_must_start_with_meta(target: CheckpointStore) -> None:
    stream = _member_header("pages-1.img", 4, 0) + b"data" + bytes(508) + bytes(1024)
    with pytest.raises(TransferError, match=r"must start with meta\.json"):
        await receive_checkpoint_tar(target, in_slices(stream))
    assert nothing_left(target)


async def test_stream_for_another_checkpoint_is_refused(
    source: CheckpointStore, target: CheckpointStore
) -> None:
    make_checkpoint(source)
    data = await tar_bytes(source, "vnf1", 1)
    with pytest.raises(TransferError, match=r"carries checkpoint vnf1/000001.*seq 2"):
        await receive_checkpoint_tar(target, in_slices(data), expect_instance="vnf1",
                                     expect_seq=2)
    assert nothing_left(target)


async def test_receiving_a_present_checkpoint_again_replaces_it(
    source: CheckpointStore, target: CheckpointStore
) -> None:
    meta = make_checkpoint(source)
    data = await tar_bytes(source, "vnf1", 1)
    await receive_checkpoint_tar(target, in_slices(data))
    await receive_checkpoint_tar(target, in_slices(data))
    assert target.verify("vnf1", 1) == meta
    assert [m.seq for m in target.list("vnf1")] == [1]


# -- pushing over HTTP ---------------------------------------------------------------


@dataclass
class Peer:
    url: str
    store: CheckpointStore


def peer_app(store: CheckpointStore) -> FastAPI:
    app = FastAPI()

    @app.put("/v1/checkpoints/{instance_id}/{seq}", status_code=201)
    async def receive(instance_id: str, seq: int, request: Request) -> dict[str, str]:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            raise HTTPException(401, "bad or missing agent token")
        try:
            meta = await receive_checkpoint_tar(store, request.stream(),
                                                expect_instance=instance_id, expect_seq=seq)
        except (CheckpointError, TransferError) as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"name": meta.name}

    return app


@pytest.fixture
async def peer(target: CheckpointStore) -> AsyncIterator[Peer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(peer_app(target), log_level="warning",
                                           lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(5):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield Peer(f"http://127.0.0.1:{port}", target)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 5)
        sock.close()


async def test_push_lands_a_verified_checkpoint_on_the_peer(
    source: CheckpointStore, peer: Peer
) -> None:
    meta = make_checkpoint(source)
    expected_bytes = len(await tar_bytes(source, "vnf1", 1))

    result = await push_checkpoint(source, "vnf1", 1, peer.url + "/", TOKEN, timeout=5)

    assert (result.instance_id, result.seq, result.peer) == ("vnf1", 1, peer.url + "/")
    assert result.bytes_sent == expected_bytes
    assert result.seconds > 0
    assert peer.store.verify("vnf1", 1) == meta


async def test_push_with_a_shared_client(source: CheckpointStore, peer: Peer) -> None:
    make_checkpoint(source)
    make_checkpoint(source)
    async with httpx.AsyncClient() as client:
        await push_checkpoint(source, "vnf1", 1, peer.url, TOKEN, client=client, timeout=5)
        await push_checkpoint(source, "vnf1", 2, peer.url, TOKEN, client=client, timeout=5)
        assert not client.is_closed
    assert [m.seq for m in peer.store.list()] == [1, 2]


async def test_a_checkpoint_damaged_on_disk_is_not_pushed(
    source: CheckpointStore, peer: Peer
) -> None:
    make_checkpoint(source)
    (source.path("vnf1", 1) / "pages-1.img").write_bytes(b"short")
    with pytest.raises(CheckpointCorrupt, match=r"file pages-1\.img has 5 bytes"):
        await push_checkpoint(source, "vnf1", 1, peer.url, TOKEN, timeout=5)
    # The peer notices the dropped connection on its own time, then removes its pending copy.
    async with asyncio.timeout(3):
        while not nothing_left(peer.store):
            await asyncio.sleep(0.02)


async def test_push_to_a_closed_port_says_unreachable(source: CheckpointStore) -> None:
    make_checkpoint(source)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(TransferError, match=f"peer {url} unreachable.*check that its agent runs"
                       ) as caught:
        await push_checkpoint(source, "vnf1", 1, url, TOKEN, timeout=2)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_push_with_a_wrong_token_is_refused(source: CheckpointStore, peer: Peer) -> None:
    make_checkpoint(source)
    with pytest.raises(TransferError, match="HTTP 401: bad or missing agent token; check the "
                                            "agent token"):
        await push_checkpoint(source, "vnf1", 1, peer.url, "wrong", timeout=5)
    assert nothing_left(peer.store)


async def test_push_reports_the_peers_error(source: CheckpointStore, peer: Peer) -> None:
    make_checkpoint(source)
    peer.store.root.mkdir(parents=True, exist_ok=True)
    (peer.store.root / "vnf1").write_text("not a directory")  # the peer cannot store it
    with pytest.raises(TransferError, match=r"HTTP 409: .*vnf1/000001"):
        await push_checkpoint(source, "vnf1", 1, peer.url, TOKEN, timeout=5)
