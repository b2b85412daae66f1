"""Streams a checkpoint to a peer agent as tar, chunk by chunk, so a backup host can restore
it; the receiver publishes it only once every byte matched its sha256.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import tarfile
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx
from pydantic import ValidationError

from nfvha.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    NfvhaError,
    TransferError,
)
from nfvha.vim.store import CheckpointStore, PendingCheckpoint
from nfvha.wire import META_FILE, CheckpointMeta, FileEntry

__all__ = [
    "PushResult",
    "iter_checkpoint_tar",
    "push_checkpoint",
    "receive_checkpoint_tar",
]

logger = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE  # 512
_END_OF_ARCHIVE = bytes(2 * BLOCK)
_USTAR_MAX_SIZE = 8**11  # 8 GiB: the largest size an octal ustar field can hold
_MAX_META_BYTES = 16 << 20
_WRITE_BATCH = 1 << 20
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_ERROR_TEXT_LIMIT = 500


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def _member_header(name: str, size: int, mtime: float) -> bytes:
    """One 512-byte header block for a regular file."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o600
    info.type = tarfile.REGTYPE
    # Images past 8 GiB need the GNU base-256 size field, which tar readers all accept.
    try:
        if size < _USTAR_MAX_SIZE:
            return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")
    except ValueError as exc:
        raise TransferError(f"cannot put {name!r} into a tar header: {exc}") from exc


def _check_member_name(name: str, meta: CheckpointMeta) -> None:
    if "/" in name or "\\" in name or ".." in name or "\x00" in name or not name:
        raise TransferError(
            f"checkpoint {meta.name}: refusing tar member {name!r}: file names must be"
            " plain names without '/' or '..'"
        )


# -- sending -------------------------------------------------------------------------


async def iter_checkpoint_tar(
    store: CheckpointStore, instance_id: str, seq: int, chunk_size: int = 1 << 20
) -> AsyncIterator[bytes]:
    """Yield a committed checkpoint as an uncompressed ustar stream, meta.json first.

    Files are read in a worker thread one chunk at a time. A file whose size on disk no
    longer matches meta.json stops the stream with CheckpointCorrupt before its header.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    meta = await asyncio.to_thread(store.get, instance_id, seq)
    for fname in meta.files:
        _check_member_name(fname, meta)
    directory = store.path(instance_id, seq)

    meta_bytes = meta.model_dump_json().encode()
    yield _member_header(META_FILE, len(meta_bytes), meta.created_at)
    yield meta_bytes + _padding(len(meta_bytes))

    for fname, entry in meta.files.items():
        f = await asyncio.to_thread(_open_for_sending, directory / fname, meta, fname, entry)
        try:
            yield _member_header(fname, entry.size, meta.created_at)
            remaining = entry.size
            while remaining:
                chunk = await asyncio.to_thread(f.read, min(chunk_size, remaining))
                if not chunk:
                    raise _corrupt(
                        meta, fname, f"shrank while being sent ({remaining} bytes short)"
                    )
                remaining -= len(chunk)
                if remaining == 0:
                    chunk += _padding(entry.size)
                yield chunk
        finally:
            f.close()
    yield _END_OF_ARCHIVE


def _corrupt(meta: CheckpointMeta, fname: str, problem: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(
        f"checkpoint {meta.name} is corrupt: file {fname} {problem};"
        " send the previous checkpoint instead",
        checkpoint=meta.name, file=fname,
    )


def _open_for_sending(path: Path, meta: CheckpointMeta, fname: str, entry: FileEntry) -> BinaryIO:
    try:
        f = path.open("rb")
    except FileNotFoundError as exc:
        if not path.parent.is_dir():
            raise CheckpointNotFound(
                f"checkpoint {meta.name} was deleted (retention?) while being sent"
            ) from exc
        raise _corrupt(meta, fname, "is missing") from exc
    except OSError as exc:
        raise CheckpointError(
            f"cannot read {path} of checkpoint {meta.name}: {exc.strerror or exc}"
        ) from exc
    size = os.fstat(f.fileno()).st_size
    if size != entry.size:
        f.close()
        raise _corrupt(meta, fname, f"has {size} bytes, expected {entry.size}")
    return f


# -- receiving -----------------------------------------------------------------------


class _StreamReader:
    """Exact-size reads over an async byte stream, buffering at most one request."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = aiter(chunks)
        self._buf = bytearray()
        self._eof = False

    async def _fill(self, n: int, what: str) -> None:
        while len(self._buf) < n:
            if self._eof:
                raise TransferError(
                    f"checkpoint stream ended early while reading {what}"
                    f" ({n - len(self._buf)} bytes short); the sender stopped or the"
                    " connection dropped"
                )
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._eof = True
                continue
            except NfvhaError:
                raise
            except Exception as exc:  # the transport's own errors, e.g. a client disconnect
                raise TransferError(
                    f"checkpoint stream broke while reading {what}: {exc!r}"
                ) from exc
            self._buf += chunk

    async def read_exact(self, n: int, what: str) -> bytes:
        await self._fill(n, what)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data


