"""On-host checkpoint store: a restore must never start from a half-written or damaged
checkpoint, so each one appears only by atomic rename and records every file's sha256.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nfvha.errors import CheckpointCorrupt, CheckpointError, CheckpointNotFound, ConfigError
from nfvha.wire import META_FILE, CheckpointMeta, FileEntry, validate_instance_id

__all__ = [
    "CheckpointMeta",
    "CheckpointStore",
    "FileEntry",
    "PendingCheckpoint",
    "validate_instance_id",
]

logger = logging.getLogger(__name__)

_COMMITTED_RE = re.compile(r"^[0-9]{6,}$")
_PENDING_RE = re.compile(r"^\.pending-([0-9]{6,})-[0-9a-f]+$")
_DELETING_PREFIX = ".deleting-"
_HASH_CHUNK = 1 << 20
_HASH_WORKERS = 4
_VERIFY_ADVICE = "restore the previous checkpoint"
_IMPORT_ADVICE = "the copy was damaged on its way here; push it again"


def _is_instance_id(name: str) -> bool:
    try:
        validate_instance_id(name)
    except ValueError:
        return False
    return True


def _checkpoint_name(instance_id: str, seq: int) -> str:
    return f"{instance_id}/{seq:06d}"


class PendingCheckpoint:
    """A checkpoint being written: invisible to ``list`` until committed.

    Write the CRIU images (or the files received from a peer) into ``path``, then pass
    this object to ``CheckpointStore.commit`` / ``commit_import``, or call ``abort``.
    """

    def __init__(
        self,
        path: Path,
        instance_id: str,
        seq: int,
        *,
        on_close: Callable[[Path], None] | None = None,
    ) -> None:
        self.path = path
        self.instance_id = instance_id
        self.seq = seq
        self._on_close = on_close

    @property
    def name(self) -> str:
        return _checkpoint_name(self.instance_id, self.seq)

    def abort(self) -> None:
        """Remove the pending directory; safe to call again or after a commit."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._close()

    def _close(self) -> None:
        if self._on_close is not None:
            self._on_close(self.path)
            self._on_close = None

    def __repr__(self) -> str:
        return f"PendingCheckpoint({self.name!r}, path={str(self.path)!r})"


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: Path, *, fsync: bool) -> FileEntry:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return FileEntry(size=size, sha256=digest.hexdigest())


