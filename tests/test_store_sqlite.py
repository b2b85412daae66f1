"""The SQLite state store's own guarantees: its file (modes, damage, other owners), a
second process opening it; the contract itself is tests/test_store_contract.py."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from nfvha.store import Op, SqliteStore, StoreError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def test_new_manager_opens_the_file_while_the_old_one_still_has_it(db_path: Path) -> None:
    with SqliteStore(db_path) as dying:
        dying.create("host", "a", {"up": True})
        with SqliteStore(db_path) as new:
            assert new.get("host", "a").data == {"up": True}
            new.put("host", "a", {"up": False})
        assert dying.get("host", "a").version == 2


def test_garbage_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StoreError, match=r"is unreadable.*move it away to start empty") as info:
        SqliteStore(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_damaged_pages_are_reported_as_unreadable_on_open(db_path: Path) -> None:
    with SqliteStore(db_path) as s:
        s.transaction([Op.put("op", f"o{i}", {"log": "x" * 500}) for i in range(200)])
    with db_path.open("r+b") as f:  # keep the header, smash pages in the middle
        f.seek(4096 * 5)
        f.write(os.urandom(4096 * 3))
    with pytest.raises(StoreError, match=r"unreadable.*restore it from backup"):
        SqliteStore(db_path)


def test_another_applications_database_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not an nfvha state database"):
        SqliteStore(path)


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no-such-dir"):
        SqliteStore(tmp_path / "no-such-dir" / "state.db")


def test_memory_store_works_for_tests() -> None:
    with SqliteStore(":memory:") as s:
        s.create("subscription", "s1", {"uri": "http://x"})
        assert s.get("subscription", "s1").version == 1


def test_database_and_its_wal_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    """It holds subscription passwords: never world-readable, even under umask 022."""
    old = os.umask(0o022)
    try:
        s = SqliteStore(tmp_path / "new.db")
        s.put("vnf", "a", {"x": 1})
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        s.close()
        assert modes and all(m == 0o600 for m in modes.values()), modes
        loose = tmp_path / "loose.db"
        loose.touch(mode=0o644)
        os.chmod(loose, 0o644)
        SqliteStore(loose).close()
        assert loose.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
