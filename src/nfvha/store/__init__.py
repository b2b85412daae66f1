"""The manager's state store: versioned JSON records with compare-and-set (SQLite for one
machine, etcd for a manager cluster), behind one interface whose docstring states what is
atomic."""

from nfvha.store.base import (
    KINDS,
    ConflictError,
    LeadershipLost,
    NotFound,
    Op,
    OpAction,
    Record,
    StateStore,
    StoreError,
)
from nfvha.store.etcd import EtcdStore, Guard
from nfvha.store.sqlite import SqliteStore

__all__ = [
    "KINDS",
    "ConflictError",
    "EtcdStore",
    "Guard",
    "LeadershipLost",
    "NotFound",
    "Op",
    "OpAction",
    "Record",
    "SqliteStore",
    "StateStore",
    "StoreError",
]
