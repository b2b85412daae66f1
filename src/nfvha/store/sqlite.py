"""SQLite backend of the state store: one WAL database file, one short transaction per call.

Safe to share between the event loop thread and ``asyncio.to_thread`` workers, and to open
from a second process (a manager restarting while the old one is still dying).
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nfvha.store.base import (
    ConflictError,
    NotFound,
    Op,
    Record,
    StateStore,
    StoreError,
    check_key,
    check_kind,
    matches_where,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 2000

_T = TypeVar("_T")

# Primary result codes (the low byte of an extended code) that mean a damaged file.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

# Keys safe to splice into a JSON path ("$.key") for filtering inside SQLite.
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS records (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        data TEXT NOT NULL,
        created_seq INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (kind, id)
    )""",
    "CREATE INDEX IF NOT EXISTS records_by_creation ON records (kind, created_seq)",
)


def _owner_only(path: str) -> None:
    """Create the database readable by its owner alone, or tighten one that is not.

    It holds what operators gave the manager, subscription passwords (sent as BASIC
    credentials, so kept usable) among them. SQLite gives the -wal and -shm files the
    database's own mode.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError:
        return  # sqlite3.connect reports what is wrong with the path
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            os.fchmod(fd, 0o600)
            logger.warning("state store %s was readable by others (mode %o); now 600", path,
                           mode)
    finally:
        os.close(fd)
    for side in (f"{path}-wal", f"{path}-shm"):
        try:
            if os.stat(side).st_mode & 0o077:
                os.chmod(side, 0o600)
        except OSError:
            pass


class SqliteStore(StateStore):
    """`StateStore` on one SQLite file (or ``":memory:"`` for tests).

    Every call holds a lock for one short transaction; writes use ``BEGIN IMMEDIATE`` so
    the compare and the write of a compare-and-set happen under the same write lock, also
    against other processes. A writer in another process is waited for up to 2 s.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        if self.path != ":memory:":
            _owner_only(self.path)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock instead
            )
        except sqlite3.Error as exc:
            raise self._convert(exc, "open") from exc
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # --- reads -------------------------------------------------------------------------

    def get(self, kind: str, id: str) -> Record:
        record = self.find(kind, id)
        if record is None:
            raise NotFound(f"{kind}/{id} not found")
        return record

    def find(self, kind: str, id: str) -> Record | None:
        check_key(kind, id)
        row = self._read(
            f"get {kind}/{id}",
            lambda conn: conn.execute(
                "SELECT version, data, updated_at FROM records WHERE kind = ? AND id = ?",
                (kind, id),
            ).fetchone(),
        )
        if row is None:
            return None
        return self._record(kind, id, row[0], row[1], row[2])

    def list(self, kind: str, *, where: dict[str, Any] | None = None) -> builtins.list[Record]:
        check_kind(kind)
        clauses = ["kind = ?"]
        params: builtins.list[Any] = [kind]
        # Narrow on string equality inside SQLite; matches_where below has the last word
        # (it also covers numbers, booleans, null and nested values exactly).
        for key, value in (where or {}).items():
            if isinstance(value, str) and _PLAIN_KEY.fullmatch(key):
                clauses.append("json_extract(data, ?) = ?")
                params += [f"$.{key}", value]
        sql = (
            "SELECT id, version, data, updated_at FROM records"
            f" WHERE {' AND '.join(clauses)} ORDER BY created_seq, id"
        )
        rows = self._read(f"list {kind}", lambda conn: conn.execute(sql, params).fetchall())
        records = (self._record(kind, *row) for row in rows)
        return [record for record in records if matches_where(record.data, where)]

    # --- atomic writes -----------------------------------------------------------------

    def create(self, kind: str, id: str, data: dict[str, Any]) -> Record:
        return self._write_one(Op.create(kind, id, data))

    def put(self, kind: str, id: str, data: dict[str, Any]) -> Record:
        return self._write_one(Op.put(kind, id, data))

    def cas_update(
        self, kind: str, id: str, expected_version: int, data: dict[str, Any]
    ) -> Record:
        return self._write_one(Op.cas(kind, id, expected_version, data))

    def delete(self, kind: str, id: str, expected_version: int | None = None) -> None:
        op = Op.delete(kind, id, expected_version)
        self._write(f"delete {kind}/{id}", lambda conn: self._apply(conn, op, None, time.time()))

    def transaction(self, ops: Sequence[Op]) -> builtins.list[Record]:
        seen: set[tuple[str, str]] = set()
        for op in ops:
            if (op.kind, op.id) in seen:
                raise StoreError(
                    f"{op.kind}/{op.id} appears twice in one transaction; merge those ops"
                    " into one (etcd refuses a txn that touches a key twice)"
                )
            seen.add((op.kind, op.id))
        if not ops:
            return []
        encoded = [_encode(op) for op in ops]

        def body(conn: sqlite3.Connection) -> builtins.list[Record]:
            now = time.time()
            written = [self._apply(conn, op, text, now) for op, text in zip(ops, encoded,
                                                                            strict=True)]
            return [record for record in written if record is not None]

        return self._write(f"transaction of {len(ops)} ops", body)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise self._convert(exc, "close") from exc

    # --- internals ---------------------------------------------------------------------

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Set the pragmas, check the file is ours and intact, create the schema."""
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = NORMAL")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise self._unreadable("; ".join(str(p) for p in problems[:3]))
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._create_schema(conn)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise self._convert(exc, "open") from exc
        if mode.lower() not in ("wal", "memory"):
            logger.warning(
                "state database %s runs in %s journal mode, not WAL (does its file system"
                " support shared memory?): readers will wait for writers",
                self.path, mode,
            )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )}
        if tables and "meta" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite database but not an nfvha state database (it has"
                f" tables {', '.join(sorted(tables))}); point the manager at another file"
            )
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        (found,) = conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        if found != str(SCHEMA_VERSION):
            raise StoreError(
                f"state database {self.path} has schema version {found}, this nfvha"
                f" understands {SCHEMA_VERSION}; run the nfvha that wrote it, or move the"
                " file away to start empty"
            )

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"state database {self.path} is closed")
        return self._conn

    def _read(self, what: str, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            conn = self._connection()
            try:
                return query(conn)
            except sqlite3.Error as exc:
                raise self._convert(exc, what) from exc

    def _write(self, what: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = body(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise self._convert(exc, what) from exc
            return result

    def _write_one(self, op: Op) -> Record:
        text = _encode(op)
        record = self._write(
            f"{op.action} {op.kind}/{op.id}",
            lambda conn: self._apply(conn, op, text, time.time()),
        )
        if record is None:  # only deletes return None
            raise StoreError(f"internal error: {op.action} {op.kind}/{op.id} wrote nothing")
        return record

    def _apply(
        self, conn: sqlite3.Connection, op: Op, text: str | None, now: float
    ) -> Record | None:
        """Run one op inside the caller's write transaction."""
        name = f"{op.kind}/{op.id}"
        key = (op.kind, op.id)
        row = conn.execute(
            "SELECT version FROM records WHERE kind = ? AND id = ?", key
        ).fetchone()
        current: int | None = None if row is None else int(row[0])
        if op.action == "create" and current is not None:
            raise ConflictError(f"{name} already exists (version {current})")
        if op.expected_version is not None:
            if current is None:
                raise NotFound(f"{name} not found (expected version {op.expected_version})")
            if current != op.expected_version:
                raise ConflictError(
                    f"{name} is at version {current}, not the expected {op.expected_version}"
                )
        if op.action == "delete":
            conn.execute("DELETE FROM records WHERE kind = ? AND id = ?", key)
            return None
        if text is None:
            raise StoreError(f"internal error: {op.action} {name} came without data")
        if current is None:
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(created_seq), 0) + 1 FROM records WHERE kind = ?",
                (op.kind,),
            ).fetchone()
            version = 1
            conn.execute(
                "INSERT INTO records (kind, id, version, data, created_seq, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (op.kind, op.id, version, text, seq, now),
            )
        else:
            version = current + 1
            conn.execute(
                "UPDATE records SET version = ?, data = ?, updated_at = ?"
                " WHERE kind = ? AND id = ?",
                (version, text, now, op.kind, op.id),
            )
        return Record(op.kind, op.id, version, json.loads(text), now)

    def _record(self, kind: str, id: str, version: int, text: str, updated_at: float) -> Record:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._unreadable(f"record {kind}/{id} holds invalid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise self._unreadable(f"record {kind}/{id} holds {type(data).__name__}, not an"
                                   " object")
        return Record(kind, id, int(version), data, float(updated_at))

    def _unreadable(self, detail: str) -> StoreError:
        return StoreError(
            f"state database {self.path} is unreadable: {detail}; restore it from backup or"
            " move it away to start empty"
        )

    def _convert(self, exc: sqlite3.Error, what: str) -> StoreError:
        """The one place where SQLite errors become StoreError."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return self._unreadable(str(exc))
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StoreError(
                f"state database {self.path}: {what} waited {BUSY_TIMEOUT_MS} ms for another"
                f" writer and gave up ({exc}); is a second manager writing to it?"
            )
        return StoreError(f"state database {self.path}: {what} failed: {exc}")


def _encode(op: Op) -> str | None:
    """The op's data as JSON text, or None for a delete."""
    if op.data is None:
        return None
    try:
        return json.dumps(op.data, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{op.kind}/{op.id}: data is not storable as JSON: {exc}") from exc


def _rollback(conn: sqlite3.Connection) -> None:
    # Called while another exception is on its way out; that one is what matters.
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        logger.warning("rollback failed after an error", exc_info=True)
