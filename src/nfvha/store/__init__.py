"""The manager's state store: versioned JSON records with compare-and-set (SQLite now,
etcd later), behind one interface whose docstring states what is atomic."""

from nfvha.store.base import (
    KINDS,
    ConflictError,
    NotFound,
    Op,
    OpAction,
    Record,
    StateStore,
    StoreError,
)
from nfvha.store.sqlite import SqliteStore

__all__ = [
    "KINDS",
    "ConflictError",
    "NotFound",
    "Op",
    "OpAction",
    "Record",
    "SqliteStore",
    "StateStore",
    "StoreError",
]
