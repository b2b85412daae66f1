"""Replay pacing by the restored VNF's own receive queue: the decisions, pure.

Why. A just-restored VNF may not read for a while (CRIU has just rebuilt it, its pages
fault back in, its host is busy with the restore), and its UDP socket's receive buffer
holds only a few hundred small datagrams (208 KiB by default, each datagram charged its
kernel buffer, 832 bytes for an empty one). A replay sent at any fixed rate is too fast
for a VNF that stalls (datagrams dropped there after they were logged as delivered, the
state silently short of the clients') or needlessly slow for one that keeps up. So the
forwarder sends as much as the socket has room for, by what the VNF's kernel says.

Where the queue is read. The VNF's socket lives in its own netns on its compute host;
the forwarder runs on the ingress host and sees neither. The agent of the VNF's host
reads it (``/proc/<pid>/net/udp``, the netns of the VNF's process, no setns or fork
per reading; the buffer size once per socket, by sock_diag) and answers
``GET /v1/instances/{id}/rx-queue``, waiting, when asked, until the queue has fallen
below a mark (a long poll: while the VNF is slow the agent polls its own ``/proc`` every
millisecond instead of the forwarder asking over the network). The manager names that
agent in the replay call. A reading costs some 0.3 ms of the forwarder's CPU and 0.5 ms
of the agent's; while sending, one is under way and a second staggered half a round
trip behind (``QueuePacer.wants_reading`` says why), none while the VNF is slow.

Credit. A reading taken after the forwarder had sent ``mark`` bytes' worth says the
queue holds ``queued`` bytes of a ``capacity`` buffer; everything sent since ``mark`` may
not be in it yet. The room left is ``fill * capacity - queued - sent since mark``, in
kernel bytes: each datagram is charged ``datagram_cost(len)``, an upper bound of its
``skb->truesize``. ``fill`` (3/4) leaves headroom for what a reading cannot see: other
datagrams to the same socket, packets in transit in the per-CPU backlogs (counted from
the reading when the agent gives them), and UDP's lazy release of buffer memory (which
only ever over-reports). A drop the socket reports anyway halves ``fill``.

Bounded. A VNF that never drains must not stall the replay (and the heal waiting on it)
for ever: after ``grace`` the replay keeps at least a floor rate, raised so that the
whole replay is sent by ``deadline``. What the floor sends without room is counted
(``forced``), and the drops the agent saw are reported. If the queue cannot be read at
all (no agent named, the agent unreachable or refusing, no socket on the port), the
replay falls back to a fixed rate and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nfvha.wire import ReplayPacing, RxQueue

__all__ = ["PaceConfig", "ProbeError", "QueuePacer", "QueueProbe", "datagram_cost"]

#: UDP payload of a datagram that a 1500-byte MTU carries unfragmented.
_MTU_PAYLOAD = 1472
#: ... and the payload of each fragment of a larger one (IP payload 1480, 8-aligned).
_FRAGMENT_PAYLOAD = 1480


def _pow2ceil(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def datagram_cost(payload: int) -> int:
    """An upper bound of the receive-buffer memory one datagram of ``payload`` bytes is
    charged (its ``skb->truesize``): a power-of-two data buffer holding headers and the
    shared info, plus the ``sk_buff``. Measured on Linux 6.x x86_64 through a veth pair:
    832 bytes up to 197 bytes of payload, 1280 up to 645, 2304 up to the MTU; this gives
    832 up to 128, 1344 up to 640, 2368 up to 1472, and a fragmented datagram counts
    each fragment. An over-estimate only slows a replay a little; an under-estimate is
    caught by the drops the agent reports."""
    if payload <= _MTU_PAYLOAD:
        return _pow2ceil(payload + 384) + 320
    fragments = -(-(payload + 8) // _FRAGMENT_PAYLOAD)
    return fragments * (_pow2ceil(_MTU_PAYLOAD + 384) + 320)


class ProbeError(Exception):
    """A reading of the queue failed; ``final`` if asking again cannot help (the agent
    refused, knows no such instance, or the instance is not running)."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


class QueueProbe(Protocol):
    """Reads the VNF's receive queue (``nfvha.dataplane.rxprobe`` asks its agent)."""

    async def read(self, below: int | None, wait: float) -> RxQueue:
        """A reading; with ``below``, taken once the queue holds at most that many bytes
        or ``wait`` seconds have passed. Raises ``ProbeError``."""
        ...

    async def aclose(self) -> None:
        """No more readings: release its connections."""
        ...