async def receive_checkpoint_tar(
    store: CheckpointStore,
    chunks: AsyncIterable[bytes],
    *,
    expect_instance: str | None = None,
    expect_seq: int | None = None,
) -> CheckpointMeta:
    """Read a stream made by ``iter_checkpoint_tar`` into ``store`` and commit it.

    Files are hashed as they arrive and checked by ``store.commit_import``. On any error,
    including a truncated stream, the pending checkpoint is removed and TransferError
    (bad stream) or CheckpointCorrupt (files do not match meta.json) is raised;
    CheckpointError comes through unchanged when the store refuses the import, e.g.
    because that checkpoint is already present.
    """
    reader = _StreamReader(chunks)
    meta = await _read_meta_member(reader)
    if expect_instance is not None and meta.instance_id != expect_instance:
        raise TransferError(
            f"stream carries checkpoint {meta.name}, but it was sent for instance"
            f" {expect_instance}"
        )
    if expect_seq is not None and meta.seq != expect_seq:
        raise TransferError(
            f"stream carries checkpoint {meta.name}, but it was sent as seq {expect_seq}"
        )
    for fname in meta.files:
        _check_member_name(fname, meta)

    pending = await asyncio.to_thread(store.begin_import, meta)
    try:
        received = await _read_members(reader, meta, pending)
        committed = await asyncio.to_thread(
            store.commit_import, pending, meta, received=received
        )
    except BaseException as exc:
        # Synchronous on purpose: it must complete even when this task is being cancelled.
        pending.abort()  # idempotent; commit_import may have done it already
        if isinstance(exc, OSError):
            raise TransferError(_write_error_text(exc, pending, meta)) from exc
        raise
    logger.info(
        "received checkpoint %s from host %s: %d bytes", meta.name, meta.host_id,
        meta.total_bytes,
    )
    return committed


async def _read_header(reader: _StreamReader, what: str) -> tarfile.TarInfo | None:
    """The next member's header, or None at the end-of-archive marker."""
    block = await reader.read_exact(BLOCK, f"the header of {what}")
    if block == _END_OF_ARCHIVE[:BLOCK]:
        await reader.read_exact(BLOCK, "the end-of-archive marker")
        return None
    try:
        info = tarfile.TarInfo.frombuf(block, encoding="utf-8", errors="surrogateescape")
    except tarfile.HeaderError as exc:
        raise TransferError(f"bad tar header for {what}: {exc}") from exc
    if info.type not in _REGULAR_TYPES:
        raise TransferError(
            f"refusing tar member {info.name!r} ({what}): only regular files are accepted"
        )
    return info


async def _read_meta_member(reader: _StreamReader) -> CheckpointMeta:
    info = await _read_header(reader, f"the first member ({META_FILE})")
    if info is None:
        raise TransferError("checkpoint stream is an empty tar archive")
    if info.name != META_FILE:
        raise TransferError(
            f"checkpoint stream must start with {META_FILE}, got {info.name!r};"
            " is the sender an nfvha agent?"
        )
    if info.size > _MAX_META_BYTES:
        raise TransferError(f"{META_FILE} in the stream is {info.size} bytes, too large")
    raw = await reader.read_exact(info.size + len(_padding(info.size)), META_FILE)
    try:
        return CheckpointMeta.model_validate_json(raw[: info.size])
    except ValidationError as exc:
        raise TransferError(f"{META_FILE} in the stream is invalid: {exc}") from exc


