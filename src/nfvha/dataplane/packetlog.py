"""The forwarder's packet log: datagrams delivered to a VNF since its last committed
checkpoint, kept in one byte arena with an offset, a flow number and a time per datagram
(20 bytes each beside the payload) instead of Python objects per datagram."""

from __future__ import annotations

import array
from collections.abc import Iterator, Sequence

__all__ = ["LogSnapshot", "PacketLog"]

Addr = tuple[str, int]

# Trimmed entries are dropped from the index arrays once they are this many and at least
# half of them (the arena itself gives back its head at once: bytearray deletes a prefix
# by moving its start).
_COMPACT_AT = 4096


class PacketLog:
    """Datagrams by sequence number, contiguous: the log holds ``first_seq`` up to
    ``first_seq + len(log) - 1``. Appended at the end, trimmed from the front."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._base = 0  # arena offset (counted since the start) of self._data[0]
        self._starts = array.array("Q")  # arena offset of each entry
        self._flows = array.array("I")  # each entry's client, as an index in self._clients
        self._at = array.array("d")  # when each was delivered (time.monotonic())
        self._head = 0  # index of the oldest entry still held
        self._clients: list[Addr] = []
        self._client_ids: dict[Addr, int] = {}
        self.first_seq = 1  # sequence number of the oldest entry held (if any)
        self.nbytes = 0  # payload bytes held

    def __len__(self) -> int:
        return len(self._starts) - self._head

    def client_id(self, client: Addr) -> int:
        cid = self._client_ids.get(client)
        if cid is None:
            cid = self._client_ids[client] = len(self._clients)
            self._clients.append(client)
        return cid

    def append(self, seq: int, client_id: int, payload: bytes | memoryview, at: float) -> None:
        """Log one datagram; ``seq`` follows the last one logged."""
        if not len(self):
            self.first_seq = seq
        self._starts.append(self._base + len(self._data))
        self._data += payload
        self._flows.append(client_id)
        self._at.append(at)
        self.nbytes += len(payload)

    def extend(self, seq: int, client_id: int, payloads: Sequence[memoryview],
               at: float) -> None:
        """Log datagrams of one client in a row, the first with sequence number ``seq``."""
        if not payloads:
            return
        if not len(self):
            self.first_seq = seq
        data, starts = self._data, self._starts
        start = end = self._base + len(data)
        for p in payloads:
            starts.append(end)
            end += len(p)
            data += p
        n = len(payloads)
        self._flows.extend(array.array("I", [client_id]) * n)
        self._at.extend(array.array("d", [at]) * n)
        self.nbytes += end - start

    def trim(self, position: int) -> int:
        """Drop the entries up to sequence number ``position``; returns how many."""
        k = min(max(position - self.first_seq + 1, 0), len(self))
        if not k:
            return 0
        head = self._head + k
        end = self._starts[head] if head < len(self._starts) else self._base + len(self._data)
        self.nbytes -= end - self._starts[self._head]
        self.first_seq += k
        if head == len(self._starts):
            self._clear()
            return k
        del self._data[:end - self._base]
        self._base = end
        self._head = head
        if head >= _COMPACT_AT and 2 * head >= len(self._starts):
            del self._starts[:head]
            del self._flows[:head]
            del self._at[:head]
            self._head = 0
        return k

    def clear(self, next_seq: int) -> None:
        """Drop everything; the next entry will be ``next_seq``."""
        self._clear()
        self.first_seq = next_seq

    def _clear(self) -> None:
        self._base += len(self._data)
        self._data = bytearray()
        self._starts = array.array("Q")
        self._flows = array.array("I")
        self._at = array.array("d")
        self._head = 0
        self.nbytes = 0

    def oldest_at(self) -> float | None:
        return self._at[self._head] if len(self) else None

    def after(self, position: int) -> LogSnapshot:
        """The entries after ``position``, in order, as they are now: a copy, so that
        trimming or clearing the log meanwhile changes nothing."""
        i = self._head + max(position - self.first_seq + 1, 0)
        if i >= len(self._starts):
            return LogSnapshot(b"", array.array("Q"), [])
        first = self._starts[i]
        data = bytes(self._data[first - self._base:])
        ends = array.array("Q", self._starts[i + 1:])
        ends.append(first + len(data))
        clients = [self._clients[c] for c in self._flows[i:]]
        return LogSnapshot(data, array.array("Q", [e - first for e in ends]), clients)

    def memory(self) -> int:
        """Bytes allocated for what the log holds (arena and index arrays, with their
        slack), without the client table, which grows with flows, not datagrams."""
        return (self._data.__sizeof__() + self._starts.__sizeof__()
                + self._flows.__sizeof__() + self._at.__sizeof__())


class LogSnapshot:
    """Logged datagrams copied out of a log: (client, payload) of each, in order."""

    def __init__(self, data: bytes, ends: array.array[int], clients: list[Addr]) -> None:
        self._data = data
        self._ends = ends
        self._clients = clients

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[tuple[Addr, bytes]]:
        start = 0
        for client, end in zip(self._clients, self._ends, strict=True):
            yield client, self._data[start:end]
            start = end