@dataclass(frozen=True)
class PaceConfig:
    """Tuning of a queue-paced replay; each value says why in its comment."""

    #: Share of the socket's buffer the replay may fill, queued and in flight together.
    fill: float = 0.75
    #: Never below this share, however many drops were seen.
    min_fill: float = 1 / 16
    #: Send at least this many datagrams per second after ``grace``, room or not...
    floor_pps: float = 1000.0
    #: ... a restored VNF being given this long to start reading ...
    grace: float = 0.5
    #: ... and the floor raised so that the replay itself is sent within this.
    deadline: float = 10.0
    #: The fixed rate when the queue cannot be read (the pace used before, which a VNF
    #: restored on a loaded host did not always keep up with).
    blind_pps: float = 5000.0
    #: Readings under way at most while sending, staggered (see ``wants_reading``).
    readings: int = 2
    #: Longest wait the agent is asked for when there is no room (a long poll).
    wait: float = 0.05
    #: Consecutive failed readings before the pacer gives up on the queue.
    max_failures: int = 3


class QueuePacer:
    """Decides, datagram by datagram, whether the replay may send now.

    Pure: every method takes the time (``now``, seconds on the caller's monotonic clock)
    and readings from outside, so tests drive it with a fake clock and queue. The
    forwarder's driver calls ``take`` before each datagram and, when ``wants_reading``
    says so, starts a reading (``request`` gives what to hand back with the answer);
    when ``take`` says no it waits for a reading under way, or starts a long poll
    (``below`` and ``wait`` say what to ask the agent for), or waits for ``next_due``,
    whichever comes first.
    """

    def __init__(self, now: float, total: int, cfg: PaceConfig | None = None,
                 *, queue: bool = True, reason: str | None = None) -> None:
        self.cfg = cfg or PaceConfig()
        self.mode = "queue" if queue else "rate"
        self.reason = reason if not queue else None
        self.fill = self.cfg.fill
        self.sent = 0  # datagrams
        self.sent_bytes = 0  # their costs
        self.max_cost = datagram_cost(0)
        self.credit: int | None = None  # bytes of room; None: nothing read yet
        self.capacity: int | None = None
        self.reads = 0
        self.failures = 0
        self.rtt: float | None = None  # a reading's round trip, less the agent's wait
        self._applied = -1  # the mark of the newest reading applied
        self._last_queued = 0  # what it found queued or on its way, bytes
        self._last_asked = float("-inf")
        self._started = now
        self.first_reading: float | None = None  # seconds from the start
        self.peak_queued = 0
        self.forced = 0
        self.drop_events = 0
        self._drops: tuple[int, int] | None = None  # first and last drop count read
        self._errors: tuple[int, int] | None = None  # same, RcvbufErrors of the netns
        self.stalled = 0.0
        self._blocked_since: float | None = None
        # The floor (queue mode) or the fixed rate (rate mode): at least ``_rate`` per
        # second from ``_since``, counting from ``_base`` datagrams sent.
        self._since = now + self.cfg.grace if queue else now
        self._base = 0
        span = max(self.cfg.deadline - self.cfg.grace, 0.001)
        self._rate = max(self.cfg.floor_pps, total / span) if queue else self.cfg.blind_pps

    # -- sending ------------------------------------------------------------------------

    def _due(self, now: float) -> float:
        """Datagrams the floor (or the fixed rate) lets out by ``now``, in all."""
        return self._base + max(0.0, now - self._since) * self._rate

    def take(self, cost: int, now: float) -> bool:
        """Whether one datagram charged ``cost`` bytes may be sent now; if so it counts
        as sent."""
        if self.mode == "queue" and self.credit is not None and self.credit >= cost:
            self.credit -= cost
        elif self.sent + 1 <= self._due(now):
            if self.mode == "queue":  # no room: the floor sends it anyway
                self.forced += 1
                self.credit = (self.credit or 0) - cost
        else:
            if self._blocked_since is None:
                self._blocked_since = now
            return False
        if self._blocked_since is not None:
            self.stalled += now - self._blocked_since
            self._blocked_since = None
        self.sent += 1
        self.sent_bytes += cost
        self.max_cost = max(self.max_cost, cost)
        return True

    def next_due(self, now: float) -> float:
        """When the floor or the fixed rate lets the next datagram out without room."""
        return max(now, self._since + (self.sent + 1 - self._base) / self._rate)

    def restart_floor(self, now: float) -> None:
        """The replay is sent and new traffic queued meanwhile follows, as long as it
        lasts: the floor starts again from now at its base rate (the replay's deadline no
        longer applies; a VNF that stopped reading waits no longer than ``grace``)."""
        self._since = now + (self.cfg.grace if self.mode == "queue" else 0.0)
        self._base = self.sent
        self._rate = self.cfg.floor_pps if self.mode == "queue" else self.cfg.blind_pps

    # -- readings -----------------------------------------------------------------------

    def _window(self) -> int:
        return int(self.fill * (self.capacity or 0))

    def wants_reading(self, now: float, under_way: int) -> bool:
        """Whether to ask for another reading now, ``under_way`` being under way.

        One is always under way while sending. A reading's room is the window less
        everything sent while it was under way, and the next answer comes a round trip
        later: with one reading at a time the rate is at most window / (2 round trips),
        192 small datagrams per 2 x 2.6 ms on this machine, 37,000/s (a replay measured
        36,000/s). A second one, asked for half a round trip after the first, brings an
        answer every half round trip: window / (1.5 round trips), some 49,000/s. Not
        while the last reading found the queue half full: then the VNF, not the round
        trip, is what limits, and a long poll waits for it at less cost."""
        if self.mode != "queue" or under_way >= self.cfg.readings:
            return False
        if under_way == 0:
            return self.credit is None or self.credit < self._window()
        return now >= self.next_reading(under_way)

    def next_reading(self, under_way: int) -> float:
        """When another reading is due, ``under_way`` being under way (inf: none)."""
        if self.mode != "queue" or self.rtt is None or under_way >= self.cfg.readings \
                or self._last_queued > self._window() // 2:
            return float("inf")
        return self._last_asked + self.rtt / self.cfg.readings

    def request(self, now: float) -> tuple[int, float]:
        """A reading is being asked for: what to pass to ``update`` with its answer."""
        self._last_asked = now
        return self.sent_bytes, now

    def below(self) -> int | None:
        """What to ask the agent to wait for: the queue below half the window when there
        is no room now (a worthwhile window then opens), else nothing (answer at once)."""
        if self.credit is None or self.capacity is None or self.credit >= self.max_cost:
            return None
        return self._window() // 2

    def update(self, asked: tuple[int, float], reading: RxQueue, now: float) -> None:
        """A reading came back; ``asked`` is what ``request`` gave for it."""
        if self.mode != "queue":
            return
        mark, at = asked
        self.reads += 1
        self.failures = 0
        if self.first_reading is None:
            self.first_reading = now - self._started
        sample = max(0.0, now - at - reading.waited_ms / 1000)
        self.rtt = sample if self.rtt is None else 0.75 * self.rtt + 0.25 * sample
        if mark < self._applied:
            return  # overtaken by a newer one, whose room is the better estimate
        self._applied = mark
        if reading.sockets == 0 or reading.capacity <= 0:
            self.fail(f"no UDP socket of the VNF is bound to port {reading.port}", now)
            return
        self.capacity = reading.capacity
        if self._drops is None:
            self._drops = (reading.drops, reading.drops)
        else:
            if reading.drops > self._drops[1]:
                # The estimate was too generous (another sender, a larger skb than
                # datagram_cost says, a path with queues the reading cannot see).
                self.fill = max(self.cfg.min_fill, self.fill / 2)
                self.drop_events += 1
            self._drops = (self._drops[0], max(reading.drops, self._drops[1]))
        if reading.rcvbuf_errors is not None:
            first = reading.rcvbuf_errors if self._errors is None else self._errors[0]
            self._errors = (first, reading.rcvbuf_errors)
        self.peak_queued = max(self.peak_queued, reading.queued)
        in_transit = (reading.backlog or 0) * self.max_cost
        self._last_queued = reading.queued + in_transit
        self.credit = self._window() - self._last_queued - (self.sent_bytes - mark)

    def failed_reading(self, error: str, now: float) -> None:
        """A reading failed (timeout, connection): give up on the queue after a few."""
        self.failures += 1
        if self.failures >= self.cfg.max_failures:
            self.fail(error, now)

    def fail(self, reason: str, now: float) -> None:
        """The queue cannot be read: the rest goes at the fixed rate, from now."""
        if self.mode == "rate":
            return
        self.mode = "rate"
        self.reason = reason
        self.credit = None
        self._since, self._base, self._rate = now, self.sent, self.cfg.blind_pps

    # -- the report ---------------------------------------------------------------------

    def report(self, now: float) -> ReplayPacing:
        stalled = self.stalled + (now - self._blocked_since
                                  if self._blocked_since is not None else 0.0)
        return ReplayPacing(
            paced_by="queue" if self.mode == "queue" else "rate", reason=self.reason,
            reads=self.reads, capacity=self.capacity, peak_queued=self.peak_queued,
            fill=self.fill, stalled_ms=stalled * 1000, forced=self.forced,
            first_reading_ms=None if self.first_reading is None
            else self.first_reading * 1000,
            rtt_ms=None if self.rtt is None else self.rtt * 1000,
            drops=None if self._drops is None else self._drops[1] - self._drops[0],
            rcvbuf_errors=None if self._errors is None
            else max(0, self._errors[1] - self._errors[0]))
