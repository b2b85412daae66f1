"""The manager's event stream: one feed of what changed, for every observer.

The dashboard, the Prometheus metrics and the SOL003 notifications all need to know the
same things (a host went down, an operation finished, an alarm was raised, a checkpoint
was taken). The manager publishes each change once, here; observers never poll the store
and can never slow the manager down: a listener is a quick synchronous callback, and a
subscriber gets a bounded queue that drops its oldest events when it falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "EventBus", "EventKind"]

log = logging.getLogger("nfvha.events")


class EventKind:
    """What an event is about; ``data`` holds the record (or fields) after the change."""

    HOST = "host"              # data: {id, state, previous, ...}; state UP/SUSPECTED/DOWN
    VNF = "vnf"                # data: the VNF instance record
    VNF_DELETED = "vnf-deleted"  # data: {id}
    OP = "op"                  # data: the op occurrence; extra "stateChanged": bool
    ALARM_RAISED = "alarm-raised"    # data: the alarm
    ALARM_CLEARED = "alarm-cleared"  # data: the alarm, alarmClearedTime set
    CHECKPOINT = "checkpoint"  # data: the checkpoint record (with durationMs)
    CHECKPOINT_FAILED = "checkpoint-failed"  # data: {vnfInstanceId, host, detail}
    FORWARDER = "forwarder"    # data: {logs: {vnf: {entries, bytes, ...}}}


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    at: float  # wall time
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "at": self.at, "data": self.data}


class EventBus:
    """Publish/subscribe inside the manager's event loop (not thread-safe on purpose)."""

    def __init__(self, history: int = 300) -> None:
        self._seq = itertools.count(1)
        self._listeners: list[Callable[[Event], None]] = []
        self._queues: set[asyncio.Queue[Event]] = set()
        self.recent: deque[Event] = deque(maxlen=history)
        self.dropped = 0  # events a slow subscriber lost (its queue was full)

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        ev = Event(next(self._seq), kind, time.time(), data)
        self.recent.append(ev)
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:
                # An observer's bug must not stop the manager's own work.
                log.exception("event listener %r failed on %s (continuing)", fn, kind)
        for q in list(self._queues):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                self.dropped += 1
            q.put_nowait(ev)
        return ev

    def listen(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn`` synchronously for each event; it must be quick and not block."""
        self._listeners.append(fn)

    @contextlib.contextmanager
    def subscribe(self, maxsize: int = 1000) -> Iterator[asyncio.Queue[Event]]:
        """A queue of events from now on, removed when the block ends."""
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self._queues.add(q)
        try:
            yield q
        finally:
            self._queues.discard(q)