def _scan_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Regular files under ``directory`` by relative name, and names of anything else.

    ``meta.json`` at the top level is left out; sub-directories are walked, not listed.
    """
    files: dict[str, Path] = {}
    odd: list[str] = []
    pending = [directory]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                path = Path(entry.path)
                rel = path.relative_to(directory).as_posix()
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif entry.is_file(follow_symlinks=False):
                    if rel != META_FILE:
                        files[rel] = path
                else:
                    odd.append(rel)
    return files, sorted(odd)


def _sync_tree(directory: Path) -> None:
    """fsync ``directory`` and every sub-directory, so all entries survive a crash."""
    for current, _dirs, _files in os.walk(directory):
        _fsync_path(Path(current), directory=True)


def _read_meta(path: Path) -> CheckpointMeta:
    return CheckpointMeta.model_validate_json((path / META_FILE).read_bytes())


def _write_meta(directory: Path, meta: CheckpointMeta, *, durable: bool = True) -> None:
    target = directory / META_FILE
    with target.open("xb") as f:
        f.write(meta.model_dump_json(indent=2).encode())
        f.flush()
        if durable:
            os.fsync(f.fileno())


class CheckpointStore:
    """Checkpoints on local disk under ``<root>/<instance_id>/<seq:06d>/``.

    Guarantees:

    - A checkpoint is listed only after its files, ``meta.json`` and directory were
      fsynced and the pending directory was renamed into place (atomic on one filesystem).
      Pending directories (``.pending-*``) are never listed.
    - Deleting (explicitly or by retention) first renames the checkpoint away under the
      store lock, so a reader sees a checkpoint either whole or not at all.
    - ``begin`` hands out sequence numbers under a lock, so concurrent dumps of one
      instance never share a number. Hashing runs outside the lock.

    All methods block on file I/O; async callers use ``asyncio.to_thread``.
    """

    def __init__(self, root: Path, keep: int = 3, *, durable: bool = False) -> None:
        if keep < 1:
            raise ConfigError(f"checkpoint retention must keep at least 1 checkpoint, got {keep}")
        self.root = Path(root)
        # fsync images and directories on commit. Off by default: every file is verified
        # by SHA-256 before a restore, so a torn write is caught and the previous
        # checkpoint used; and the host that wrote a checkpoint losing power loses its VNF
        # too (the replica elsewhere is what a restore then uses).
        self.durable = durable
        self.keep = keep
        self._lock = threading.Lock()
        self._active: set[Path] = set()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"checkpoint store root {self.root} is not usable: {exc.strerror or exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.root)!r}, keep={self.keep})"

    # -- paths -----------------------------------------------------------------------

    def _instance_dir(self, instance_id: str) -> Path:
        try:
            validate_instance_id(instance_id)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
        return self.root / instance_id

    def path(self, instance_id: str, seq: int) -> Path:
        """Directory of checkpoint ``seq`` of ``instance_id`` (whether or not it exists)."""
        return self._instance_dir(instance_id) / f"{seq:06d}"

    def _committed_seqs(self, instance_dir: Path) -> list[int]:
        try:
            names = os.listdir(instance_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if _COMMITTED_RE.fullmatch(n))

    def _pending_seqs(self, instance_dir: Path) -> list[int]:
        try:
            names = os.listdir(instance_dir)
        except FileNotFoundError:
            return []
        return [int(m.group(1)) for n in names if (m := _PENDING_RE.fullmatch(n))]

    # -- writing ---------------------------------------------------------------------

    def begin(self, instance_id: str) -> PendingCheckpoint:
        """Start a new checkpoint numbered one past every committed or pending one."""
        instance_dir = self._instance_dir(instance_id)
        with self._lock:
            seqs = self._committed_seqs(instance_dir) + self._pending_seqs(instance_dir)
            seq = max(seqs, default=0) + 1
            return self._make_pending(instance_id, seq)

    def begin_import(self, meta: CheckpointMeta) -> PendingCheckpoint:
        """Start receiving ``meta``'s checkpoint from a peer, keeping its sequence number."""
        self._instance_dir(meta.instance_id)
        with self._lock:
            return self._make_pending(meta.instance_id, meta.seq)

    def _make_pending(self, instance_id: str, seq: int) -> PendingCheckpoint:
        # Caller holds self._lock.
        instance_dir = self.root / instance_id
        path = instance_dir / f".pending-{seq:06d}-{secrets.token_hex(4)}"
        name = _checkpoint_name(instance_id, seq)
        try:
            instance_dir.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except OSError as exc:
            raise CheckpointError(self._os_error_text(exc, path, name, "starting")) from exc
        self._active.add(path)
        return PendingCheckpoint(path, instance_id, seq, on_close=self._release)

    def _release(self, path: Path) -> None:
        with self._lock:
            self._active.discard(path)

    def _check_pending(self, pending: PendingCheckpoint) -> None:
        with self._lock:
            active = pending.path in self._active
        if not active or pending.path.parent != self._instance_dir(pending.instance_id):
            raise CheckpointError(
                f"pending checkpoint {pending.name} ({pending.path}) is not open in {self!r};"
                " it was already committed or aborted, or belongs to another store"
            )

    def commit(
        self,
        pending: PendingCheckpoint,
        *,
        vnf_name: str,
        host_id: str,
        criu_stats: Mapping[str, Any] | None = None,
        descriptor: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        created_at: float | None = None,
        cut_at: float | None = None,
    ) -> CheckpointMeta:
        """Hash and seal every file in ``pending.path``, publish it, apply retention.

        On failure the pending directory is removed and CheckpointError is raised.
        """
        self._check_pending(pending)
        try:
            files, odd = _scan_files(pending.path)
            if odd:
                raise CheckpointError(
                    f"cannot commit {pending.name}: {odd[0]} is not a regular file;"
                    " a checkpoint holds only regular files"
                )
            if (pending.path / META_FILE).exists():
                raise CheckpointError(
                    f"cannot commit {pending.name}: {META_FILE} is reserved for the store"
                )
            entries = self._hash_all(files, fsync=self.durable)
            try:
                meta = CheckpointMeta(
                    instance_id=pending.instance_id,
                    vnf_name=vnf_name,
                    seq=pending.seq,
                    created_at=time.time() if created_at is None else created_at,
                    cut_at=cut_at,
                    host_id=host_id,
                    files=dict(sorted(entries.items())),
                    total_bytes=sum(e.size for e in entries.values()),
                    criu_stats=dict(criu_stats or {}),
                    descriptor=dict(descriptor or {}),
                    extra=dict(extra or {}),
                )
            except ValidationError as exc:
                raise CheckpointError(f"cannot commit {pending.name}: {exc}") from exc
            self._seal(pending, meta, "committing")
        except BaseException as exc:
            pending.abort()
            if isinstance(exc, OSError):
                raise CheckpointError(
                    self._os_error_text(exc, pending.path, pending.name, "committing")
                ) from exc
            raise
        logger.info(
            "committed checkpoint %s: %d files, %d bytes", meta.name, len(meta.files),
            meta.total_bytes,
        )
        self._apply_retention(pending.instance_id)
        return meta

    def commit_import(
        self,
        pending: PendingCheckpoint,
        meta: CheckpointMeta,
        *,
        received: Mapping[str, FileEntry] | None = None,
    ) -> CheckpointMeta:
        """Check the received files against ``meta``, then publish them like ``commit``.

        ``received`` optionally holds size and sha256 the caller computed while writing
        the files, so they are not read again; sizes and the set of files are still
        checked on disk. A mismatch aborts the import and raises CheckpointCorrupt.
        """
        self._check_pending(pending)
        try:
            if (pending.instance_id, pending.seq) != (meta.instance_id, meta.seq):
                raise CheckpointError(
                    f"pending checkpoint {pending.name} cannot take the files of {meta.name}"
                )
            if (pending.path / META_FILE).exists():
                raise CheckpointCorrupt(
                    f"incoming checkpoint {meta.name} carries its own {META_FILE} file"
                    f" among its images; {_IMPORT_ADVICE}",
                    checkpoint=meta.name, file=META_FILE,
                )
            self._check_files(
                pending.path, meta, what=f"incoming checkpoint {meta.name}",
                advice=_IMPORT_ADVICE, known=received, fsync=self.durable,
            )
            self._seal(pending, meta, "importing")
        except BaseException as exc:
            pending.abort()
            if isinstance(exc, OSError):
                raise CheckpointError(
                    self._os_error_text(exc, pending.path, meta.name, "importing")
                ) from exc
            raise
        logger.info("imported checkpoint %s from host %s", meta.name, meta.host_id)
        self._apply_retention(meta.instance_id)
        return meta

    def _seal(self, pending: PendingCheckpoint, meta: CheckpointMeta, action: str) -> None:
        """Write meta.json, fsync, rename into place. Raises OSError or CheckpointError."""
        _write_meta(pending.path, meta, durable=self.durable)
        if self.durable:
            _sync_tree(pending.path)
        instance_dir = pending.path.parent
        final = instance_dir / f"{meta.seq:06d}"
        stale: Path | None = None
        with self._lock:
            if final.exists():
                if action != "importing":
                    raise CheckpointError(
                        f"cannot finish {action} {meta.name}: it is already present in "
                        f"{self.root}")
                # A checkpoint of the same number from an earlier incarnation of the VNF
                # (this host crashed as its primary): the current primary's copy wins.
                stale = instance_dir / f".deleting-{meta.seq:06d}-{secrets.token_hex(4)}"
                os.rename(final, stale)
                logger.warning("replacing stale checkpoint %s with the one pushed by %s",
                               meta.name, meta.host_id)
            os.rename(pending.path, final)
            self._active.discard(pending.path)
        pending._close()
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
        if not self.durable:
            return
        try:
            _fsync_path(instance_dir, directory=True)
        except OSError as exc:
            # Already visible; only its survival across a power cut is in doubt.
            logger.warning("checkpoint %s committed but %s not synced: %s",
                           meta.name, instance_dir, exc)

    @staticmethod
    def _os_error_text(exc: OSError, path: Path, name: str, action: str) -> str:
        where = exc.filename or path
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (
                f"no space left on {where} while {action} {name};"
                " free space or lower retention"
            )
        return f"{action} checkpoint {name} failed at {where}: {exc.strerror or exc}"

    # -- retention and deletion -----------------------------------------------------

    def _apply_retention(self, instance_id: str) -> None:
        instance_dir = self.root / instance_id
        with self._lock:
            seqs = self._committed_seqs(instance_dir)
            doomed = self._move_away(instance_dir, seqs[: -self.keep])
        for seq, path in doomed:
            shutil.rmtree(path, ignore_errors=True)
            logger.info(
                "retention (keep %d): deleted checkpoint %s",
                self.keep, _checkpoint_name(instance_id, seq),
            )

    def _move_away(self, instance_dir: Path, seqs: list[int]) -> list[tuple[int, Path]]:
        """Rename checkpoints out of sight; caller holds the lock and removes them after."""
        moved: list[tuple[int, Path]] = []
        for seq in seqs:
            target = instance_dir / f"{_DELETING_PREFIX}{seq:06d}-{secrets.token_hex(4)}"
            try:
                os.rename(instance_dir / f"{seq:06d}", target)
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning(
                    "could not delete checkpoint %s: %s",
                    _checkpoint_name(instance_dir.name, seq), exc,
                )
                continue
            moved.append((seq, target))
        return moved

    def delete(self, instance_id: str, seq: int | None = None) -> None:
        """Delete one checkpoint, or every committed checkpoint of the instance.

        Deleting one that does not exist raises CheckpointNotFound; deleting all of an
        instance that has none is a no-op.
        """
        instance_dir = self._instance_dir(instance_id)
        with self._lock:
            existing = self._committed_seqs(instance_dir)
            if seq is not None and seq not in existing:
                raise CheckpointNotFound(self._not_found_text(instance_id, seq, existing))
            doomed = self._move_away(instance_dir, existing if seq is None else [seq])
        for _seq, path in doomed:
            shutil.rmtree(path, ignore_errors=True)
        if seq is None:
            # Fails when a pending checkpoint is still in there; then the directory stays.
            with contextlib.suppress(OSError):
                instance_dir.rmdir()

    def cleanup_pending(self) -> int:
        """Remove leftover ``.pending-*`` and half-deleted directories; return how many.

        Pending checkpoints opened by this store object are left alone.
        """
        removed = 0
        try:
            instance_dirs = [p for p in self.root.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return 0
        for instance_dir in instance_dirs:
            try:
                children = list(instance_dir.iterdir())
            except FileNotFoundError:
                continue
            for child in children:
                stale = _PENDING_RE.fullmatch(child.name) or child.name.startswith(
                    _DELETING_PREFIX
                )
                with self._lock:
                    if not stale or child in self._active:
                        continue
                shutil.rmtree(child, ignore_errors=True)
                logger.info("removed stale checkpoint directory %s", child)
                removed += 1
        return removed

    # -- reading -----------------------------------------------------------------------

    def list(self, instance_id: str | None = None) -> list[CheckpointMeta]:
        """Committed checkpoints ordered by (instance_id, seq); all instances if None."""
        if instance_id is not None:
            instance_dirs = [self._instance_dir(instance_id)]
        else:
            try:
                instance_dirs = sorted(
                    p for p in self.root.iterdir()
                    if p.is_dir() and _is_instance_id(p.name)
                )
            except FileNotFoundError:
                return []
        found: list[CheckpointMeta] = []
        for instance_dir in instance_dirs:
            for seq in self._committed_seqs(instance_dir):
                meta = self._load(instance_dir, seq)
                if meta is not None:
                    found.append(meta)
        found.sort(key=lambda m: (m.instance_id, m.seq))
        return found

    @staticmethod
    def _read_checked(instance_dir: Path, seq: int) -> CheckpointMeta:
        """meta.json of one committed checkpoint.

        Raises FileNotFoundError if the checkpoint directory is gone, CheckpointCorrupt
        if its meta.json is missing, unreadable or describes another checkpoint.
        """
        name = _checkpoint_name(instance_dir.name, seq)
        path = instance_dir / f"{seq:06d}"
        try:
            meta = _read_meta(path)
        except FileNotFoundError:
            if not path.is_dir():
                raise
            problem = "is missing"
        except (OSError, ValueError) as exc:  # pydantic ValidationError is a ValueError
            problem = f"is unreadable ({exc})"
        else:
            if (meta.instance_id, meta.seq) == (instance_dir.name, seq):
                return meta
            problem = f"describes checkpoint {meta.name}"
        raise CheckpointCorrupt(
            f"checkpoint {name} is corrupt: its {META_FILE} {problem}; {_VERIFY_ADVICE}",
            checkpoint=name, file=META_FILE,
        )

    def _load(self, instance_dir: Path, seq: int) -> CheckpointMeta | None:
        """Like ``_read_checked`` but returns None (logged) when unusable, for listing."""
        try:
            return self._read_checked(instance_dir, seq)
        except FileNotFoundError:
            return None  # deleted while we looked
        except CheckpointCorrupt as exc:
            logger.warning("skipping %s", exc)
            return None

    def get(self, instance_id: str, seq: int) -> CheckpointMeta:
        """Metadata of one committed checkpoint.

        CheckpointNotFound if absent; CheckpointCorrupt if its meta.json is unusable.
        """
        instance_dir = self._instance_dir(instance_id)
        try:
            return self._read_checked(instance_dir, seq)
        except FileNotFoundError:
            existing = [m.seq for m in self.list(instance_id)]
            raise CheckpointNotFound(
                self._not_found_text(instance_id, seq, existing)
            ) from None

    def _not_found_text(self, instance_id: str, seq: int, existing: Sequence[int]) -> str:
        name = _checkpoint_name(instance_id, seq)
        if not existing:
            return f"checkpoint {name} not found: {self.root} holds no checkpoints of {instance_id}"
        have = ", ".join(f"{s:06d}" for s in existing)
        return f"checkpoint {name} not found in {self.root}; {instance_id} has {have}"

    def latest(self, instance_id: str) -> CheckpointMeta | None:
        """The committed checkpoint with the highest seq, or None."""
        found = self.list(instance_id)
        return found[-1] if found else None

    def verify(self, instance_id: str, seq: int) -> CheckpointMeta:
        """Re-read every file and compare with meta.json; CheckpointCorrupt on mismatch."""
        meta = self.get(instance_id, seq)
        try:
            self._check_files(
                self.path(instance_id, seq), meta, what=f"checkpoint {meta.name}",
                advice=_VERIFY_ADVICE, known=None, fsync=False,
            )
        except FileNotFoundError as exc:
            raise CheckpointNotFound(
                f"checkpoint {meta.name} disappeared while being verified"
            ) from exc
        except OSError as exc:
            raise CheckpointError(self._os_error_text(exc, self.root, meta.name, "verifying")) \
                from exc
        return meta

    def usage_bytes(self) -> int:
        """Bytes of all files under the root, pending and committed."""
        total = 0
        for current, _dirs, names in os.walk(self.root):
            for name in names:
                try:
                    total += os.lstat(os.path.join(current, name)).st_size
                except FileNotFoundError:
                    continue  # deleted while we walked
        return total

    # -- checking --------------------------------------------------------------------

    @staticmethod
    def _hash_all(paths: Mapping[str, Path], *, fsync: bool) -> dict[str, FileEntry]:
        if not paths:
            return {}
        # hashlib releases the GIL on large buffers, so threads hash files in parallel.
        workers = min(_HASH_WORKERS, len(paths))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nfvha-hash") as pool:
            futures = {
                name: pool.submit(_hash_file, path, fsync=fsync) for name, path in paths.items()
            }
            return {name: future.result() for name, future in futures.items()}

    @staticmethod
    def _check_files(
        directory: Path,
        meta: CheckpointMeta,
        *,
        what: str,
        advice: str,
        known: Mapping[str, FileEntry] | None,
        fsync: bool,
    ) -> None:
        """Raise CheckpointCorrupt naming the first (by name) file that does not match."""

        def corrupt(fname: str, problem: str) -> CheckpointCorrupt:
            return CheckpointCorrupt(
                f"{what} is corrupt: file {fname} {problem}; {advice}",
                checkpoint=meta.name, file=fname,
            )

        files, odd = _scan_files(directory)
        if odd:
            raise corrupt(odd[0], "is not a regular file")
        extra = sorted(set(files) - set(meta.files))
        if extra:
            raise corrupt(extra[0], f"is not listed in {META_FILE}")
        missing = sorted(set(meta.files) - set(files))
        if missing:
            raise corrupt(missing[0], "is missing")
        for fname in sorted(meta.files):
            size = files[fname].stat().st_size
            if size != meta.files[fname].size:
                raise corrupt(
                    fname, f"has {size} bytes, expected {meta.files[fname].size}"
                )
        known = known or {}
        to_hash = {n: p for n, p in files.items() if n not in known}
        actual = CheckpointStore._hash_all(to_hash, fsync=fsync)
        if fsync:
            for fname in sorted(set(files) - set(to_hash)):
                _fsync_path(files[fname])
        for fname in sorted(meta.files):
            expected = meta.files[fname]
            got = actual.get(fname) or known[fname]
            if got.size != expected.size:
                raise corrupt(fname, f"has {got.size} bytes, expected {expected.size}")
            if got.sha256 != expected.sha256:
                raise corrupt(
                    fname,
                    f"sha256 mismatch (expected {expected.sha256}, got {got.sha256})",
                )