async def _read_members(
    reader: _StreamReader, meta: CheckpointMeta, pending: PendingCheckpoint
) -> dict[str, FileEntry]:
    received: dict[str, FileEntry] = {}
    while (info := await _read_header(reader, f"a member of {meta.name}")) is not None:
        fname = info.name
        _check_member_name(fname, meta)
        if fname not in meta.files:
            raise TransferError(
                f"checkpoint {meta.name}: refusing tar member {fname!r}: it is not listed"
                f" in {META_FILE}"
            )
        if fname in received:
            raise TransferError(f"checkpoint {meta.name}: tar member {fname!r} appears twice")
        if info.size != meta.files[fname].size:
            raise _corrupt_in_transit(
                meta, fname, f"is sent with {info.size} bytes, expected"
                f" {meta.files[fname].size}",
            )
        received[fname] = await _receive_file(reader, pending.path / fname, info.size, fname)
    return received


def _corrupt_in_transit(meta: CheckpointMeta, fname: str, problem: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(
        f"incoming checkpoint {meta.name} is corrupt: file {fname} {problem};"
        " the copy was damaged on its way here; push it again",
        checkpoint=meta.name, file=fname,
    )


async def _receive_file(
    reader: _StreamReader, path: Path, size: int, fname: str
) -> FileEntry:
    digest = hashlib.sha256()
    f = await asyncio.to_thread(path.open, "xb")
    try:
        remaining = size
        while remaining:
            piece = await reader.read_exact(min(remaining, _WRITE_BATCH), fname)
            await asyncio.to_thread(_write_and_hash, f, digest, piece)
            remaining -= len(piece)
        await asyncio.to_thread(f.flush)
    finally:
        f.close()
    if pad := len(_padding(size)):
        await reader.read_exact(pad, f"the padding after {fname}")
    return FileEntry(size=size, sha256=digest.hexdigest())


def _write_and_hash(f: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    f.write(data)
    digest.update(data)


def _write_error_text(exc: OSError, pending: PendingCheckpoint, meta: CheckpointMeta) -> str:
    where = exc.filename or pending.path
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on {where} while receiving {meta.name};"
            " free space or lower retention"
        )
    return f"could not write checkpoint {meta.name} at {where}: {exc.strerror or exc}"


# -- pushing -------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """What one push sent, to whom, and how long it took."""

    instance_id: str
    seq: int
    bytes_sent: int
    seconds: float
    peer: str


async def push_checkpoint(
    store: CheckpointStore,
    instance_id: str,
    seq: int,
    peer_url: str,
    token: str,
    *,
    client: httpx.AsyncClient | None = None,
    timeout: float = 60.0,
) -> PushResult:
    """PUT checkpoint ``seq`` of ``instance_id`` to the agent at ``peer_url``.

    ``timeout`` bounds each network step (connect, each write, waiting for the answer),
    not the whole transfer. Raises TransferError when the peer is unreachable or refuses.
    """
    meta = await asyncio.to_thread(store.get, instance_id, seq)
    url = f"{peer_url.rstrip('/')}/v1/checkpoints/{instance_id}/{seq}"
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        async for chunk in iter_checkpoint_tar(store, instance_id, seq):
            sent += len(chunk)
            yield chunk

    # With mutual TLS the token is empty: ``client`` presents this agent's certificate.
    headers = {"Content-Type": "application/x-tar"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.monotonic()
    own_client = client is None
    http = httpx.AsyncClient(timeout=timeout) if client is None else client
    try:
        response = await http.put(url, content=body(), headers=headers, timeout=timeout)
    except httpx.TimeoutException as exc:
        raise TransferError(
            f"peer {peer_url} did not answer within {timeout:g}s while receiving"
            f" checkpoint {meta.name}: {exc!r}; check that its agent runs and the link"
        ) from exc
    except httpx.TransportError as exc:
        raise TransferError(
            f"peer {peer_url} unreachable: {exc!r}; check that its agent runs"
        ) from exc
    finally:
        if own_client:
            await http.aclose()
    seconds = time.monotonic() - started
    if not response.is_success:
        raise TransferError(
            f"peer {peer_url} refused checkpoint {meta.name}: HTTP {response.status_code}:"
            f" {_error_text(response)}"
            + ("; check the agent token or certificate" if response.status_code in (401, 403)
               else "")
        )
    logger.info(
        "pushed checkpoint %s to %s: %d bytes in %.2fs", meta.name, peer_url, sent, seconds
    )
    return PushResult(instance_id=instance_id, seq=seq, bytes_sent=sent, seconds=seconds,
                      peer=peer_url)


def _error_text(response: httpx.Response) -> str:
    """The peer's error message: FastAPI's ``detail`` if present, else the body text."""
    text = response.text
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is not None:
        text = detail if isinstance(detail, str) else json.dumps(detail)
    text = text.strip() or response.reason_phrase
    return text[:_ERROR_TEXT_LIMIT]
