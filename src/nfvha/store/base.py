"""The manager's state store interface: versioned JSON records with compare-and-set.

Backends (SQLite, etcd) implement `StateStore`; its docstring is the contract.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from nfvha.errors import PROBLEM_PREFIX, NfvhaError

__all__ = [
    "KINDS",
    "ConflictError",
    "LeadershipLost",
    "NotFound",
    "Op",
    "OpAction",
    "Record",
    "StateStore",
    "StoreError",
    "check_key",
    "check_kind",
    "json_equal",
    "matches_where",
]

KINDS = ("vnfd", "vnf", "op", "alarm", "host", "checkpoint", "subscription", "fence",
         "forwarder")

OpAction = Literal["create", "put", "cas", "delete"]
_ACTIONS: tuple[OpAction, ...] = ("create", "put", "cas", "delete")


class StoreError(NfvhaError):
    """The state store failed or refused a request; backend errors arrive as this."""

    problem_type = PROBLEM_PREFIX + "store-unavailable"


class ConflictError(StoreError):
    """A compare-and-set lost: the record exists already, or its version moved on."""

    problem_type = PROBLEM_PREFIX + "store-conflict"


class NotFound(StoreError):
    """No record of that kind and id."""

    problem_type = PROBLEM_PREFIX + "record-not-found"


class LeadershipLost(StoreError):
    """A write was refused because its writer no longer holds the leader key it was made
    under (a fencing token compared in the same transaction): a deposed leader's late
    write. Not a ConflictError, so `StateStore.update` does not retry it: the writer must
    stop acting, not try again."""

    problem_type = PROBLEM_PREFIX + "leadership-lost"


def check_kind(kind: str) -> None:
    """Raise StoreError unless ``kind`` is one of KINDS."""
    if kind not in KINDS:
        raise StoreError(f"unknown record kind {kind!r}: valid kinds are {', '.join(KINDS)}")


def check_key(kind: str, id: str) -> None:
    """Raise StoreError unless ``kind`` is one of KINDS and ``id`` a non-empty string."""
    check_kind(kind)
    if not isinstance(id, str) or not id:
        raise StoreError(f"invalid {kind} id {id!r}: use a non-empty string")


@dataclass(frozen=True)
class Record:
    """One stored record; ``version`` starts at 1 and grows by one on every write."""

    kind: str
    id: str
    version: int
    data: dict[str, Any]
    updated_at: float


@dataclass(frozen=True)
class Op:
    """One write inside `StateStore.transaction`; build it with the class methods.

    ``create`` fails if the record exists, ``put`` writes unconditionally, ``cas`` needs
    ``expected_version``, ``delete`` checks ``expected_version`` only when given.
    """

    action: OpAction
    kind: str
    id: str
    data: dict[str, Any] | None = None
    expected_version: int | None = None

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise StoreError(f"unknown op {self.action!r}: use one of {', '.join(_ACTIONS)}")
        check_key(self.kind, self.id)
        needs_data = self.action != "delete"
        if needs_data and not isinstance(self.data, dict):
            raise StoreError(f"{self.action} {self.kind}/{self.id} needs a dict of data")
        if not needs_data and self.data is not None:
            raise StoreError(f"delete {self.kind}/{self.id} takes no data")
        if self.action == "cas" and self.expected_version is None:
            raise StoreError(f"cas {self.kind}/{self.id} needs expected_version")
        if self.action in ("create", "put") and self.expected_version is not None:
            raise StoreError(f"{self.action} {self.kind}/{self.id} takes no expected_version")

    @classmethod
    def create(cls, kind: str, id: str, data: dict[str, Any]) -> Op:
        return cls("create", kind, id, data)

    @classmethod
    def put(cls, kind: str, id: str, data: dict[str, Any]) -> Op:
        return cls("put", kind, id, data)

    @classmethod
    def cas(cls, kind: str, id: str, expected_version: int, data: dict[str, Any]) -> Op:
        return cls("cas", kind, id, data, expected_version)

    @classmethod
    def delete(cls, kind: str, id: str, expected_version: int | None = None) -> Op:
        return cls("delete", kind, id, None, expected_version)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers compare by value, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def matches_where(data: Mapping[str, Any], where: Mapping[str, Any] | None) -> bool:
    """True if every key of ``where`` is present in ``data`` with an equal value."""
    if not where:
        return True
    return all(key in data and json_equal(data[key], value) for key, value in where.items())


class StateStore(abc.ABC):
    """Versioned JSON records, keyed by (kind, id); the contract every backend keeps.

    A record's ``data`` belongs to the manager; the store adds ``version`` (1 on create,
    +1 on every write, back to 1 after a delete and re-create) so that writers can
    compare-and-set. Records returned are copies: mutating one changes nothing stored.
    Every failure is a `StoreError`; backend exceptions are converted inside the backend.

    Atomic single-record operations, linearizable (etcd: one txn comparing the key's
    ``version``/``mod_revision``; SQLite: one ``BEGIN IMMEDIATE`` transaction):
        `create`      ConflictError if the record exists.
        `cas_update`  ConflictError if the version moved on, NotFound if absent.
        `delete`      with ``expected_version`` as cas_update; without it idempotent.
        `put`         unconditional upsert; atomic, but last writer wins.

    Atomic multi-record operation:
        `transaction` all of its ops or none (etcd: one txn). Each (kind, id) may appear
        at most once, as etcd requires; any ConflictError or NotFound rolls back all.

    Best effort, may be slightly stale (etcd: serializable reads from any member):
        `get`, `find`, `list`. Never decide on a read alone: write with `cas_update`
        (or `update`, which retries), and a stale read costs only a retry.

    Timing: every call may be made from the event loop thread, so none may block it for
    long: implementations keep each call to one short backend round trip (SQLite: WAL
    journal, one short transaction, busy timeout of 2 s) and are thread-safe, so callers
    may also run them in ``asyncio.to_thread`` workers.
    """

    # --- best effort reads -------------------------------------------------------------

    @abc.abstractmethod
    def get(self, kind: str, id: str) -> Record:
        """The record, or NotFound."""

    @abc.abstractmethod
    def find(self, kind: str, id: str) -> Record | None:
        """The record, or None."""

    @abc.abstractmethod
    def list(self, kind: str, *, where: dict[str, Any] | None = None) -> builtins.list[Record]:
        """Records of ``kind`` in creation order, keeping those whose data has every key
        of ``where`` with an equal value (see `matches_where`)."""

    # --- atomic single-record writes ---------------------------------------------------

    @abc.abstractmethod
    def create(self, kind: str, id: str, data: dict[str, Any]) -> Record:
        """Store a new record at version 1; ConflictError if it exists."""

    @abc.abstractmethod
    def put(self, kind: str, id: str, data: dict[str, Any]) -> Record:
        """Create or overwrite unconditionally; version becomes previous + 1 (or 1)."""

    @abc.abstractmethod
    def cas_update(
        self, kind: str, id: str, expected_version: int, data: dict[str, Any]
    ) -> Record:
        """Overwrite if the stored version is ``expected_version``; ConflictError if it
        is not, NotFound if the record is absent."""

    @abc.abstractmethod
    def delete(self, kind: str, id: str, expected_version: int | None = None) -> None:
        """Remove the record. Without ``expected_version`` an absent record is fine;
        with it, ConflictError on another version and NotFound if absent."""

    # --- atomic multi-record writes ----------------------------------------------------

    @abc.abstractmethod
    def transaction(self, ops: Sequence[Op]) -> builtins.list[Record]:
        """Apply all ``ops`` or none. Returns the written record of every create, put and
        cas op, in op order; delete ops return nothing."""

    # --- lifecycle ---------------------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend; later calls raise StoreError. Closing twice is fine."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- built on the above ------------------------------------------------------------

    def update(
        self,
        kind: str,
        id: str,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        retries: int = 5,
    ) -> Record:
        """Read-modify-write: store ``fn(data)`` with `cas_update`, re-reading and calling
        ``fn`` again whenever another writer got in between, up to ``retries`` times.

        ``fn`` must be free of side effects, since it may run more than once; it gets a
        private copy of the data. NotFound if the record is absent; ConflictError once
        the retries are spent.
        """
        for _attempt in range(retries + 1):
            current = self.get(kind, id)
            try:
                return self.cas_update(kind, id, current.version, fn(current.data))
            except ConflictError:
                continue
        raise ConflictError(
            f"{kind}/{id}: gave up after {retries + 1} attempts, each lost to a concurrent"
            " writer"
        )

    def update_together(
        self,
        changes: Sequence[tuple[str, str, Callable[[dict[str, Any]], dict[str, Any]]]],
        retries: int = 5,
    ) -> builtins.list[Record]:
        """`update` of several records as one `transaction`: every ``fn(data)`` is stored,
        each conditioned on the version it was computed from, or none is. A VNF's state
        change and the end of the operation that made it are written so: no reader sees
        the operation COMPLETED with the VNF still RECOVERING, nor the reverse.

        The same rules as `update`: each ``fn`` runs on a private copy, may run again
        after a lost compare-and-set, and must be free of side effects. NotFound if a
        record is absent; ConflictError once the retries are spent.
        """
        for _attempt in range(retries + 1):
            current = [self.get(kind, id) for kind, id, _ in changes]
            ops = [Op.cas(kind, id, cur.version, fn(cur.data))
                   for (kind, id, fn), cur in zip(changes, current, strict=True)]
            try:
                return self.transaction(ops)
            except ConflictError:
                continue
        names = ", ".join(f"{kind}/{id}" for kind, id, _ in changes)
        raise ConflictError(
            f"{names}: gave up after {retries + 1} attempts, each lost to a concurrent writer"
        )
