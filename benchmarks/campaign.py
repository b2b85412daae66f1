#!/usr/bin/env python3
"""Availability campaign: accelerated, overlapping fault injection against a service of VNFs.

A 4-host testbed with the manager and a forwarder pair (``nfvcamp``, 10.252.0.0/16;
forwarders in1 and in2, one active and one standby, on two ingress hosts) runs a
service of five stateful VNFs under client traffic, with the daemons' default
fault-detection timings (``--timings tolerant``: those of the e2e tests, for a machine
so loaded that agents starved of CPU fence themselves):

- ``fm``  flow monitor, clients talk to it directly (no replay);
- ``nat`` UDP NAT, directly, with the standby policy of ``examples/udpnat.yaml``;
- ``fmr`` flow monitor behind the forwarder pair with packet log and replay;
- ``ch1`` → ``ch2`` a chain of two NATs behind one service address, with replay.

The replayed VNFs keep two backups (``backups: 2``), the others one.

Faults are injected for real at random times (exponential inter-arrival per fault type,
seeded; each type's count set by ``--failures`` and ``--faults TYPE=N,...``) on random
targets, overlapping as in real life:

- VNF: SIGKILL of the VNF process (``kill``), SIGSTOP of it (``hang``), both through the
  manager's inject API;
- compute host: a crash (``host-crash``, ``Testbed.crash_host``: links cut, every process
  killed; powered on again after a random repair time) and a partition (``partition``:
  links cut, processes keep running; healed after a random time). A host fault is only
  injected while every VNF on that host has a replicated checkpoint on another host that
  is up with its agent, and at most ``hosts - 2`` hosts are down or have their agent
  under a fault at once (so for agent faults too): each VNF always has a host to move to;
- agent: SIGKILL of a host's agent (``agent-kill``; its supervisor starts it again), a
  clean restart (``agent-restart``: SIGTERM, the supervisor starts it again) and a stall
  (``agent-stall``: SIGSTOP for 0.1-5 s, then SIGCONT). A stall longer than the agent
  grace (3 s) makes the host's lease guard fence its VNFs, which are then recovered
  elsewhere: such a stall is injected only where a host fault would be; a shorter one,
  and a kill or restart, must recover nothing. A stall close to the grace may go either
  way, and a recovery it causes is counted as its own;
- forwarder pair: SIGKILL of the active forwarder (``forwarder-kill``; its supervisor
  starts it again as the new standby) and power loss of the active's ingress host
  (``ingress-crash``; powered on again after a random repair time). Injected only while
  the pair is whole and in sync (one active, one standby, both ``in_sync``) and has been
  for ``lone_lease`` + 0.2 s, so that the takeover is the fast one, and one at a time.

Measured for the whole run:

- per failure (one VNF hit by one fault): the downtime a client probing every VNF at
  200 Hz saw, the phases of the manager's HEAL operation occurrence, the strategy, and
  the state lost: every client datagram carries a sequence number and the VNFs' replies
  carry their counters (the NAT answers every datagram with its binding counter, the flow
  monitor answers ``ACK?`` with its flow counter), so *lost* = how many of the client's
  datagrams the VNF's state no longer counts after the recovery, compared with before;
  expected 0 with replay;
- per forwarder fault: the time to a new active (the manager's grant, and the first ARP
  answer from another forwarder), the silence of each replayed flow's replies, and the
  datagrams lost in flight. Those are lost as through a router that fails, and are
  reported apart from the 0-lost-with-replay invariant, as are the losses of a VNF
  failure during a takeover (the replay may miss what the old active did not mirror);
- availability per VNF and for the service (all five answering), measured on the probe
  replies, and extrapolated to stated real-life failure rates;
- invariants, watched all along: never two live copies of a VNF (a thread scans every
  host's VNF cgroups every few ms: a copy is a live PID-1 process of the VNF's PID
  namespace), never two forwarders owning an address (an ARP request for each service
  address and the upstream address every 20 ms on the data bridge, and never two MACs
  answering one round), no VNF lost (each failure ends with the VNF ACTIVE on one host
  and answering the client), the manager's view equal to what runs, and no recovery
  without an injected fault that may cause one.

Writes ``results/campaign.{json,md,png}`` and ``docs/img/campaign.png``. Needs root and
CRIU. Not a test: targets are reported as PASS/MISS. Usage::

    .venv/bin/python benchmarks/campaign.py [--quick] [--failures N]
                                            [--faults TYPE=N,...] [--seed S]
                                            [--duration S] [--timings default|tolerant]
                                            [--out DIR] [--no-doc-img] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nfvha.client import AsyncManagerClient
from nfvha.dataplane.pair import PairTimings
from nfvha.demo import python_vnf
from nfvha.errors import NfvhaError
from nfvha.testbed import Testbed
from nfvha.vim.guard import GuardConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find _common
from _common import (
    REPO,
    RESULTS,
    BenchError,
    api_result,
    install_signal_handlers,
    median,
    percentile,
    pin_bridge_macs,
    progress,
    publish,
    run_ip,
    save_figure,
    signals_ignored,
    source_digest,
    testbed_down,
    testbed_machine,
)
from _common import fmt_num as _f  # short: it fills the report tables

VNFS_DIR = REPO / "examples" / "vnfs"

TB_NAME = "nfvcamp"
TB_SUBNET = "10.252.0.0/16"  # apart from the default testbed, e2e tests and other benchmarks
STATE_DIR = Path("/run/nfvha-bench-camp")
N_HOSTS = 4

CHECKPOINT_INTERVAL = 1.0  # as in the sample descriptors (examples/*.yaml)
# The manager's health probe of each VNF (hang detection), as in the sample descriptors.
HA_PROBE = {"interval": 0.1, "timeout": 0.1, "failure_threshold": 3}
PROBE_PERIOD = 0.005  # the client's availability probe: 200 Hz per VNF
TRAFFIC_HZ = 100.0  # client datagrams per second on each flow
ACK_EVERY = 10  # flow monitors: every 10th datagram is an ACK? (its reply is the counter)
WATCH_PERIOD = 0.005  # the copies watcher's scan period
DOWN_GAP_MS = 50.0  # a reply gap longer than this counts as unavailable time
SETTLE_AFTER_S = 0.3  # a recovered VNF is a target again this long after the client saw it
# The state after a recovery is read from the reply to the first request sent this long after
# the client saw the VNF again: replies right after a replay can show datagrams delivered out
# of order (a transient deficit), which is reported apart from state actually lost.
STATE_SETTLE_S = 0.5
# After a takeover, the deficit is read as what most replies show over this long: a
# replay across the takeover may take longer than STATE_SETTLE_S to settle.
SETTLED_WINDOW_S = 2.0
OPERATOR_HEAL_EVERY_S = 5.0  # a VNF the manager gave up on (FAILED) is healed by hand
TARGET_WAIT_S = 10.0  # a drawn target not ready for this long is replaced by a new draw
QUICK_TARGET_WAIT_S = 3.0

VNF_FAULTS = ("kill", "hang")
HOST_FAULTS = ("host-crash", "partition")
AGENT_FAULTS = ("agent-kill", "agent-restart", "agent-stall")
FORWARDER_FAULTS = ("forwarder-kill", "ingress-crash")
FAULT_TYPES = VNF_FAULTS + HOST_FAULTS + AGENT_FAULTS + FORWARDER_FAULTS
FAULT_LABEL = {"kill": "process crash (SIGKILL)", "hang": "hang (SIGSTOP)",
               "host-crash": "host crash (power loss)", "partition": "host partition",
               "agent-kill": "agent crash (SIGKILL)", "agent-restart": "agent restart (SIGTERM)",
               "agent-stall": "agent stall (SIGSTOP 0.1-5 s)",
               "forwarder-kill": "active forwarder crash (SIGKILL)",
               "ingress-crash": "active's ingress host crash (power loss)"}
# The failure type the manager should see for a VNF hit by the fault (agent stall: only
# one past the grace hits VNFs, fenced by the lease guard).
EXPECTED_FAILURE_TYPE = {"kill": "process-exit", "hang": "hang", "host-crash": "host-loss",
                         "partition": "host-loss", "agent-stall": "host-loss"}
FAULT_COLOR = {"kill": "tab:red", "hang": "tab:orange", "host-crash": "tab:purple",
               "partition": "tab:blue", "agent-kill": "tab:brown", "agent-restart": "tab:olive",
               "agent-stall": "tab:pink", "forwarder-kill": "tab:cyan",
               "ingress-crash": "tab:gray"}

DEFAULT_FAILURES = 200  # per fault type, full mode
QUICK_FAILURES = 2
DEFAULT_DURATION_S = 1080.0  # mean time over which each type's arrivals are spread
QUICK_DURATION_S = 20.0
MAX_FAULT_PHASE_S = 1380.0  # hard cap of the injection phase (full mode)
QUICK_MAX_FAULT_PHASE_S = 75.0
REPAIR_MEAN_S = 2.0  # mean time until a crashed host is powered on again
REPAIR_MIN_S, REPAIR_MAX_S = 0.5, 8.0
HEAL_MEAN_S = 1.5  # mean duration of a partition
HEAL_MIN_S, HEAL_MAX_S = 0.5, 6.0

# Agent faults. The agent feeds its lease guard "alive until now + grace" every
# min(grace / 10, 0.25) s (nfvha.vim.agent): a stall fences the host's VNFs when it
# outlasts what is left of the grace since the last feed.
STALL_MIN_S, STALL_MAX_S = 0.1, 5.0
AGENT_GRACE_S = GuardConfig.agent_grace
AGENT_FEED_EVERY_S = max(0.05, min(AGENT_GRACE_S / 10, 0.25))
STALL_TOLERANCE_S = 0.3  # the guard's check period and CPU delays, around the grace
AGENT_BACK_TIMEOUT_S = 30.0
EXCUSE_AFTER_S = 5.0  # a recovery this long after a may-fence stall's end is still its own

# Forwarder faults: only once the pair has been whole and in sync for the lone lease (the
# active's leases then are the short ones) and a little more.
FORWARDER_QUIET_S = PairTimings.lone_lease + 0.2
TAKEOVER_TIMEOUT_S = 10.0  # no new active after this: reported
PAIR_BACK_TIMEOUT_S = 40.0  # the pair whole and in sync again after a forwarder fault
# The flow monitor's replies (``ACK <n>``) name no request: those that arrive after a
# takeover are matched to requests again this long after the new active, once the
# requests the takeover lost can no longer be answered (``align_acks``).
REALIGN_AFTER_S = 1.5
REALIGN_CUT_S = 0.3  # a request this old that got no reply is lost
REALIGN_WAIT_MAX_S = 30.0
ARP_PERIOD = 0.02  # the address-ownership watch: one ARP request per address per round

HTTP_TIMEOUT = 10.0
TESTBED_TIMEOUT = 40.0
DEPLOY_TIMEOUT = 30.0
HIT_SLOW_S = 15.0  # not recovered by itself after this: a lost VNF (then healed by hand)
DRAIN_TIMEOUT_S = 60.0
QUICK_DRAIN_TIMEOUT_S = 20.0
FINAL_TIMEOUT_S = 10.0  # the end-of-run check is retried this long until every VNF is OK
LIVE_AGENT_STATES = ("RUNNING", "CHECKPOINTING")  # the agent's view of a serving VNF
THREAD_MAX_S = 4 * 3600.0  # every client/watcher thread ends by itself after this

# Extrapolation to real-life failure rates (per year). Process faults hit each VNF; host
# faults hit each VNF at the rate of the host it runs on.
RATE_SCENARIOS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("weekly", "each VNF: one process crash and one hang per week; each host: one crash "
               "and one partition per month", {"kill": 52.0, "hang": 52.0,
                                                "host-crash": 12.0, "partition": 12.0}),
    ("daily", "each VNF: one process crash and one hang per day; each host: one crash and "
              "one partition per week", {"kill": 365.0, "hang": 365.0,
                                         "host-crash": 52.0, "partition": 52.0}),
)
YEAR_S = 365.0 * 86400.0


# -- the service -----------------------------------------------------------------------------


@dataclass(frozen=True)
class VnfSpec:
    iid: str
    kind: str  # flowmon | udpnat
    index: int  # address index in the testbed's VNF range
    flow: str  # the client flow that measures its state
    replay: bool = False
    service: int | None = None  # service address index (chain head / single VNF)
    after: str | None = None  # chain: the VNF before it
    host_loss: tuple[str, ...] = ("restore-remote", "restart")
    process: tuple[str, ...] = ("restore-local", "restore-remote", "restart")

    @property
    def backups(self) -> int:
        """Two for a replayed VNF where the hosts allow (issue 16), else one."""
        return 2 if self.replay and N_HOSTS >= 3 else 1

    @property
    def data_port(self) -> int:
        return 5000 if self.kind == "flowmon" else 6000

    @property
    def query_port(self) -> int:
        return 5001 if self.kind == "flowmon" else 6001


SERVICE: tuple[VnfSpec, ...] = (
    VnfSpec("fm", "flowmon", 10, "fm"),
    VnfSpec("nat", "udpnat", 20, "nat", host_loss=("standby", "restore-remote", "restart"),
            process=("restore-local", "standby", "restart")),
    VnfSpec("fmr", "flowmon", 11, "fmr", replay=True, service=11),
    VnfSpec("ch1", "udpnat", 30, "ch", replay=True, service=30),
    VnfSpec("ch2", "udpnat", 31, "ch", replay=True, after="ch1"),
)


def descriptor(spec: VnfSpec, tb: Testbed) -> dict[str, Any]:
    network: dict[str, Any] = {"address": tb.vnf_address(spec.index)}
    if spec.service is not None:
        network["service"] = {"address": tb.service_address(spec.service),
                              "port": spec.data_port}
    elif spec.after is not None:
        network["service"] = {"after": spec.after, "port": spec.data_port}
    return {"id": f"camp-{spec.iid}", **python_vnf(VNFS_DIR / f"{spec.kind}.py"),
            "network": network, "resources": {"memory": "128Mi", "cpu": 0.5},
            "ha": {"checkpoint_interval": CHECKPOINT_INTERVAL, "backups": spec.backups,
                   "replay": spec.replay,
                   "recovery": {"process-exit": list(spec.process), "hang": list(spec.process),
                                "host-loss": list(spec.host_loss)},
                   "probe": {"type": "udp", "port": spec.query_port, "send": "PING",
                             "expect": "PONG", **HA_PROBE}}}


def vnf_ip(tb: Testbed, spec: VnfSpec) -> str:
    return tb.vnf_address(spec.index).split("/")[0]


# -- the clients -----------------------------------------------------------------------------


class Prober(threading.Thread):
    """PING to every VNF's query port each period from one thread; records reply times.

    Sends are paced by the clock, never by replies, so a VNF that is down keeps being
    probed at the same rate; a reply counts when it arrives (wall clock, as the manager's
    timestamps).
    """

    def __init__(self, targets: dict[str, tuple[str, int]], period: float) -> None:
        super().__init__(name="prober", daemon=True)
        self.period = period
        self.replies: dict[str, list[float]] = {k: [] for k in targets}
        self.sent = 0
        # (from, to) wall times during which this thread itself sent nothing for longer than
        # DOWN_GAP_MS (it was starved of CPU): reply gaps there say nothing about the VNFs.
        self.stalls: list[tuple[float, float]] = []
        self._halt = threading.Event()
        self._socks: dict[socket.socket, str] = {}
        for key, addr in targets.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(addr)
            s.setblocking(False)
            self._socks[s] = key

    def stop(self) -> None:
        self._halt.set()
        self.join(3)
        for s in self._socks:
            s.close()

    def last_reply(self, key: str) -> float:
        r = self.replies[key]
        return r[-1] if r else 0.0

    def run(self) -> None:
        socks = list(self._socks)
        next_send = time.monotonic()
        deadline = next_send + THREAD_MAX_S
        last_sent = time.time()
        while not self._halt.is_set():
            now = time.monotonic()
            if now > deadline:
                return
            if now >= next_send:
                for s in socks:
                    with contextlib.suppress(OSError):  # ICMP error while the VNF is gone
                        s.send(b"PING")
                self.sent += 1
                t = time.time()
                if (t - last_sent) * 1000 > DOWN_GAP_MS:
                    self.stalls.append((last_sent, t))
                last_sent = t
                next_send += self.period
                if next_send < now:  # fell behind (a stall): pace on, do not burst
                    next_send = now + self.period
            ready, _, _ = select.select(socks, [], [], max(0.0, next_send - time.monotonic()))
            for s in ready:
                self._drain(s)

    def _drain(self, s: socket.socket) -> None:
        out = self.replies[self._socks[s]]
        while True:
            try:
                data = s.recv(64)
            except BlockingIOError:
                return
            except OSError:
                continue  # a queued ICMP error; later replies still count
            if data == b"PONG":
                out.append(time.time())


def align_acks(sent: Sequence[float], arrived: Sequence[float]) -> list[tuple[int, int]]:
    """Match replies to requests, both in order, when some of either were lost: pairs
    (request index, reply index), each reply matched to a request sent before it arrived,
    in order. Of the matchings, the one in which replies came back soonest: what a
    takeover loses is what was in flight at it, the oldest requests then unanswered,
    while the requests after it are answered at once. Replies with no request left to
    match are left out."""
    pairs: list[tuple[int, int]] = []
    j = len(sent) - 1
    for r in range(len(arrived) - 1, -1, -1):
        while j >= 0 and sent[j] > arrived[r]:
            j -= 1
        if j < 0:
            break
        pairs.append((j, r))
        j -= 1
    pairs.reverse()
    return pairs


class Flow(threading.Thread):
    """Steady client traffic on one UDP flow whose replies reveal the VNFs' counters.

    ``nat``: datagram i carries ``i``; a NAT answers ``<port> <n> <payload>``, a chain of
    NATs nests that, so the reply to datagram i holds every NAT's binding counter n, which
    must be i + 1. ``flowmon``: every ``ACK_EVERY``-th datagram is ``ACK?``, answered
    with ``ACK <n>``, n being the flow's counter; replies come back in order, so each is
    matched to the oldest unanswered ``ACK?``. The *deficit* of a VNF (datagrams sent up
    to that request minus the VNF's counter) grows only when the VNF loses state or a
    datagram; with replay it must stay 0.

    A forwarder takeover loses requests and replies in flight, after which the oldest
    unanswered ``ACK?`` is no longer the one answered: from ``hold_acks`` on, flow-monitor
    replies are kept aside, and ``realign_acks`` matches them again (``align_acks``) once
    the takeover's losses can no longer be answered.
    """

    def __init__(self, name: str, mode: str, addr: tuple[str, int], vnfs: Sequence[str],
                 replay: bool, rate: float = TRAFFIC_HZ) -> None:
        super().__init__(name=f"flow-{name}", daemon=True)
        self.key = name
        self.mode = mode
        self.vnfs = list(vnfs)
        self.replay = replay
        self.period = 1.0 / rate
        self.sent_t: list[float] = []  # send time of datagram i
        # (reply time, send time of the request, deficits in the order of self.vnfs)
        self.samples: list[tuple[float, float, tuple[int, ...]]] = []
        self.reply_t: list[float] = []  # arrival of every reply (silences)
        self.duplicates = 0
        self.unmatched = 0
        self.abandoned = 0
        self.realigned_lost = 0  # ACK? requests found lost (or their replies) at a realignment
        self.paused = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()  # _acks, _held, samples: the flow and the campaign
        self._acks: deque[tuple[int, float]] = deque()  # (expected, send time) unanswered
        self._held: list[tuple[float, int]] | None = None  # (arrival, n) while realigning
        self._seen: set[int] = set()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(addr)
        self.sock.setblocking(False)

    def stop(self) -> None:
        self._halt.set()
        self.join(3)
        self.sock.close()

    def last_sample_sent(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0

    def run(self) -> None:
        next_send = time.monotonic()
        deadline = next_send + THREAD_MAX_S
        while not self._halt.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_send and not self.paused.is_set():
                self._send_one()
                next_send += self.period
                if next_send < now:
                    next_send = now + self.period
            elif self.paused.is_set():
                next_send = now + self.period
            wait = max(0.0, min(next_send - time.monotonic(), 0.05))
            ready, _, _ = select.select([self.sock], [], [], wait)
            if ready:
                self._drain()

    def _send_one(self) -> None:
        i = len(self.sent_t)
        if self.mode == "nat":
            payload = str(i).encode()
        else:
            payload = b"ACK?" if (i + 1) % ACK_EVERY == 0 else b"x" * 64
        t = time.time()
        with contextlib.suppress(OSError):  # ICMP error queued while the VNF is gone
            self.sock.send(payload)
        self.sent_t.append(t)
        if self.mode == "flowmon" and payload == b"ACK?":
            with self._lock:
                self._acks.append((i + 1, t))
            if not self.replay:  # direct: an ACK? sent while the VNF was down is never answered
                while self._acks and t - self._acks[0][1] > 3.0:
                    self._acks.popleft()
                    self.abandoned += 1

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                continue
            now = time.time()
            self.reply_t.append(now)
            if self.mode == "nat":
                self._on_nat_reply(now, data)
            else:
                self._on_ack(now, data)

    def _on_nat_reply(self, now: float, data: bytes) -> None:
        parts = data.split()
        k = len(self.vnfs)
        if len(parts) != 2 * k + 1:
            self.unmatched += 1
            return
        try:
            i = int(parts[-1])
            counters = [int(x) for x in parts[1:2 * k:2]][::-1]  # chain order
        except ValueError:
            self.unmatched += 1
            return
        if i in self._seen:
            self.duplicates += 1
            return
        self._seen.add(i)
        sent = self.sent_t[i] if i < len(self.sent_t) else now
        self.samples.append((now, sent, tuple(i + 1 - n for n in counters)))

    def _on_ack(self, now: float, data: bytes) -> None:
        try:
            n = int(data.split()[1]) if data.startswith(b"ACK ") else None
        except (ValueError, IndexError):
            n = None
        with self._lock:
            if n is not None and self._held is not None:
                self._held.append((now, n))
                return
            if n is None or not self._acks:
                self.unmatched += 1
                return
            expected, sent = self._acks.popleft()
            self.samples.append((now, sent, (expected - n,)))

    def hold_acks(self) -> None:
        """From now on keep flow-monitor replies aside (a takeover is about to lose some
        requests or replies in flight); no effect on a NAT flow, whose replies name their
        request."""
        if self.mode == "flowmon":
            with self._lock:
                if self._held is None:
                    self._held = []

    @property
    def holding(self) -> bool:
        return self._held is not None

    def realign_acks(self, cut: float) -> int:
        """Match the replies kept aside since ``hold_acks`` to the requests unanswered;
        requests sent before ``cut`` that none answers are lost (or their replies were).
        Returns how many were."""
        with self._lock:
            held, self._held = self._held, None
            if held is None:
                return 0
            pending = list(self._acks)
            pairs = align_acks([t for _, t in pending], [t for t, _ in held])
            for i, r in pairs:
                expected, sent = pending[i]
                self.samples.append((held[r][0], sent, (expected - held[r][1],)))
            self.unmatched += len(held) - len(pairs)
            matched = {i for i, _ in pairs}
            last = max(matched, default=-1)
            lost = 0
            self._acks = deque()
            for i, (expected, sent) in enumerate(pending):
                if i in matched:
                    continue
                if i < last or sent <= cut:
                    lost += 1
                else:
                    self._acks.append((expected, sent))
            self.realigned_lost += lost
            return lost

    def deficit_before(self, vnf: str, t: float) -> int | None:
        """The VNF's deficit in the last reply received before ``t``."""
        j = self.vnfs.index(vnf)
        for now, _sent, d in reversed(self.samples):
            if now <= t:
                return d[j]
        return None

    def deficit_after(self, vnf: str, t: float) -> tuple[int | None, float | None]:
        """The VNF's deficit in the reply to the first request sent at or after ``t``."""
        j = self.vnfs.index(vnf)
        for _now, sent, d in self.samples:
            if sent >= t:
                return d[j], sent
        return None, None

    def settled_deficit(self, vnf: str, a: float, b: float) -> int | None:
        """The VNF's deficit most replies to requests sent between ``a`` and ``b`` show
        (of two as common, the later): what it settled at, past the transients right
        after a replay (replayed datagrams counted after newer ones)."""
        j = self.vnfs.index(vnf)
        count: dict[int, int] = {}
        last: dict[int, int] = {}
        for k, (_now, sent, d) in enumerate(self.samples):
            if a <= sent <= b:
                count[d[j]] = count.get(d[j], 0) + 1
                last[d[j]] = k
        return max(count, key=lambda d: (count[d], last[d])) if count else None

    def max_transient(self, vnf: str, a: float, b: float, base: int | None) -> int:
        """The largest departure from ``base`` of the VNF's deficit in replies to requests
        sent between ``a`` and ``b``."""
        j = self.vnfs.index(vnf)
        if base is None:
            return 0
        return max((abs(d[j] - base) for _now, sent, d in self.samples if a <= sent <= b),
                   default=0)

    def sent_between(self, a: float, b: float) -> int:
        return bisect.bisect_left(self.sent_t, b) - bisect.bisect_left(self.sent_t, a)


# -- the copies watcher ----------------------------------------------------------------------


def _cgroup_base() -> Path:
    for base in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if Path(base, TB_NAME).is_dir():
            return Path(base)
    return Path("/sys/fs/cgroup/memory")


def _proc_copy(pid: str) -> str | None:
    """The state letter of ``pid`` if it is a live copy of a VNF (PID 1 of its own PID
    namespace, not a zombie), else None."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    state, nspid = "", ""
    for line in text.splitlines():
        if line.startswith("State:"):
            state = line.split()[1]
        elif line.startswith("NSpid:"):
            nspid = line
            break
    ids = nspid.split()[1:]
    if len(ids) < 2 or ids[-1] != "1" or state in ("Z", "X"):
        return None
    return state


class Watcher(threading.Thread):
    """Scans every host's VNF cgroups every ``WATCH_PERIOD``: where each VNF has a live
    copy, and every moment two copies of one VNF were alive (on two hosts, or twice on
    one host)."""

    def __init__(self, hosts: Sequence[str], iids: Sequence[str]) -> None:
        super().__init__(name="watcher", daemon=True)
        self.hosts = list(hosts)
        self.iids = set(iids)
        self.base = _cgroup_base()
        # iid -> {host: [(pid, state)]}, replaced whole at each scan (atomic for readers)
        self.latest: dict[str, dict[str, list[tuple[int, str]]]] = {}
        self.latest_at = 0.0
        self.scans = 0
        self.scan_gaps: list[float] = []  # time between scan starts, s (sampled)
        self.max_gap = 0.0
        self.violations: list[dict[str, Any]] = []
        self._open: dict[str, dict[str, Any]] = {}
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(3)

    def scan(self) -> dict[str, dict[str, list[tuple[int, str]]]]:
        out: dict[str, dict[str, list[tuple[int, str]]]] = {}
        for h in self.hosts:
            d = self.base / TB_NAME / h / "vnf"
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for iid in names:
                if iid not in self.iids:
                    continue
                try:
                    pids = (d / iid / "cgroup.procs").read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    st = _proc_copy(pid)
                    if st is not None:
                        out.setdefault(iid, {}).setdefault(h, []).append((int(pid), st))
        return out

    def run(self) -> None:
        last = time.monotonic()
        deadline = last + THREAD_MAX_S
        while not self._halt.is_set() and time.monotonic() < deadline:
            t = time.monotonic()
            gap = t - last
            last = t
            if self.scans:
                self.max_gap = max(self.max_gap, gap)
                if self.scans % 10 == 0 or gap > 0.05:
                    self.scan_gaps.append(gap)
            snap = self.scan()
            self.latest = snap
            self.latest_at = time.time()
            self.scans += 1
            self._check(snap)
            self._halt.wait(max(0.0, WATCH_PERIOD - (time.monotonic() - t)))
        self._close_all()

    def _check(self, snap: dict[str, dict[str, list[tuple[int, str]]]]) -> None:
        now = time.time()
        for iid in self.iids:
            where = snap.get(iid, {})
            copies = sum(len(v) for v in where.values())
            if copies > 1:
                cur = self._open.get(iid)
                desc = {h: [f"{p}:{s}" for p, s in v] for h, v in where.items()}
                if cur is None:
                    self._open[iid] = {"vnf": iid, "start": now, "end": now, "scans": 1,
                                       "copies": desc,
                                       "running": sum(1 for v in where.values()
                                                      for _, s in v if s != "T")}
                else:
                    cur["end"] = now
                    cur["scans"] += 1
            elif iid in self._open:
                self._close(iid)

    def _close(self, iid: str) -> None:
        v = self._open.pop(iid)
        v["duration_ms"] = (v["end"] - v["start"]) * 1000
        self.violations.append(v)

    def _close_all(self) -> None:
        for iid in list(self._open):
            self._close(iid)

    def copies_of(self, iid: str) -> dict[str, list[tuple[int, str]]]:
        return self.latest.get(iid, {})


# -- the address-ownership watcher -----------------------------------------------------------

ETH_P_ARP = 0x0806


def arp_request(src_mac: bytes, src_ip: str, target_ip: str) -> bytes:
    """An Ethernet broadcast ARP request "who has ``target_ip``", from ``src_mac``."""
    return (b"\xff" * 6 + src_mac + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + socket.inet_aton(src_ip)
            + b"\x00" * 6 + socket.inet_aton(target_ip))


def arp_answer(frame: bytes) -> tuple[str, str] | None:
    """(address, MAC) an ARP reply (unicast or gratuitous) says it owns; None for any
    other frame."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP) \
            or frame[20:22] != b"\x00\x02":
        return None
    return socket.inet_ntoa(frame[28:32]), frame[22:28].hex(":")


def double_owners(answers: dict[str, set[str]]) -> dict[str, list[str]]:
    """The addresses that more than one MAC answered for in one round, with those MACs."""
    return {ip: sorted(macs) for ip, macs in answers.items() if len(macs) > 1}


def first_new_owner(changes: Sequence[tuple[float, str, tuple[str, ...]]], ip: str,
                    after: float, old: Iterable[str]) -> tuple[float, str] | None:
    """When, after ``after``, a MAC other than the ``old`` ones first answered for ``ip``
    alone (a round's start), and which; None if none did."""
    olds = set(old)
    for t, addr, macs in changes:
        if t >= after and addr == ip and len(macs) == 1 and macs[0] not in olds:
            return t, macs[0]
    return None


def owners_at(changes: Sequence[tuple[float, str, tuple[str, ...]]], ip: str,
              t: float) -> tuple[str, ...]:
    """The MACs that answered for ``ip`` in the last round before ``t`` that had an
    answer."""
    out: tuple[str, ...] = ()
    for at, addr, macs in changes:
        if at >= t:
            break
        if addr == ip and macs:
            out = macs
    return out


class ArpRounds:
    """What ARP rounds said: every change of an address's answer, the rounds nobody
    answered, and each episode of two MACs answering one round (from its first such
    round to its last)."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = list(addresses)
        self.rounds = 0
        self.unanswered = dict.fromkeys(addresses, 0)
        self.changes: list[tuple[float, str, tuple[str, ...]]] = []
        self.violations: list[dict[str, Any]] = []
        self._current: dict[str, tuple[str, ...]] = {}
        self._open: dict[str, dict[str, Any]] = {}

    def add(self, t: float, answers: dict[str, set[str]]) -> None:
        """The answers of the round that started at ``t``."""
        self.rounds += 1
        doubles = double_owners(answers)
        for ip, macs in answers.items():
            now = tuple(sorted(macs))
            if not now:
                self.unanswered[ip] += 1
            if now != self._current.get(ip):
                self._current[ip] = now
                self.changes.append((t, ip, now))
            if ip in doubles:
                cur = self._open.get(ip)
                if cur is None:
                    self._open[ip] = {"address": ip, "start": t, "end": t, "rounds": 1,
                                      "macs": doubles[ip]}
                else:
                    cur["end"] = t
                    cur["rounds"] += 1
                    cur["macs"] = sorted(set(cur["macs"]) | set(doubles[ip]))
            elif ip in self._open:
                self.violations.append(self._open.pop(ip))

    def close(self) -> None:
        for ip in list(self._open):
            self.violations.append(self._open.pop(ip))


class ArpWatch(threading.Thread):
    """Asks, on the data bridge, who has each watched address every ``period`` s, and
    collects the MACs answering each round (``ArpRounds``): two in one round are two
    forwarders owning that address at once."""

    def __init__(self, bridge: str, asker_ip: str, addresses: Sequence[str],
                 period: float = ARP_PERIOD) -> None:
        super().__init__(name="arpwatch", daemon=True)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self.sock.bind((bridge, ETH_P_ARP))
        self.sock.settimeout(period / 4)
        mac = self.sock.getsockname()[4]
        self.requests = [arp_request(mac, asker_ip, a) for a in addresses]
        self.period = period
        self.seen = ArpRounds(addresses)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(3)
        self.sock.close()

    def run(self) -> None:
        deadline = time.monotonic() + THREAD_MAX_S
        while not self._halt.is_set() and time.monotonic() < deadline:
            t = time.time()
            for req in self.requests:
                with contextlib.suppress(OSError):
                    self.sock.send(req)
            answers: dict[str, set[str]] = {a: set() for a in self.seen.addresses}
            end = time.monotonic() + self.period
            while time.monotonic() < end:
                try:
                    frame = self.sock.recv(128)
                except OSError:  # the timeout included
                    continue
                got = arp_answer(frame)
                if got is not None and got[0] in answers:
                    answers[got[0]].add(got[1])
            self.seen.add(t, answers)
        self.seen.close()


# -- the campaign ----------------------------------------------------------------------------


@dataclass
class Hit:
    """One VNF failed by one fault."""

    vnf: str
    host: str  # where it ran when the fault was injected
    generation: int
    deficit_before: int | None
    since_checkpoint_s: float | None = None
    mgr_recovered_at: float | None = None  # wall time the manager showed it ACTIVE again
    host_after: str | None = None
    closed_at: float | None = None  # the client saw it answer after the recovery
    manager_failed: bool = False
    slow_reported: bool = False
    operator_healed: bool = False
    stop_resent: int = 0  # SIGSTOPs sent again because a checkpoint's CRIU swallowed one
    late: bool = False  # a recovery seen after the fact, of a fault that may cause one


@dataclass
class Takeover:
    """What followed one forwarder fault: the pair's new active and its return to a
    whole pair in sync."""

    old: str  # the active hit by the fault
    old_macs: tuple[str, ...]  # what answered ARP for the upstream address before it
    term_before: int
    new: str | None = None
    granted_at: float | None = None  # wall: the manager's grant (its takeovers record)
    waited_s: float | None = None  # how long the grant waited for the old leases
    seen_at: float | None = None  # wall: the campaign first saw another active
    restored_at: float | None = None  # ingress-crash: powered on, its forwarder answering
    whole_at: float | None = None  # wall: the pair whole and in sync again
    realigned_at: float | None = None  # wall: the flow monitors' replies matched again
    realigned_lost: int = 0  # ACK? requests (or replies) the realignment found lost


@dataclass
class Fault:
    fid: int
    kind: str
    target: str  # VNF instance id (kill, hang), host id, or ingress id
    arrival: float  # when the Poisson process asked for it (wall)
    injected: float  # wall
    hits: dict[str, Hit] = field(default_factory=dict)
    concurrent: int = 0  # other faults still open when this one was injected
    # Host faults: revived / healed; agent faults: the agent answers again; forwarder
    # faults: the pair whole and in sync again, replies realigned (wall).
    repaired: float | None = None
    repair_error: str | None = None
    note: str = ""
    stall_s: float | None = None  # agent-stall: how long the agent was stopped
    expect: str | None = None  # agent-stall: fence | none | either (``stall_outcome``)
    # VNFs whose recovery this fault may cause without being sure to (a stall about as
    # long as the agent grace): such a recovery is counted as its own (a late hit).
    excuses: set[str] = field(default_factory=set)
    takeover: Takeover | None = None

    @property
    def open(self) -> bool:
        return (any(h.closed_at is None for h in self.hits.values())
                or (self.kind not in VNF_FAULTS and self.repaired is None))


def fault_arrivals(counts: dict[str, int], duration: float, rng: random.Random
                   ) -> dict[str, list[float]]:
    """Each fault type's arrival times (s from the start of the injection phase): a
    Poisson process per type whose rate spreads its count over ``duration`` on average,
    so types asked for fewer times come as often at random, only fewer of them. Types
    asked for 0 times are left out."""
    out: dict[str, list[float]] = {}
    for k in FAULT_TYPES:
        n = counts.get(k, 0)
        if n <= 0:
            continue
        rate = n / duration
        t, times = 0.0, []
        for _ in range(n):
            t += rng.expovariate(rate)
            times.append(t)
        out[k] = times
    return out


def stall_outcome(stall_s: float, grace: float = AGENT_GRACE_S,
                  feed_every: float = AGENT_FEED_EVERY_S,
                  tolerance: float = STALL_TOLERANCE_S) -> str:
    """What an agent stopped for ``stall_s`` must cause: ``fence`` (its guard fences the
    host's VNFs: the grace, fed at most ``feed_every`` before the stop, runs out),
    ``none``, or ``either`` when it lies within the feed period and ``tolerance`` of the
    grace."""
    if stall_s >= grace + tolerance:
        return "fence"
    if stall_s <= grace - feed_every - tolerance:
        return "none"
    return "either"


def pair_in_sync(view: dict[str, Any] | None) -> str | None:
    """The active forwarder's id if the manager's view (GET /nfvha/v1/forwarders) shows
    the pair whole and in sync: one active (the one its store names), one standby, both
    ``in_sync``; else None."""
    if not view:
        return None
    members = view.get("members") or []
    if sorted(str(m.get("role")) for m in members) != ["active", "standby"]:
        return None
    if not all(m.get("in_sync") is True for m in members):
        return None
    active = next(m.get("id") for m in members if m.get("role") == "active")
    return active if isinstance(active, str) and active == view.get("active") else None


def fault_counts(spec: str | None, default: int) -> dict[str, int]:
    """Faults to inject per type: ``default`` each, but for the types ``spec`` names
    (``TYPE=N,...``). ``ValueError`` names what is wrong."""
    out = dict.fromkeys(FAULT_TYPES, default)
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, n = item.partition("=")
        name = name.strip()
        if not sep or name not in out:
            raise ValueError(f"--faults: {item.strip()!r}: use TYPE=N with TYPE one of "
                             f"{', '.join(FAULT_TYPES)}")
        try:
            out[name] = int(n)
        except ValueError:
            raise ValueError(f"--faults: {item.strip()!r}: N must be a whole number") from None
        if out[name] < 0:
            raise ValueError(f"--faults: {item.strip()!r}: N must be 0 or more")
    return out


class Campaign:
    """Runs the service, injects the faults, follows every failure to its end."""

    def __init__(self, tb: Testbed, counts: dict[str, int], duration: float, max_phase: float,
                 drain_timeout: float, seed: int, target_wait: float) -> None:
        self.tb = tb
        self.counts = counts  # faults to inject, per type
        self.duration = duration
        self.max_phase = max_phase
        self.drain_timeout = drain_timeout
        self.rng = random.Random(seed)
        self.specs = {s.iid: s for s in SERVICE}
        self.faults: list[Fault] = []
        self.records: dict[str, dict[str, Any]] = {}  # iid -> last VnfInstance seen
        self.hosts_state: dict[str, str] = {}  # manager's view: UP / SUSPECTED / DOWN
        self.hosts_info: dict[str, dict[str, Any]] = {}
        self.last_closed: dict[str, float] = {}  # iid -> when its last failure ended
        self.unexpected: list[dict[str, Any]] = []  # recoveries without an injected fault
        self.mismatches: list[dict[str, Any]] = []  # manager view != what runs
        self.mismatch_open: dict[str, dict[str, Any]] = {}
        self.operator_heals: list[dict[str, Any]] = []
        self.deficit_at_start: dict[str, int | None] = {}
        self.redraws: dict[str, int] = {}
        self.target_wait = target_wait
        self.events: list[str] = []  # notable things, for the anomalies list
        self.loadavg: list[tuple[float, float]] = []
        self.repair_tasks: set[asyncio.Task[None]] = set()
        self.host_down: dict[str, tuple[str, float, float | None]] = {}  # host -> kind, t0, t1
        self.host_periods: list[dict[str, Any]] = []
        self.phase_start = 0.0
        self.phase_end = 0.0
        self.probe_start = 0.0
        self.probe_end = 0.0
        self.final: dict[str, Any] = {}
        self.ops: list[dict[str, Any]] = []
        # Every HEAL seen, by id: the manager keeps only the newest operation occurrences
        # of a VNF (100), fewer than a full run makes, so they are collected as they come.
        self.ops_seen: dict[str, dict[str, Any]] = {}
        self.prober: Prober | None = None
        self.flows: dict[str, Flow] = {}
        self.watcher: Watcher | None = None
        self.arp: ArpWatch | None = None
        self.manager: AsyncManagerClient | None = None
        self.daemons: httpx.AsyncClient | None = None  # agents' health, as the testbed asks
        self.stop_reason: str | None = None
        # The manager's view of the forwarder pair, and since when (wall) it has been
        # whole and in sync without a break (None: it is not).
        self.pair_view: dict[str, Any] = {}
        self.pair_whole_since: float | None = None
        self.pair_final: dict[str, Any] = {}
        self.ingress_macs: dict[str, str] = {}  # data MAC -> ingress id
        # Agent faults (until the agent answers) and forwarder faults (until the pair
        # is whole again): {host, component, kind, start, end}.
        self.other_periods: list[dict[str, Any]] = []

    # -- API ---------------------------------------------------------------------------

    async def call(self, method: str, path: str, ok: tuple[int, ...] = (),
                   **kw: Any) -> Any:
        assert self.manager is not None
        try:
            r = await self.manager.request(method, path, ok=ok, **kw)
        except NfvhaError as exc:
            raise BenchError(str(exc)) from exc
        return api_result(method, path, r, ok)

    async def vnf(self, iid: str) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("GET", f"/vnflcm/v1/vnf_instances/{iid}")
        return res

    async def checkpoints(self, iid: str) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = await self.call("GET", "/nfvha/v1/checkpoints",
                                                    params={"vnfInstanceId": iid})
        return res

    # -- set-up ------------------------------------------------------------------------

    async def deploy(self) -> None:
        """Instantiate every VNF; a chain's VNF only once the one before it is ACTIVE (the
        forwarder feeds it from that VNF's service)."""
        for spec in SERVICE:
            desc = descriptor(spec, self.tb)
            await self.call("POST", "/nfvha/v1/vnfds", json=desc)
            await self.call("POST", "/vnflcm/v1/vnf_instances",
                            json={"vnfdId": desc["id"], "vnfInstanceId": spec.iid})
        started: set[str] = set()
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        while True:
            vnfs = {v["id"]: v for v in await self.call("GET", "/vnflcm/v1/vnf_instances")}
            for spec in SERVICE:
                if spec.iid in started:
                    continue
                if spec.after is not None and vnfs[spec.after]["haState"] != "ACTIVE":
                    continue
                await self.call("POST", f"/vnflcm/v1/vnf_instances/{spec.iid}/instantiate",
                                json={})
                started.add(spec.iid)
            if len(started) == len(SERVICE) and all(
                    vnfs[s.iid]["haState"] == "ACTIVE" for s in SERVICE):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"not every VNF ACTIVE {DEPLOY_TIMEOUT:.0f}s after "
                                 f"instantiate: { {k: v['haState'] for k, v in vnfs.items()} }")
            await asyncio.sleep(0.1)

    def start_clients(self) -> None:
        tb = self.tb
        self.prober = Prober({s.iid: (vnf_ip(tb, s), s.query_port) for s in SERVICE},
                             PROBE_PERIOD)
        by_flow: dict[str, list[VnfSpec]] = {}
        for s in SERVICE:
            by_flow.setdefault(s.flow, []).append(s)
        for name, specs in by_flow.items():
            head = specs[0]
            addr = (tb.service_address(head.service) if head.service is not None
                    else vnf_ip(tb, head), head.data_port)
            mode = "nat" if head.kind == "udpnat" else "flowmon"
            self.flows[name] = Flow(name, mode, addr, [s.iid for s in specs], head.replay)
        self.watcher = Watcher(list(tb.hosts), [s.iid for s in SERVICE])
        if tb.paired:
            for g in tb.ingress_hosts.values():
                info = json.loads(run_ip("-n", g.netns, "-j", "link", "show", "eth0"))
                self.ingress_macs[info[0]["address"]] = g.id
            self.arp = ArpWatch(tb.bridge, tb.gateway, self.watched_addresses())
            self.arp.start()
        self.prober.start()
        self.watcher.start()
        for f in self.flows.values():
            f.start()

    def watched_addresses(self) -> list[str]:
        """What only the active forwarder may answer ARP for: every service address and
        the pair's upstream address."""
        return [*(self.tb.service_address(s.service) for s in SERVICE if s.service is not None),
                self.tb.upstream_address]

    def stop_clients(self) -> None:
        for f in self.flows.values():
            f.stop()
        if self.prober is not None:
            self.prober.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.arp is not None:
            self.arp.stop()

    async def warm_up(self, timeout: float) -> None:
        """Every VNF answers the client and has a checkpoint replicated to its backup; the
        forwarder pair is whole and in sync."""
        deadline = time.monotonic() + timeout
        t0 = time.time()
        while True:
            ready = []
            for s in SERVICE:
                cps = await self.checkpoints(s.iid)
                answered = self.prober is not None and self.prober.last_reply(s.iid) > t0
                measured = self.flows[s.flow].last_sample_sent() > t0
                ready.append(answered and measured and any(
                    c["createdAt"] > t0 and len(c["replicas"]) > 1 for c in cps))
            pair_ok = not self.tb.paired or pair_in_sync(await self._read_pair()) is not None
            if all(ready) and pair_ok:
                return
            if time.monotonic() > deadline:
                if not pair_ok:
                    raise BenchError(f"warm-up: the forwarder pair not whole and in sync "
                                     f"after {timeout:.0f}s: {self.pair_view}")
                state = dict(zip(self.specs, ready, strict=True))
                raise BenchError("warm-up: not every VNF answers with a replicated checkpoint "
                                 f"after {timeout:.0f}s: {state}")
            await asyncio.sleep(0.2)

    # -- observing ---------------------------------------------------------------------

    async def poll(self) -> None:
        """Follow the manager's view; close failures whose VNF serves the client again."""
        n = 0
        while True:
            try:
                vnfs = await self.call("GET", "/vnflcm/v1/vnf_instances")
                now = time.time()
                for v in vnfs:
                    if v["id"] in self.specs:
                        self._on_record(v, now)
                if n % 3 == 0:
                    hosts = await self.call("GET", "/nfvha/v1/hosts")
                    self.hosts_state = {h["id"]: h["state"] for h in hosts}
                    self.hosts_info = {h["id"]: h for h in hosts}
                if n % 2 == 0 and self.tb.paired:
                    await self._read_pair()
                if n % 100 == 0:
                    self.loadavg.append((now, os.getloadavg()[0]))
                if n % 20 == 10:
                    self._check_view(now)
                if n % 50 == 25:
                    self._remember_ops(await self.call("GET", "/vnflcm/v1/vnf_lcm_op_occs"))
            except BenchError as exc:
                self.events.append(f"{time.strftime('%H:%M:%S')} poll: {exc}")
            self._progress_hits()
            n += 1
            await asyncio.sleep(0.1)

    async def _read_pair(self) -> dict[str, Any]:
        view: dict[str, Any] = await self.call("GET", "/nfvha/v1/forwarders")
        self.pair_view = view
        if pair_in_sync(view) is None:
            self.pair_whole_since = None
        elif self.pair_whole_since is None:
            self.pair_whole_since = time.time()
        return view

    def _open_hit(self, iid: str) -> tuple[Fault, Hit] | None:
        for f in reversed(self.faults):
            h = f.hits.get(iid)
            if h is not None and h.closed_at is None:
                return f, h
        return None

    def _on_record(self, v: dict[str, Any], now: float) -> None:
        iid = v["id"]
        prev = self.records.get(iid)
        self.records[iid] = v
        gen = int(v.get("generation", 0))
        cur = self._open_hit(iid)
        changed = prev is not None and (
            gen > int(prev.get("generation", 0))
            or (v["haState"] != "ACTIVE" and prev["haState"] == "ACTIVE"))
        if cur is None and changed:
            assert prev is not None
            cur = self._late_hit(iid, prev, now)
        if cur is not None:
            f, h = cur
            if v["haState"] == "ACTIVE" and gen > h.generation and h.mgr_recovered_at is None:
                h.mgr_recovered_at = now
                h.host_after = v.get("host")
            if v["haState"] == "FAILED" and not h.manager_failed:
                h.manager_failed = True
                self.events.append(f"{iid}: the manager gave up recovering it (FAILED) after "
                                   f"fault #{f.fid} ({f.kind}); healed by hand every "
                                   f"{OPERATOR_HEAL_EVERY_S:.0f}s until it recovers")
            return
        if changed:
            self.unexpected.append({"vnf": iid, "t": now, "haState": v["haState"],
                                    "generation": gen, "host": v.get("host"),
                                    "lastRecovery": v.get("lastRecovery")})
            if v["haState"] == "ACTIVE":
                self.last_closed[iid] = now

    def _late_hit(self, iid: str, prev: dict[str, Any], now: float
                  ) -> tuple[Fault, Hit] | None:
        """A recovery of ``iid`` that a fault may have caused without being sure to (an
        agent stall about as long as its grace): counted as that fault's failure of it."""
        for f in reversed(self.faults):
            end = (f.repaired or now) + EXCUSE_AFTER_S
            if iid in f.excuses and f.injected <= now <= end and iid not in f.hits:
                flow = self.flows[self.specs[iid].flow]
                h = Hit(vnf=iid, host=str(prev.get("host")),
                        generation=int(prev.get("generation", 0)),
                        deficit_before=flow.deficit_before(iid, f.injected), late=True)
                f.hits[iid] = h
                self.events.append(f"fault #{f.fid} ({f.kind} {f.target}, {f.stall_s or 0:.2f} s): "
                                   f"{iid} recovered (the guard fenced it: the stall was "
                                   f"within {STALL_TOLERANCE_S} s of the {AGENT_GRACE_S:g} s "
                                   "grace)")
                return f, h
        return None

    async def _manual_heal(self, iid: str) -> None:
        with contextlib.suppress(BenchError):
            await self.call("POST", f"/vnflcm/v1/vnf_instances/{iid}/heal",
                            json={"cause": "campaign: the automatic recovery FAILED"})

    def _progress_hits(self) -> None:
        assert self.prober is not None
        now = time.time()
        for f in self.faults:
            if not f.open:
                continue
            for iid, h in f.hits.items():
                if h.closed_at is not None:
                    continue
                if h.mgr_recovered_at is not None and \
                        self.prober.last_reply(iid) > h.mgr_recovered_at:
                    h.closed_at = now
                    self.last_closed[iid] = now
                elif now - f.injected > HIT_SLOW_S and not h.slow_reported:
                    h.slow_reported = True
                    self.events.append(
                        f"fault #{f.fid} ({f.kind} {f.target}): {iid} not serving again "
                        f"{HIT_SLOW_S:.0f}s later (manager: {self.records[iid]['haState']} on "
                        f"{self.records[iid].get('host')})")

    def _check_view(self, now: float) -> None:
        """Where no failure is in progress, the manager's host of a VNF must be where its
        only live copy runs. A difference still there at the next check (2 s later) is a
        mismatch episode, which lasts until the two agree again."""
        assert self.watcher is not None
        for iid, v in self.records.items():
            cur = self.mismatch_open.get(iid)
            quiet = (self._open_hit(iid) is None and v["haState"] == "ACTIVE"
                     and now - self.last_closed.get(iid, 0.0) >= 2.0)
            where = self.watcher.copies_of(iid)
            ok = list(where) == [v.get("host")] and len(where[v["host"]]) == 1
            if ok or not quiet:
                if cur is not None:
                    cur["end"] = now
                    del self.mismatch_open[iid]
                continue
            seen = {"t": now, "manager_host": v.get("host"),
                    "copies": {h: [p for p, _ in c] for h, c in where.items()}}
            if cur is None:
                self.mismatch_open[iid] = {"vnf": iid, "start": now, "end": None,
                                           "confirmed": False, "first": seen, "last": seen}
                self.mismatches.append(self.mismatch_open[iid])
            else:
                cur["confirmed"] = True
                cur["last"] = seen

    async def operator(self) -> None:
        """What an operator does: heal by hand a VNF the manager gave up on (FAILED) or
        that has not served for ``HIT_SLOW_S`` after a fault (both count as lost VNFs)."""
        while True:
            await asyncio.sleep(OPERATOR_HEAL_EVERY_S)
            now = time.time()
            for iid, v in list(self.records.items()):
                cur = self._open_hit(iid)
                stuck = cur is not None and now - cur[0].injected > HIT_SLOW_S
                if v["haState"] == "FAILED" or (stuck and v["haState"] == "ACTIVE"):
                    if cur is not None:
                        cur[1].operator_healed = True
                    self.operator_heals.append({"vnf": iid, "t": now,
                                                "haState": v["haState"]})
                    await self._manual_heal(iid)

    # -- choosing targets --------------------------------------------------------------

    def host_up(self, h: str) -> bool:
        return self.tb.hosts[h].state == "up" and self.hosts_state.get(h) == "UP" \
            and h not in self.host_down

    def settled(self, iid: str) -> bool:
        """A VNF is a fair target once its last failure is over and measured."""
        assert self.watcher is not None
        v = self.records.get(iid)
        if v is None or v["haState"] != "ACTIVE" or self._open_hit(iid) is not None:
            return False
        host = v.get("host")
        if not host or not self.host_up(host) or self.agent_fault_open(host):
            return False  # an agent fault is its host's: the VNF is no fair target meanwhile
        if self.flows[self.specs[iid].flow].holding:
            return False  # its state cannot be read until the replies are realigned
        closed = self.last_closed.get(iid, 0.0)
        if time.time() - closed < SETTLE_AFTER_S:
            return False
        if self.flows[self.specs[iid].flow].last_sample_sent() <= closed + STATE_SETTLE_S:
            return False
        where = self.watcher.copies_of(iid)
        return list(where) == [host] and len(where[host]) == 1

    def usable(self, h: str) -> bool:
        """A host a VNF can move to: up, and its agent not under a fault."""
        return self.host_up(h) and not self.agent_fault_open(h)

    def unusable_others(self, h: str) -> int:
        return sum(1 for x in self.tb.hosts if x != h and not self.usable(x))

    async def host_ready(self, h: str) -> bool:
        """A host is a fair target when at most ``hosts - 3`` others are down or have
        their agent under a fault, every VNF on it is settled, none is recovering, and
        each has a replica on another host that is up with its agent."""
        if not self.host_up(h):
            return False
        if self.unusable_others(h) > N_HOSTS - 3:
            return False
        if any(v["haState"] != "ACTIVE" for v in self.records.values()):
            return False  # a recovering VNF may be on its way here
        on = [iid for iid, v in self.records.items() if v.get("host") == h]
        if any(not self.settled(iid) for iid in on):
            return False
        for iid in on:
            cps = await self.checkpoints(iid)
            if not any(r != h and self.usable(r) for c in cps for r in c["replicas"]):
                return False
        return True

    def agent_fault_open(self, h: str) -> bool:
        return any(f.open and f.kind in AGENT_FAULTS and f.target == h for f in self.faults)

    def draw_target(self, kind: str) -> str:
        """A target drawn uniformly at random, before knowing whether it is ready: drawing
        among ready targets only would favour the hosts without VNFs. A forwarder fault's
        target is the pair's active one at the time: drawn as "active"."""
        if kind in VNF_FAULTS:
            return self.rng.choice(sorted(self.specs))
        if kind in FORWARDER_FAULTS:
            return "active"
        return self.rng.choice(sorted(self.tb.hosts))

    # -- injecting ---------------------------------------------------------------------

    async def _hit(self, iid: str, record: dict[str, Any], t_inject: float) -> Hit:
        flow = self.flows[self.specs[iid].flow]
        return Hit(vnf=iid, host=record["host"], generation=int(record.get("generation", 0)),
                   deficit_before=flow.deficit_before(iid, t_inject))

    async def inject(self, kind: str, arrival: float, target: str,
                     param: float | None = None) -> Fault | None:
        """Inject ``kind`` into ``target`` if it is a fair target now, else None;
        ``param``: an agent stall's duration."""
        assert self.watcher is not None
        opened = sum(1 for f in self.faults if f.open)
        if kind in AGENT_FAULTS:
            return await self._inject_agent(kind, arrival, target, param, opened)
        if kind in FORWARDER_FAULTS:
            return await self._inject_forwarder(kind, arrival, opened)
        if kind in VNF_FAULTS:
            iid = target
            if not self.settled(iid):
                return None
            rec = await self.vnf(iid)  # fresh: its generation before the fault
            where = self.watcher.copies_of(iid)
            if rec["haState"] != "ACTIVE" or list(where) != [rec["host"]]:
                return None
            pid = where[rec["host"]][0][0]
            cps = await self.checkpoints(iid)
            t = time.time()
            # Through the manager's fault injection, as an operator's drill would: the
            # manager knows the fault was injected (not a crash loop of the VNF's own),
            # and the agent sends a hang's SIGSTOP once a dump under way is over.
            try:
                await self.call("POST", f"/nfvha/v1/vnf_instances/{iid}/inject",
                                json={"fault": kind})
            except BenchError as exc:
                if "409" in str(exc):  # it has just exited, or is being recovered
                    return None
                raise
            try:
                resent = await _until_stopped(pid) if kind == "hang" else 0
            except ProcessLookupError:
                return None
            f = Fault(len(self.faults) + 1, kind, iid, arrival, t, concurrent=opened)
            hit = await self._hit(iid, rec, t)
            hit.stop_resent = resent
            hit.since_checkpoint_s = t - max((c["createdAt"] for c in cps), default=t)
            f.hits[iid] = hit
            self.faults.append(f)
            return f
        h = target
        if not await self.host_ready(h):
            return None
        vnfs = await self.call("GET", "/vnflcm/v1/vnf_instances")
        on = [v for v in vnfs if v["id"] in self.specs and v.get("host") == h]
        cps = {v["id"]: await self.checkpoints(v["id"]) for v in on}
        t = time.time()
        f = Fault(len(self.faults) + 1, kind, h, arrival, t, concurrent=opened)
        self.host_down[h] = (kind, t, None)
        if kind == "host-crash":
            await self.tb.crash_host(h)
        else:
            await self.tb.partition_host(h)
        for v in on:
            hit = await self._hit(v["id"], v, t)
            hit.since_checkpoint_s = t - max((c["createdAt"] for c in cps[v["id"]]), default=t)
            f.hits[v["id"]] = hit
        self.faults.append(f)
        self._track(self._repair(f))
        return f

    # -- agent faults ------------------------------------------------------------------

    async def _inject_agent(self, kind: str, arrival: float, h: str, stall: float | None,
                            opened: int) -> Fault | None:
        """Kill, restart (SIGTERM) or stall (SIGSTOP for ``stall`` s) the agent of host
        ``h`` if it is a fair target now. A stall that may fence the host's VNFs needs
        what a host fault needs (``host_ready``), and its VNFs are its failures."""
        if not self.host_up(h) or self.agent_fault_open(h):
            return None
        # As for host faults: each VNF keeps a host to move to whose agent answers (the
        # manager tries every strategy at once against agents being restarted, and
        # gives up: an anomaly of its own, not what this measures).
        if self.unusable_others(h) > N_HOSTS - 3:
            return None
        expect = stall_outcome(stall) if kind == "agent-stall" and stall is not None else None
        if expect in ("fence", "either") and not await self.host_ready(h):
            return None
        vnfs = await self.call("GET", "/vnflcm/v1/vnf_instances")
        on = [v for v in vnfs if v["id"] in self.specs and v.get("host") == h]
        cps = {v["id"]: await self.checkpoints(v["id"]) for v in on} if expect == "fence" \
            else {}
        try:
            pid = self.tb.agent_process(h)
        except NfvhaError:
            return None  # between two runs of it (its supervisor is starting it)
        stop: asyncio.Task[int] | None = None
        t = time.time()
        try:
            if kind == "agent-kill":
                await self.tb.kill_agent(h)
            elif kind == "agent-restart":
                os.kill(pid, signal.SIGTERM)  # a clean stop; its supervisor starts it again
            else:
                assert stall is not None
                stop = asyncio.create_task(self.tb.stop_agent(h, stall))
                await asyncio.sleep(0)  # runs up to its sleep: the SIGSTOP is sent
                if stop.done():
                    stop.result()  # raises what prevented the stop
        except (ProcessLookupError, NfvhaError):
            return None
        f = Fault(len(self.faults) + 1, kind, h, arrival, t, concurrent=opened, stall_s=stall,
                  expect=expect)
        if expect == "fence":
            for v in on:
                hit = await self._hit(v["id"], v, t)
                hit.since_checkpoint_s = t - max((c["createdAt"] for c in cps[v["id"]]),
                                                 default=t)
                f.hits[v["id"]] = hit
        elif expect == "either":
            f.excuses = {v["id"] for v in on}
        self.faults.append(f)
        self._track(self._agent_back(f, None if stop is not None else pid, stop))
        return f

    async def _agent_back(self, f: Fault, old_pid: int | None,
                          stop: asyncio.Task[int] | None) -> None:
        """Until the host's agent answers again: a new process (after a kill or restart),
        or the stopped one continued (after a stall)."""
        h = f.target
        try:
            if stop is not None:
                with contextlib.suppress(ProcessLookupError):
                    await stop  # SIGCONT at the end of the stall
            deadline = time.monotonic() + AGENT_BACK_TIMEOUT_S
            while not await self._agent_answers(h, old_pid):
                if time.monotonic() > deadline:
                    f.repair_error = (f"the agent of {h} not answering "
                                      f"{AGENT_BACK_TIMEOUT_S:.0f}s on")
                    self.events.append(f"fault #{f.fid} ({f.kind} {h}): {f.repair_error}")
                    break
                await asyncio.sleep(0.05)
        finally:
            f.repaired = time.time()
            self.other_periods.append({"host": h, "component": "agent", "kind": f.kind,
                                       "start": f.injected, "end": f.repaired})

    async def _agent_answers(self, h: str, old_pid: int | None) -> bool:
        """Whether the agent of ``h`` answers its health check (another process than
        ``old_pid``, if given)."""
        host = self.tb.hosts[h]
        if host.state != "up" or self.daemons is None:
            return False
        if old_pid is not None:
            try:
                if self.tb.agent_process(h) == old_pid:
                    return False
            except NfvhaError:
                return False
        try:
            return (await self.daemons.get(f"{host.url}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    # -- forwarder faults --------------------------------------------------------------

    async def _inject_forwarder(self, kind: str, arrival: float, opened: int) -> Fault | None:
        """Kill the active forwarder, or cut its ingress host's power, if the pair is whole
        and in sync and has been for ``FORWARDER_QUIET_S``; one forwarder fault at a time."""
        if any(f.open and f.kind in FORWARDER_FAULTS for f in self.faults):
            return None
        if any(g.state != "up" for g in self.tb.ingress_hosts.values()):
            return None
        since = self.pair_whole_since
        if since is None or time.time() - since < FORWARDER_QUIET_S:
            return None
        view = await self._read_pair()
        active = pair_in_sync(view)
        since = self.pair_whole_since
        if active is None or since is None or time.time() - since < FORWARDER_QUIET_S:
            return None
        if await self.tb.active_forwarder() != active:
            return None  # the forwarders do not say what the manager does (yet)
        assert self.arp is not None
        old_macs = owners_at(self.arp.seen.changes, self.tb.upstream_address, time.time())
        held = [fl for fl in self.flows.values() if fl.replay]
        for fl in held:
            fl.hold_acks()
        t = time.time()
        try:
            if kind == "forwarder-kill":
                await self.tb.kill_forwarder(active)  # by id: no question first
            else:
                await self.tb.crash_ingress_host(active)
        except NfvhaError as exc:
            for fl in held:
                fl.realign_acks(time.time() - REALIGN_CUT_S)
            self.events.append(f"{kind} of {active} not injected: {exc}")
            return None
        f = Fault(len(self.faults) + 1, kind, active, arrival, t, concurrent=opened,
                  takeover=Takeover(old=active, old_macs=old_macs,
                                    term_before=int(view.get("term") or 0)))
        self.faults.append(f)
        self._track(self._follow_takeover(f))
        return f

    async def _follow_takeover(self, f: Fault) -> None:
        """Wait for a new active, realign the flow monitors' replies, power the crashed
        ingress host on again (after a random time), and wait for the pair to be whole
        and in sync again."""
        tk = f.takeover
        assert tk is not None
        repair = asyncio.create_task(self._restore_ingress(f)) \
            if f.kind == "ingress-crash" else None
        try:
            await self._new_active(f, tk)
            await self._realign(tk)
            if repair is not None:
                await repair
            deadline = time.monotonic() + PAIR_BACK_TIMEOUT_S
            while True:
                with contextlib.suppress(BenchError):
                    if pair_in_sync(await self._read_pair()) is not None:
                        tk.whole_at = time.time()
                        break
                if time.monotonic() > deadline:
                    self.events.append(f"fault #{f.fid} ({f.kind} {f.target}): the pair not "
                                       f"whole and in sync {PAIR_BACK_TIMEOUT_S:.0f}s after "
                                       f"the repair: {self.pair_view}")
                    break
                await asyncio.sleep(0.1)
        finally:
            if repair is not None and not repair.done():
                repair.cancel()
            f.repaired = time.time()
            self.other_periods.append({"host": f.target, "component": "forwarder",
                                       "kind": f.kind, "start": f.injected,
                                       "end": tk.whole_at or f.repaired})

    async def _new_active(self, f: Fault, tk: Takeover) -> None:
        """Until the manager names another active (its grant recorded, with its time)."""
        deadline = f.injected + TAKEOVER_TIMEOUT_S
        while time.time() < deadline:
            with contextlib.suppress(BenchError):
                view = await self.call("GET", "/nfvha/v1/forwarders")
                now = time.time()
                rec = next((x for x in view.get("takeovers", [])
                            if x.get("from") == tk.old
                            and int(x.get("term") or 0) > tk.term_before), None)
                if rec is not None or view.get("active") not in (None, tk.old):
                    tk.seen_at = now
                    tk.new = rec["to"] if rec is not None else view.get("active")
                    if rec is not None:
                        tk.granted_at = float(rec["at"])
                        tk.waited_s = rec.get("waited_s")
                    return
            await asyncio.sleep(0.02)
        self.events.append(f"fault #{f.fid} ({f.kind} {f.target}): no new active forwarder "
                           f"{TAKEOVER_TIMEOUT_S:.0f}s after it: {self.pair_view}")

    async def _realign(self, tk: Takeover) -> None:
        """Match the flow monitors' replies kept aside since the fault once the requests
        the takeover lost can no longer be answered: ``REALIGN_AFTER_S`` after the new
        active, and after any failure of a replayed flow monitor then open (its replay
        answers requests late, not never)."""
        await asyncio.sleep(max(0.0, (tk.seen_at or time.time()) + REALIGN_AFTER_S
                                - time.time()))
        waiting = [s.iid for s in SERVICE if s.replay and s.kind == "flowmon"]
        deadline = time.monotonic() + REALIGN_WAIT_MAX_S
        while any(self._open_hit(i) is not None for i in waiting) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if any(time.time() - self.last_closed.get(i, 0.0) < REALIGN_AFTER_S for i in waiting):
            await asyncio.sleep(REALIGN_AFTER_S)
        cut = time.time() - REALIGN_CUT_S
        tk.realigned_lost = sum(fl.realign_acks(cut) for fl in self.flows.values()
                                if fl.holding)
        tk.realigned_at = time.time()

    async def _restore_ingress(self, f: Fault) -> None:
        """Power the crashed ingress host on again after a random repair time."""
        assert f.takeover is not None
        await asyncio.sleep(max(0.0, f.injected + self._repair_delay(f.kind) - time.time()))
        try:
            await asyncio.wait_for(self.tb.restore_ingress_host(f.target), TESTBED_TIMEOUT)
        except Exception as exc:  # reported; the pair stays broken and takes no more faults
            f.repair_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.events.append(f"fault #{f.fid}: powering {f.target} on failed: "
                               f"{f.repair_error}")
        f.takeover.restored_at = time.time()

    def _track(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.repair_tasks.add(task)
        task.add_done_callback(self.repair_tasks.discard)

    def _repair_delay(self, kind: str) -> float:
        """How long a crashed host stays off (a host or an ingress host), or a partition
        lasts."""
        if kind == "partition":
            return min(HEAL_MAX_S, max(HEAL_MIN_S, self.rng.expovariate(1 / HEAL_MEAN_S)))
        return min(REPAIR_MAX_S, max(REPAIR_MIN_S, self.rng.expovariate(1 / REPAIR_MEAN_S)))

    async def _repair(self, f: Fault) -> None:
        """Power the crashed host on again, or heal the partition, after a random time."""
        h = f.target
        await asyncio.sleep(self._repair_delay(f.kind))
        try:
            if f.kind == "host-crash":
                await asyncio.wait_for(self.tb.revive_host(h), TESTBED_TIMEOUT)
                host = self.tb.hosts[h]
                info = json.loads(run_ip("-n", host.netns, "-j", "link", "show", "br0"))
                run_ip("-n", host.netns, "link", "set", "dev", "br0", "address",
                       info[0]["address"])
            else:
                await self.tb.partition_host(h, cut=False)
        except Exception as exc:  # reported; the host stays out of the pool
            f.repair_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.events.append(f"fault #{f.fid}: repairing {h} failed: {f.repair_error}")
            f.repaired = time.time()
            return
        f.repaired = time.time()
        kind, t0, _ = self.host_down.pop(h)
        self.host_periods.append({"host": h, "kind": kind, "start": t0, "end": f.repaired})

    def draw_param(self, kind: str) -> float | None:
        """What a fault is besides its target, drawn at its arrival: a stall's length."""
        return self.rng.uniform(STALL_MIN_S, STALL_MAX_S) if kind == "agent-stall" else None

    async def schedule(self) -> None:
        """Poisson arrivals per fault type (each type's count spread over the duration);
        each arrival is injected as soon as a fair target exists (the wait is recorded)."""
        arrivals = fault_arrivals(self.counts, self.duration, self.rng)
        kinds_on = list(arrivals)
        now = time.time()
        self.phase_start = now
        arrived = dict.fromkeys(kinds_on, 0)
        # per type: [arrival, target, when the target was drawn, param], oldest first
        pending: dict[str, deque[list[Any]]] = {k: deque() for k in kinds_on}
        injected = dict.fromkeys(kinds_on, 0)
        last_line = 0.0
        while any(injected[k] < self.counts[k] for k in kinds_on):
            now = time.time()
            if now - self.phase_start > self.max_phase:
                self.stop_reason = (f"injection phase capped at {self.max_phase:.0f}s: "
                                    f"injected {injected}")
                progress(self.stop_reason)
                break
            for k in kinds_on:
                while arrived[k] < len(arrivals[k]) \
                        and self.phase_start + arrivals[k][arrived[k]] <= now:
                    t = self.phase_start + arrivals[k][arrived[k]]
                    arrived[k] += 1
                    pending[k].append([t, self.draw_target(k), now, self.draw_param(k)])
            kinds = [k for k in kinds_on if pending[k]]
            self.rng.shuffle(kinds)
            for k in kinds:
                head = pending[k][0]
                if now - head[2] > self.target_wait:  # not ready for long: draw another one
                    head[1], head[2] = self.draw_target(k), now
                    self.redraws[k] = self.redraws.get(k, 0) + 1
                try:
                    f = await self.inject(k, head[0], head[1], head[3])
                except BenchError as exc:  # the manager slow to answer: not injected
                    self.events.append(f"{time.strftime('%H:%M:%S')} {k} not injected: {exc}")
                    f = None
                if f is not None:
                    pending[k].popleft()
                    injected[k] += 1
            if now - last_line > 30:
                last_line = now
                progress(f"{now - self.phase_start:5.0f}s: injected {injected}; open "
                         f"{sum(1 for f in self.faults if f.open)}; load1 "
                         f"{os.getloadavg()[0]:.2f}")
            await asyncio.sleep(0.02)
        self.phase_end = time.time()

    async def drain(self) -> None:
        deadline = time.monotonic() + self.drain_timeout
        while any(f.open for f in self.faults) or self.repair_tasks:
            if time.monotonic() > deadline:
                self.events.append(f"drain: {sum(1 for f in self.faults if f.open)} "
                                   f"failures still open {self.drain_timeout:.0f}s after the "
                                   "last injection")
                break
            await asyncio.sleep(0.1)
        # every VNF measured after its last failure
        end = time.monotonic() + 5
        while time.monotonic() < end and not all(
                self.flows[s.flow].last_sample_sent() > self.last_closed.get(s.iid, 0)
                for s in SERVICE):
            await asyncio.sleep(0.1)

    # -- the end -----------------------------------------------------------------------

    async def final_checks(self) -> None:
        """Quiesce the traffic, then compare the manager's view, the copies that run, the
        agents' view and every VNF's state with what the client sent."""
        assert self.watcher is not None and self.prober is not None
        await asyncio.sleep(0.5)
        for fl in self.flows.values():
            fl.paused.set()
        await asyncio.sleep(1.5)  # in flight, replays and held traffic delivered
        deadline = time.monotonic() + FINAL_TIMEOUT_S
        tries = 0
        while True:
            tries += 1
            out = await self._final_once()
            if out["all_ok"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)  # e.g. a recovery nobody asked for is still running
        out["tries"] = tries
        self.final = out
        self._remember_ops(await self.call("GET", "/vnflcm/v1/vnf_lcm_op_occs"))

    def _remember_ops(self, ops: list[dict[str, Any]]) -> None:
        """Keep the newest copy of every HEAL, and ``ops`` as all of them in start order."""
        for o in ops:
            if o["operation"] == "HEAL":
                self.ops_seen[o["id"]] = o
        self.ops = sorted(self.ops_seen.values(), key=lambda o: str(o.get("startTime")))

    async def _final_once(self) -> dict[str, Any]:
        assert self.watcher is not None and self.prober is not None
        out: dict[str, Any] = {"vnfs": {}}
        vnfs = {v["id"]: v for v in await self.call("GET", "/vnflcm/v1/vnf_instances")}
        hosts = {h["id"]: h for h in await self.call("GET", "/nfvha/v1/hosts")}
        snap = self.watcher.scan()
        now = time.time()
        for s in SERVICE:
            v = vnfs.get(s.iid, {})
            where = snap.get(s.iid, {})
            host = v.get("host")
            agent_states = {h: i["state"] for h, hv in hosts.items()
                            for i in hv.get("instances", []) if i["id"] == s.iid}
            answered = self.prober.last_reply(s.iid) > now - 1.0
            fl = self.flows[s.flow]
            j = fl.vnfs.index(s.iid)
            last = fl.samples[-1][2][j] if fl.samples else None
            counted = self._counted(s)
            one = list(where) == [host] and len(where.get(host, [])) == 1
            out["vnfs"][s.iid] = {
                "haState": v.get("haState"), "manager_host": host,
                "copies": {h: len(c) for h, c in where.items()},
                "agent_states": agent_states,
                "agent_running_on_manager_host": agent_states.get(host) in LIVE_AGENT_STATES,
                "answers": answered, "one_copy_where_manager_says": one,
                "ok": v.get("haState") == "ACTIVE" and one and answered
                and agent_states.get(host) in LIVE_AGENT_STATES,
                "final_deficit": last, "sent": len(fl.sent_t), "counted": counted,
            }
        out["hosts"] = {h: hv["state"] for h, hv in hosts.items()}
        out["all_ok"] = all(v["ok"] for v in out["vnfs"].values())
        if self.tb.paired:
            view = await self._read_pair()
            said = await self.tb.active_forwarder()
            out["pair"] = {"manager_active": view.get("active"), "forwarders_active": said,
                           "whole_in_sync": pair_in_sync(view) is not None,
                           "agree": said is not None and said == view.get("active"),
                           "term": view.get("term"),
                           "members": {m["id"]: m["role"] for m in view.get("members", [])}}
        return out

    def _counted(self, s: VnfSpec) -> int | None:
        """The VNF's own total of datagrams (STATS / TABLE), for the end-of-run check."""
        ip = vnf_ip(self.tb, s)
        req = b"STATS" if s.kind == "flowmon" else b"TABLE"
        for _ in range(3):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as q:
                q.settimeout(0.5)
                try:
                    q.sendto(req, (ip, s.query_port))
                    res = json.loads(q.recv(65535))
                except (OSError, ValueError):
                    continue
            if s.kind == "flowmon":
                return int(res.get("total_packets", 0))
            return sum(int(b["packets"]) for b in res.get("bindings", {}).values())
        return None

    async def run(self, warm_timeout: float) -> None:
        self.manager = AsyncManagerClient(
            self.tb.manager_urls, self.tb.operator_token, verify=self.tb.client_context(None),
            timeout=httpx.Timeout(HTTP_TIMEOUT, connect=3.0))
        self.daemons = httpx.AsyncClient(timeout=1.0, verify=self.tb.client_context(None))
        poller: asyncio.Task[None] | None = None
        operator: asyncio.Task[None] | None = None
        try:
            await self.deploy()
            progress("service deployed: " + ", ".join(
                f"{v['id']} on {v['host']} (backup {','.join(v['backups'])})"
                for v in await self.call("GET", "/vnflcm/v1/vnf_instances")))
            self.start_clients()
            poller = asyncio.create_task(self.poll())
            operator = asyncio.create_task(self.operator())
            await self.warm_up(warm_timeout)
            self.probe_start = time.time()
            for sp in SERVICE:
                self.deficit_at_start[sp.iid] = \
                    self.flows[sp.flow].deficit_before(sp.iid, self.probe_start)
            progress("warm: every VNF answers and has a replicated checkpoint; injecting")
            await self.schedule()
            progress(f"injection done in {self.phase_end - self.phase_start:.0f}s; draining")
            await self.drain()
            self.probe_end = time.time()
            await self.final_checks()
        finally:
            for task in (poller, operator):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            if not self.final:  # interrupted before the end: the operations are still wanted
                with contextlib.suppress(Exception):
                    ops = await asyncio.wait_for(
                        self.call("GET", "/vnflcm/v1/vnf_lcm_op_occs"), 20)
                    self._remember_ops(ops)
            for t in list(self.repair_tasks):
                t.cancel()
            if self.probe_end == 0.0:
                self.probe_end = time.time()
            self.stop_clients()
            await self.manager.aclose()
            await self.daemons.aclose()


async def _until_stopped(pid: int, timeout: float = 2.0) -> int:
    """Make a SIGSTOP take: a checkpoint's CRIU dump seizes the VNF and resumes it as it
    found it, swallowing a SIGSTOP sent meanwhile, and that "hang" never happened (the
    earlier campaigns counted such faults as hangs the manager never detected). Sent again
    every 100 ms until the task is stopped; returns how many times it was resent."""
    resent = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _ in range(10):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError) as exc:
                raise ProcessLookupError(pid) from exc
            if state == "T":  # "t" is CRIU's seize: it may still resume the task
                return resent
            await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGSTOP)
        resent += 1
    return resent


# -- analysis --------------------------------------------------------------------------------


def stats(values: Iterable[float | None]) -> dict[str, float]:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {"median": median(xs), "p95": percentile(xs, 95),
            "max": max(xs, default=math.nan), "mean": sum(xs) / len(xs) if xs else math.nan,
            "n": len(xs)}


def nines(unavailability: float) -> float | None:
    """-log10(1 - A); None when nothing was unavailable (no finite figure)."""
    return None if unavailability <= 0 else -math.log10(unavailability)


def _gaps(times: Sequence[float], lo: float, hi: float) -> list[tuple[float, float]]:
    return list(itertools.pairwise([lo, *(t for t in times if lo < t < hi), hi]))


def _merge(iv: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _total(iv: Iterable[tuple[float, float]], minus: Sequence[tuple[float, float]] = ()
           ) -> float:
    return sum(b - a - _overlap(a, b, minus) for a, b in iv)


def _overlap(a: float, b: float, iv: Sequence[tuple[float, float]]) -> float:
    """How much of (a, b) the (merged, sorted) intervals ``iv`` cover."""
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in iv if x < b and y > a)


def match_ops(c: Campaign) -> tuple[dict[tuple[int, str], list[dict[str, Any]]],
                                    list[dict[str, Any]]]:
    """HEAL op occurrences per (fault, VNF), by time; those that match none are returned
    apart (recoveries nobody asked for)."""
    by_vnf: dict[str, list[tuple[float, int]]] = {}
    for f in c.faults:
        for iid in f.hits:
            by_vnf.setdefault(iid, []).append((f.injected, f.fid))
    end_of: dict[tuple[int, str], float] = {}
    for f in c.faults:
        for iid, h in f.hits.items():
            end_of[(f.fid, iid)] = h.closed_at or math.inf
    matched: dict[tuple[int, str], list[dict[str, Any]]] = {}
    spare: list[dict[str, Any]] = []
    for op in sorted(c.ops, key=lambda o: o.get("nfvha", {}).get("detectedAt") or 0):
        iid = op["vnfInstanceId"]
        t = float(op.get("nfvha", {}).get("detectedAt") or 0)
        cands = [fid for t0, fid in by_vnf.get(iid, []) if t0 - 0.05 <= t <= end_of[(fid, iid)]]
        if cands:
            matched.setdefault((cands[-1], iid), []).append(op)
        else:
            spare.append(op)
    return matched, spare


def failure_samples(c: Campaign, matched: dict[tuple[int, str], list[dict[str, Any]]]
                    ) -> list[dict[str, Any]]:
    assert c.prober is not None
    out = []
    for f in c.faults:
        for iid, h in f.hits.items():
            spec = c.specs[iid]
            ops = matched.get((f.fid, iid), [])
            op = next((o for o in ops if o["operationState"] == "COMPLETED"), ops[0] if ops
                      else None)
            n = op.get("nfvha", {}) if op else {}
            ts = n.get("timestamps", {})
            s: dict[str, Any] = {
                "fault": f.fid, "type": f.kind, "vnf": iid, "replay": spec.replay,
                "t_s": f.injected - c.phase_start, "host": h.host,
                "concurrent": f.concurrent, "since_checkpoint_s": h.since_checkpoint_s,
                "stop_resent": h.stop_resent,
                "ops": len(ops), "op_state": op["operationState"] if op else None,
                "failure_type": n.get("failureType"), "strategy": n.get("strategy"),
                "target_host": n.get("targetHost"),
                "attempts": len([a for a in n.get("attempts", []) if "decidedAt" in a]),
                "replayed": (n.get("replay") or {}).get("replayed"),
                "recovered": h.closed_at is not None, "manager_failed": h.manager_failed,
                "operator_healed": h.operator_healed, "late": h.late, "across_takeover": False,
                "replay_across_takeover": bool((n.get("replay") or {}).get("acrossTakeover")),
                "lost_vnf": (h.closed_at is None or h.slow_reported or h.manager_failed
                             or h.operator_healed),
            }
            if ts.get("detected") is not None:
                s["detect_ms"] = (float(ts["detected"]) - f.injected) * 1000
            if ts.get("decided") is not None and ts.get("detected") is not None:
                s["decide_ms"] = (float(ts["decided"]) - float(ts["detected"])) * 1000
            if ts.get("restored") is not None and ts.get("decided") is not None:
                s["restore_ms"] = (float(ts["restored"]) - float(ts["decided"])) * 1000
            if ts.get("serving") is not None and ts.get("restored") is not None:
                s["redirect_ms"] = (float(ts["serving"]) - float(ts["restored"])) * 1000
                s["total_ms"] = (float(ts["serving"]) - f.injected) * 1000
            serving = float(ts["serving"]) if ts.get("serving") else (h.closed_at or c.probe_end)
            replies = c.prober.replies[iid]
            lo = bisect.bisect_left(replies, f.injected - 1.0)
            hi = bisect.bisect_right(replies, serving + 2.0)
            window = replies[lo:hi]
            outage = [g for g in _gaps(window, f.injected - 1.0, serving + 2.0)
                      if g[1] >= f.injected and g[0] <= serving]
            if outage:
                a, b = max(outage, key=lambda g: g[1] - g[0])
                s["downtime_ms"] = (b - a) * 1000
                s["client_stall_ms"] = _overlap(a, b, _merge(c.prober.stalls)) * 1000
                s["down_from_s"], s["down_to_s"] = a - c.phase_start, b - c.phase_start
                back = b
            else:
                back = h.closed_at or serving
            fl = c.flows[spec.flow]
            after, _ = fl.deficit_after(iid, back + STATE_SETTLE_S)
            s["window"] = (f.injected, back + STATE_SETTLE_S)  # wall; for loss_events
            s["deficit_before"], s["deficit_after"] = h.deficit_before, after
            if after is not None and h.deficit_before is not None:
                s["lost"] = after - h.deficit_before
                s["sent_while_down"] = fl.sent_between(f.injected, back)
                s["transient"] = fl.max_transient(iid, f.injected, back + STATE_SETTLE_S,
                                                  h.deficit_before)
            s["misclassified"] = (s["failure_type"] is not None
                                  and s["failure_type"] != EXPECTED_FAILURE_TYPE.get(f.kind))
            out.append(s)
    return out


def silence(replies: Sequence[float], t0: float, serving: float) -> tuple[float, float] | None:
    """The longest gap between ``replies`` (sorted arrival times) around a fault at
    ``t0`` that the client got replies again at ``serving`` or later: from 1 s before the
    fault to 3 s after ``serving``."""
    lo, hi = t0 - 1.0, serving + 3.0
    window = replies[bisect.bisect_left(replies, lo):bisect.bisect_right(replies, hi)]
    gaps = [g for g in _gaps(window, lo, hi) if g[1] >= t0 and g[0] <= serving]
    return max(gaps, key=lambda g: g[1] - g[0]) if gaps else None


def takeover_samples(c: Campaign) -> list[dict[str, Any]]:
    """Per forwarder fault: the time to a new active (the manager's grant, the campaign
    seeing it, the first ARP answer from another forwarder), the silence of each
    replayed flow's replies, and the pair whole again."""
    out = []
    upstream = c.tb.upstream_address if c.tb.paired else ""
    for f in c.faults:
        tk = f.takeover
        if tk is None:
            continue
        s: dict[str, Any] = {
            "fault": f.fid, "type": f.kind, "t_s": f.injected - c.phase_start, "old": tk.old,
            "new": tk.new, "concurrent": f.concurrent, "repair_error": f.repair_error,
            "grant_ms": None if tk.granted_at is None else (tk.granted_at - f.injected) * 1e3,
            "grant_waited_ms": None if tk.waited_s is None else float(tk.waited_s) * 1e3,
            "seen_ms": None if tk.seen_at is None else (tk.seen_at - f.injected) * 1e3,
            "restored_s": None if tk.restored_at is None else tk.restored_at - f.injected,
            "whole_again_s": None if tk.whole_at is None else tk.whole_at - f.injected,
            "realigned_lost_acks": tk.realigned_lost, "silence_ms": {}, "windows": {}}
        if c.arp is not None:
            new = first_new_owner(c.arp.seen.changes, upstream, f.injected, tk.old_macs)
            s["arp_ms"] = None if new is None else (new[0] - f.injected) * 1e3
            s["arp_owner"] = None if new is None else c.ingress_macs.get(new[1], new[1])
        serving = tk.seen_at or f.injected
        for name, fl in c.flows.items():
            if not fl.replay:
                continue
            g = silence(fl.reply_t, f.injected, serving)
            s["silence_ms"][name] = None if g is None else (g[1] - g[0]) * 1e3
            back = g[1] if g is not None else serving
            s["windows"][name] = (min(f.injected, g[0]) if g is not None else f.injected,
                                  back + STATE_SETTLE_S)
        out.append(s)
    return out


def deficit_changes(c: Campaign, limit: int = 20000) -> dict[str, list[list[float]]]:
    """Each VNF's deficit as its client read it, where it changed: [reply s, request sent
    s, deficit] from the start of the injection phase (the raw material of every loss
    figure, to look into one)."""
    out: dict[str, list[list[float]]] = {}
    for spec in SERVICE:
        fl = c.flows[spec.flow]
        j = fl.vnfs.index(spec.iid)
        rows: list[list[float]] = []
        last: int | None = None
        for now, sent, d in sorted(fl.samples):
            if d[j] != last:
                rows.append([round(now - c.phase_start, 3), round(sent - c.phase_start, 3),
                             d[j]])
                last = d[j]
        out[spec.iid] = rows[:limit]
    return out


def loss_events(c: Campaign, samples: list[dict[str, Any]], takeovers: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """The losses that replay cannot prevent, per replayed VNF, with why.

    *takeover*: a forwarder fault's window (from the silence of the flow's replies to
    ``STATE_SETTLE_S`` after they came back) merged with every window of the failures
    along the VNF's flow (and other takeovers) overlapping it: what the VNF's state
    lacks after it (the deficit it settled at, ``Flow.settled_deficit``, within
    ``SETTLED_WINDOW_S``) compared with before was in flight at the takeover, or logged
    but not mirrored before a failure during it. *replay across takeover*: a failure
    outside those whose HEAL says its replay started from a checkpoint older than a
    takeover (``acrossTakeover``). Marks the failures concerned (``across_takeover``),
    which the 0-lost-with-replay invariant then leaves out."""
    events: list[dict[str, Any]] = []
    for spec in SERVICE:
        if not spec.replay:
            continue
        fl = c.flows[spec.flow]
        # A failure anywhere along a chain moves the deficit of every VNF of it (what one
        # NAT replays, the next one receives again), so the flow's failures all count.
        iv: list[tuple[float, float, str, Any]] = []
        for t in takeovers:
            if spec.flow in t["windows"]:
                a, b = t["windows"][spec.flow]
                iv.append((a, b, "takeover", t))
        for x in samples:
            if x["vnf"] in fl.vnfs and x.get("window"):
                iv.append((x["window"][0], x["window"][1], "failure", x))
        groups: list[list[tuple[float, float, str, Any]]] = []
        end = -math.inf
        for item in sorted(iv, key=lambda i: i[0]):
            if groups and item[0] <= end:
                groups[-1].append(item)
                end = max(end, item[1])
            else:
                groups.append([item])
                end = item[1]
        for n, grp in enumerate(groups):
            tks = [i[3] for i in grp if i[2] == "takeover"]
            if not tks:
                continue
            a, b = min(i[0] for i in grp), max(i[1] for i in grp)
            before = fl.deficit_before(spec.iid, a)
            quiet_end = groups[n + 1][0][0] if n + 1 < len(groups) else c.probe_end
            after = fl.settled_deficit(spec.iid, b, min(b + SETTLED_WINDOW_S, quiet_end))
            if after is None:
                after, _ = fl.deficit_after(spec.iid, b)
            fails = [i[3] for i in grp if i[2] == "failure"]
            for x in fails:
                x["across_takeover"] = True
            lost = None if before is None or after is None else after - before
            why = "in flight at the takeover (on the wire, in the old active's sockets)"
            if fails:
                why += (f"; and a failure of {', '.join(sorted({x['vnf'] for x in fails}))} "
                        "during it, whose replay may miss what the old active logged last "
                        "without mirroring it")
            events.append({"kind": "takeover", "vnf": spec.iid,
                           "faults": [t["fault"] for t in tks],
                           "failures": [x["fault"] for x in fails],
                           "from_s": a - c.phase_start, "to_s": b - c.phase_start,
                           "lost": lost, "sent": fl.sent_between(a, b), "why": why})
            tks[0].setdefault("lost", {})[spec.iid] = lost
            for t in tks[1:]:
                t.setdefault("lost", {})[spec.iid] = None  # counted with the first
            for t in tks:
                t["with_failures"] = sorted({*t.get("with_failures", []),
                                             *(x["fault"] for x in fails)})
        for x in samples:
            if x["vnf"] == spec.iid and x.get("replay_across_takeover") \
                    and not x.get("across_takeover"):
                x["across_takeover"] = True
                events.append({"kind": "replay across takeover", "vnf": spec.iid,
                               "faults": [], "failures": [x["fault"]],
                               "from_s": x["t_s"], "to_s": None, "lost": x.get("lost"),
                               "sent": x.get("sent_while_down"),
                               "why": "restored from a checkpoint taken before a takeover, "
                                      "none since: the replay may miss what the old active "
                                      "logged last without mirroring it"})
    return events


def availability(c: Campaign, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Fraction of the probing time each VNF (and all of them: the service) answered."""
    assert c.prober is not None
    lo, hi = c.probe_start, c.probe_end
    span = max(1e-9, hi - lo)
    windows: dict[str, list[tuple[float, float]]] = {}
    for f in c.faults:
        for iid, h in f.hits.items():
            end = (h.closed_at or hi) + 0.5
            windows.setdefault(iid, []).append((f.injected, end))
    per: dict[str, Any] = {}
    all_down: list[tuple[float, float]] = []
    fail_down: list[tuple[float, float]] = []
    stalls = _merge(c.prober.stalls)
    for s in SERVICE:
        gaps = [(a, b) for a, b in _gaps(c.prober.replies[s.iid], lo, hi)
                if (b - a - _overlap(a, b, stalls)) * 1000 > DOWN_GAP_MS]
        wins = windows.get(s.iid, [])
        in_fail = [g for g in gaps if any(g[0] < w1 and g[1] > w0 for w0, w1 in wins)]
        down, fdown = _total(gaps, stalls), _total(in_fail, stalls)
        all_down += gaps
        fail_down += in_fail
        per[s.iid] = _avail(down, fdown, span, len(gaps), len(in_fail))
    sd, sf = _merge(all_down), _merge(fail_down)
    service = _avail(_total(sd, stalls), _total(sf, stalls), span, len(sd), len(sf))
    return {"probe_s": span, "down_gap_ms": DOWN_GAP_MS, "probe_period_ms": PROBE_PERIOD * 1e3,
            "client_stalls": len(stalls),
            "client_stalled_s": _total([(max(a, lo), min(b, hi)) for a, b in stalls
                                        if b > lo and a < hi]),
            "service": service, "per_vnf": per}


def _avail(down: float, fdown: float, span: float, n: int, nf: int) -> dict[str, Any]:
    return {"available": 1 - down / span, "nines": nines(down / span), "down_s": down,
            "outages": n, "down_in_failures_s": fdown, "outages_in_failures": nf,
            "down_other_s": down - fdown,
            "available_failures_only": 1 - fdown / span, "nines_failures_only": nines(fdown / span)}


def extrapolate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    mean_down = {k: stats(s.get("downtime_ms") for s in samples if s["type"] == k)["mean"]
                 for k in FAULT_TYPES}
    out: dict[str, Any] = {
        "method": "expected downtime per VNF per year = sum over fault types of (rate per "
                  "year) x (mean client downtime per VNF failure of that type, measured); a "
                  "host fault hits a VNF at its host's rate. Service: sum over its "
                  f"{len(SERVICE)} VNFs (an upper bound: one host fault downs several VNFs at "
                  "once).",
        "mean_downtime_ms": mean_down, "scenarios": []}
    for name, text, rates in RATE_SCENARIOS:
        per_vnf = sum(r * (mean_down[k] if not math.isnan(mean_down[k]) else 0.0) / 1000
                      for k, r in rates.items())
        u = per_vnf / YEAR_S
        su = min(1.0, u * len(SERVICE))
        out["scenarios"].append({
            "name": name, "assumption": text, "rates_per_year": rates,
            "downtime_s_per_vnf_year": per_vnf, "vnf_availability": 1 - u,
            "vnf_nines": nines(u), "service_downtime_s_per_year": per_vnf * len(SERVICE),
            "service_availability": 1 - su, "service_nines": nines(su)})
    return out


def _agent_figures(fs: list[Fault], ss: list[dict[str, Any]]) -> dict[str, Any]:
    expect = [f.expect for f in fs if f.expect is not None]
    return {
        "back_s": stats(f.repaired - f.injected for f in fs if f.repaired is not None),
        "not_back": sum(1 for f in fs if f.repair_error),
        "stall_s": stats(f.stall_s for f in fs),
        "expected": {e: expect.count(e) for e in ("none", "either", "fence")},
        "fenced_faults": sum(1 for f in fs if f.hits),
        "fenced_either": sum(1 for f in fs if f.expect == "either" and f.hits),
        "vnf_failures_recovered": sum(1 for s in ss if not s["lost_vnf"]),
    }


def _forwarder_figures(ts: list[dict[str, Any]]) -> dict[str, Any]:
    flows = sorted({name for t in ts for name in t["silence_ms"]})
    vnfs = sorted({v for t in ts for v in t.get("lost", {})})
    return {
        "takeovers": sum(1 for t in ts if t["new"] is not None),
        "no_new_active": sum(1 for t in ts if t["new"] is None),
        **{m: stats(t.get(m) for t in ts)
           for m in ("grant_ms", "grant_waited_ms", "seen_ms", "arp_ms", "whole_again_s")},
        "silence_ms": {name: stats(t["silence_ms"].get(name) for t in ts) for name in flows},
        "lost_in_flight": {v: sum(t["lost"].get(v) or 0 for t in ts if "lost" in t)
                           for v in vnfs},
        "lost_in_flight_max": {v: max((t["lost"].get(v) or 0 for t in ts if "lost" in t),
                                      default=0) for v in vnfs},
        "repair_errors": sum(1 for t in ts if t["repair_error"]),
        "with_vnf_failures": sum(1 for t in ts if t.get("with_failures")),
    }


def _near(c: Campaign, t: float) -> list[str]:
    """Agent and forwarder faults under way around ``t`` (from 1 s before their
    injection to 5 s after their repair), for a recovery nobody asked for."""
    return [f"#{f.fid} {f.kind} {f.target} at {f.injected - c.phase_start:.1f}s"
            for f in c.faults if f.kind not in VNF_FAULTS + HOST_FAULTS
            and f.injected - 1.0 <= t <= (f.repaired or math.inf) + 5.0]


def summarize(c: Campaign, samples: list[dict[str, Any]], spare: list[dict[str, Any]],
              takeovers: list[dict[str, Any]], unavoidable: list[dict[str, Any]]
              ) -> dict[str, Any]:
    assert c.watcher is not None
    by_type: dict[str, Any] = {}
    for k in FAULT_TYPES:
        fs = [f for f in c.faults if f.kind == k]
        ss = [s for s in samples if s["type"] == k]
        strategies: dict[str, int] = {}
        for s in ss:
            strategies[str(s["strategy"])] = strategies.get(str(s["strategy"]), 0) + 1
        measured = [s for s in ss if s["replay"] and s.get("lost") is not None]
        rep = [s for s in measured if not s["across_takeover"]]
        across = [s for s in measured if s["across_takeover"]]
        direct = [s for s in ss if not s["replay"] and s.get("lost") is not None]
        by_type[k] = {
            "label": FAULT_LABEL[k], "faults": len(fs), "vnf_failures": len(ss),
            "recovered": sum(1 for s in ss if not s["lost_vnf"]),
            "lost_vnf": sum(1 for s in ss if s["lost_vnf"]),
            "strategies": strategies,
            "fallbacks": sum(1 for s in ss if s["attempts"] > 1),
            "misclassified": sum(1 for s in ss if s["misclassified"]),
            "overlapping": sum(1 for f in fs if f.concurrent > 0),
            "injection_wait_s": stats(f.injected - f.arrival for f in fs),
            "target_redraws": c.redraws.get(k, 0),
            **{m: stats(s.get(m) for s in ss)
               for m in ("downtime_ms", "detect_ms", "decide_ms", "restore_ms", "redirect_ms",
                         "total_ms")},
            "lost_replay": {"failures": len(rep), "total": sum(s["lost"] for s in rep),
                            "nonzero": sum(1 for s in rep if s["lost"] != 0),
                            "transient_nonzero": sum(1 for s in rep if s.get("transient")),
                            "transient_max": max((s.get("transient") or 0 for s in rep),
                                                 default=0)},
            # Failures during a takeover: their losses are unavoidable (``loss_events``).
            "lost_replay_across_takeover": {"failures": len(across),
                                            "total": sum(s["lost"] for s in across)},
            "lost_direct": stats(s["lost"] for s in direct),
            "sent_while_down_direct": stats(s["sent_while_down"] for s in direct),
        }
        if k in AGENT_FAULTS:
            by_type[k]["agent"] = _agent_figures(fs, ss)
        if k in FORWARDER_FAULTS:
            by_type[k]["forwarder"] = _forwarder_figures([t for t in takeovers
                                                          if t["type"] == k])
    two = c.watcher.violations
    lost = [s for s in samples if s["lost_vnf"]]
    failed_ops = [s for s in samples if s["manager_failed"]]
    final = c.final.get("vnfs", {})
    state: dict[str, Any] = {}
    for s in SERVICE:
        fl = c.flows[s.flow]
        fv = final.get(s.iid, {})
        start, end = c.deficit_at_start.get(s.iid), fv.get("final_deficit")
        over = None if start is None or end is None else end - start
        unavoid = sum(e["lost"] or 0 for e in unavoidable if e["vnf"] == s.iid)
        state[s.iid] = {"replay": s.replay, "sent": len(fl.sent_t),
                        "deficit_at_start": start, "final_deficit": end,
                        "lost_over_run": over,
                        "counted_by_vnf": fv.get("counted"),
                        "duplicate_replies": fl.duplicates, "unmatched_replies": fl.unmatched,
                        "lost_in_failures": sum(x.get("lost") or 0 for x in samples
                                                if x["vnf"] == s.iid),
                        "lost_unavoidable": unavoid,
                        "lost_beyond_unavoidable": None if over is None else over - unavoid}
    gaps = c.watcher.scan_gaps
    arp = c.arp.seen if c.arp is not None else None
    asked = {k: n for k, n in c.counts.items() if n > 0}
    faults = {k: by_type[k]["faults"] for k in FAULT_TYPES}
    return {
        "faults": faults,
        "fault_targets": c.counts,
        "failures_per_type_target": min(asked.values(), default=0),
        "targets_reached": all(faults[k] >= n for k, n in asked.items()),
        "vnf_failures": len(samples),
        "injection_phase_s": c.phase_end - c.phase_start,
        "probe_s": c.probe_end - c.probe_start,
        "by_type": by_type,
        "availability": availability(c, samples),
        "extrapolation": extrapolate(samples),
        "state": state,
        "unavoidable_loss": {
            "events": len(unavoidable),
            "total": {v: sum(e["lost"] or 0 for e in unavoidable if e["vnf"] == v)
                      for v in sorted({e["vnf"] for e in unavoidable})},
            "details": [{k: _round(v) for k, v in e.items()} for e in unavoidable[:60]]},
        "invariants": {
            "two_live_copies": {"count": len(two),
                                "max_duration_ms": max((v["duration_ms"] for v in two),
                                                       default=0.0),
                                "details": two[:20]},
            "two_forwarder_owners": {
                "count": len(arp.violations) if arp else 0,
                "watched": arp is not None, "rounds": arp.rounds if arp else 0,
                "period_ms": ARP_PERIOD * 1e3,
                "addresses": arp.addresses if arp else [],
                "rounds_unanswered": dict(arp.unanswered) if arp else {},
                "details": [{**v, "start_s": v["start"] - c.phase_start,
                             "owners": [c.ingress_macs.get(m, m) for m in v["macs"]]}
                            for v in (arp.violations if arp else [])[:20]]},
            "vnf_lost": {"count": len(lost) + sum(1 for v in final.values() if not v.get("ok")),
                         "unrecovered_failures": [{k: s.get(k) for k in
                                                   ("fault", "type", "vnf", "t_s", "ops",
                                                    "op_state", "recovered", "manager_failed",
                                                    "operator_healed")} for s in lost[:20]],
                         "final_not_ok": [k for k, v in final.items() if not v.get("ok")]},
            "manager_gave_up": len(failed_ops),
            "view_mismatch": {"count": sum(1 for m in c.mismatches if m["confirmed"]),
                              "transient": sum(1 for m in c.mismatches if not m["confirmed"]),
                              "details": [{**m, "start_s": m["start"] - c.phase_start,
                                           "duration_s": (m["end"] or c.probe_end)
                                           - m["start"]}
                                          for m in c.mismatches if m["confirmed"]][:20]},
            "operator_heals": {"count": len(c.operator_heals),
                               "vnfs": sorted({h["vnf"] for h in c.operator_heals})},
            "final_check": c.final,
            "unexpected_recoveries": {
                "count": len(spare),
                "details": [{"vnf": o["vnfInstanceId"],
                             "t_s": float(o.get("nfvha", {}).get("detectedAt") or 0)
                             - c.phase_start,
                             "failureType": o.get("nfvha", {}).get("failureType"),
                             "detail": o.get("nfvha", {}).get("detail"),
                             "strategy": o.get("nfvha", {}).get("strategy"),
                             "state": o["operationState"],
                             "near": _near(c, float(o.get("nfvha", {}).get("detectedAt")
                                                    or 0))} for o in spare[:30]]},
            "watcher": {"scans": c.watcher.scans, "period_ms": WATCH_PERIOD * 1e3,
                        "scan_interval_ms_p50": percentile(gaps, 50) * 1e3,
                        "scan_interval_ms_p99": percentile(gaps, 99) * 1e3,
                        "scan_interval_ms_max": c.watcher.max_gap * 1e3},
        },
        "host_down_periods": len(c.host_periods),
    }


SAMPLE_COLUMNS = ("fault", "type", "vnf", "replay", "t_s", "host", "target_host", "strategy",
                  "failure_type", "op_state", "ops", "attempts", "concurrent", "detect_ms",
                  "decide_ms", "restore_ms", "redirect_ms", "total_ms", "downtime_ms",
                  "down_from_s", "down_to_s", "since_checkpoint_s", "lost", "sent_while_down",
                  "transient", "replayed", "recovered", "lost_vnf", "client_stall_ms")


def _round(v: Any) -> Any:
    return round(v, 2) if isinstance(v, float) and math.isfinite(v) else v


def compact(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"columns": list(SAMPLE_COLUMNS),
            "rows": [[_round(s.get(k)) for k in SAMPLE_COLUMNS] for s in samples]}


def evaluate_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    inv = summary["invariants"]
    lost_rep = sum(v["lost_replay"]["total"] for v in summary["by_type"].values())
    # Over the run, less what takeovers lost in flight (reported apart: unavoidable).
    final_rep = sum(abs(v["lost_beyond_unavoidable"] or 0) for v in summary["state"].values()
                    if v["replay"])
    asked = {k: n for k, n in summary["fault_targets"].items() if n > 0}
    owners = inv["two_forwarder_owners"]
    unexpected = inv["unexpected_recoveries"]["count"]
    return [
        {"target": "every fault type injected as often as asked ("
                   + ", ".join(f"{k} {n}" for k, n in asked.items()) + ")",
         "value": min((summary["faults"][k] for k in asked), default=0),
         "unit": "faults (fewest of a type)", "pass": summary["targets_reached"]},
        {"target": "never two live copies of a VNF", "value": inv["two_live_copies"]["count"],
         "unit": "violations", "pass": inv["two_live_copies"]["count"] == 0},
        {"target": "never two forwarders owning an address (ARP, every "
                   f"{owners['period_ms']:.0f} ms)", "value": owners["count"],
         "unit": f"violations in {owners['rounds']} rounds",
         "pass": owners["count"] == 0 and (owners["rounds"] > 0 or not owners["watched"])},
        {"target": "no VNF lost (every failure recovered, all ACTIVE on one host at the end)",
         "value": inv["vnf_lost"]["count"], "unit": "violations",
         "pass": inv["vnf_lost"]["count"] == 0},
        {"target": "the manager's view matches what runs", "value":
            inv["view_mismatch"]["count"] + (0 if inv["final_check"].get("all_ok") else 1),
         "unit": "mismatches", "pass": inv["view_mismatch"]["count"] == 0
            and bool(inv["final_check"].get("all_ok"))},
        {"target": "no state lost with replay (VNF failures; takeovers' losses in flight "
                   "reported apart)", "value": lost_rep + final_rep,
         "unit": "datagrams", "pass": lost_rep == 0 and final_rep == 0},
        {"target": "no recovery without a fault that may cause one", "value": unexpected,
         "unit": "recoveries", "pass": unexpected == 0},
    ]


def anomalies(c: Campaign, result: dict[str, Any], samples: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    m = result["machine"]
    if m["other_netns_at_start"]:
        out.append(f"{len(m['other_netns_at_start'])} other network namespaces existed at start "
                   f"({', '.join(m['other_netns_at_start'][:6])}): other testbeds may have "
                   f"shared the CPUs; load1 at start {m['loadavg_at_start'][0]:.2f}, at end "
                   f"{m['loadavg_at_end'][0]:.2f}, max during the run "
                   f"{max((x[1] for x in c.loadavg), default=math.nan):.2f}")
    if m["source_digest_at_start"] != m["source_digest_at_end"]:
        out.append("nfvha's sources changed during the run (digest "
                   f"{m['source_digest_at_start']} -> {m['source_digest_at_end']}); revived "
                   "hosts' agents ran the new code")
    if c.stop_reason:
        out.append(c.stop_reason)
    out += c.events[:40]
    for s in samples:
        tag = f"fault #{s['fault']} {s['type']} → {s['vnf']}"
        if s["misclassified"]:
            out.append(f"{tag}: the manager saw {s['failure_type']}")
        if s["ops"] > 1:
            out.append(f"{tag}: {s['ops']} HEAL operations for one failure")
        if s["op_state"] not in (None, "COMPLETED"):
            out.append(f"{tag}: HEAL {s['op_state']}")
        if s["lost_vnf"]:
            out.append(f"{tag}: not serving again by itself within {HIT_SLOW_S:.0f}s "
                       f"(manager FAILED: {s['manager_failed']}, healed by hand: "
                       f"{s['operator_healed']}, HEAL operations: {s['ops']} {s['op_state']})")
        if s["replay"] and s.get("lost") and not s["across_takeover"]:
            out.append(f"{tag}: {s['lost']} datagram(s) lost despite replay")
    inv = result["summary"]["invariants"]
    for v in inv["two_live_copies"]["details"]:
        out.append(f"two live copies of {v['vnf']} for {v['duration_ms']:.0f} ms at "
                   f"{v['start'] - c.phase_start:.1f}s: {v['copies']}")
    for u in inv["unexpected_recoveries"]["details"]:
        near = f"; under way then: {', '.join(u['near'])}" if u.get("near") else ""
        out.append(f"recovery of {u['vnf']} at {u['t_s']:.1f}s without an injected fault that "
                   f"may cause one: {u['failureType']}: {u['detail']} ({u['strategy']}, "
                   f"{u['state']}){near}")
    for v in inv["two_forwarder_owners"]["details"]:
        out.append(f"two forwarders answered ARP for {v['address']} in {v['rounds']} round(s) "
                   f"from {v['start_s']:.2f}s: {', '.join(v['owners'])}")
    for t in result.get("takeovers", []):
        tag = f"fault #{t['fault']} {t['type']} of {t['old']}"
        if t["new"] is None:
            out.append(f"{tag}: no new active forwarder")
        if t.get("arp_ms") is None and c.arp is not None:
            out.append(f"{tag}: no other forwarder answered ARP for the upstream address")
        if t["whole_again_s"] is None:
            out.append(f"{tag}: the pair never whole and in sync again")
    pair = c.final.get("pair")
    if pair is not None and not (pair["whole_in_sync"] and pair["agree"]):
        out.append(f"end of run: the forwarder pair not whole, in sync and agreed: {pair}")
    for mm in inv["view_mismatch"]["details"]:
        out.append(f"manager's view of {mm['vnf']} differs from what runs from "
                   f"{mm['start_s']:.1f}s for {mm['duration_s']:.1f}s: manager host "
                   f"{mm['first']['manager_host']}, live copies (pids) {mm['first']['copies']}")
    for k, v in c.final.get("vnfs", {}).items():
        if not v["ok"]:
            out.append(f"end of run: {k} not OK: {v}")
    return out


# -- machine, logs ---------------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    return testbed_machine(TB_NAME)


def log_summary(tb: Testbed, keep: Path | None) -> dict[str, Any]:
    """Counts of WARNING/ERROR lines per daemon log and the first ERROR lines; the logs
    themselves go with the testbed unless ``keep`` names a directory to copy them to."""
    out: dict[str, Any] = {"warnings": {}, "errors": {}, "first_errors": []}
    for p in sorted(tb.log_dir.glob("*.log")):
        with contextlib.suppress(OSError):
            lines = p.read_text(errors="replace").splitlines()
            out["warnings"][p.stem] = sum(1 for ln in lines if " WARNING " in ln)
            errs = [ln for ln in lines if " ERROR " in ln]
            out["errors"][p.stem] = len(errs)
            out["first_errors"] += [f"{p.stem}: {ln[:300]}" for ln in errs[:5]]
    if keep is not None:
        with contextlib.suppress(OSError):
            if keep.exists():
                shutil.rmtree(keep)
            shutil.copytree(tb.log_dir, keep)
    return out


# -- output ----------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x * 100:.4f} %"


def _n(x: float | None) -> str:
    return "∞ (no downtime)" if x is None else f"{x:.2f}"


def markdown(result: dict[str, Any]) -> str:
    m, c, sm = result["machine"], result["config"], result["summary"]
    version = m["criu_version"].split(";")[0].replace("Version:", "").strip()
    la = m.get("loadavg_during", [])
    lines = [
        "# Availability campaign: accelerated fault injection against a service of VNFs",
        "",
        f"{m['date']} · kernel {m['kernel']} · {m['os']} · {m['cpu_model']} × {m['nproc']} · "
        f"{m['memory_mib']} MiB RAM · CRIU {version} · {c['hosts']} emulated hosts, the "
        f"manager and a forwarder pair · {'quick' if c['quick'] else 'full'} run, "
        f"{_f(result['elapsed_s'])} s in all ({_f(sm['injection_phase_s'])} s of injection); "
        f"load1 at start {m['loadavg_at_start'][0]:.2f}, median during the run "
        f"{_f(median([x[1] for x in la]), 2)}, "
        f"max {_f(max((x[1] for x in la), default=math.nan), 2)}"
        f". Seed {c['seed']}.",
        "",
        f"*Service*: {len(SERVICE)} VNFs — " + "; ".join(
            f"`{k}` {v['kind']}{' with replay' if v['replay'] else ''}"
            f"{' (after ' + v['after'] + ')' if v['after'] else ''}"
            for k, v in c["vnfs"].items())
        + f". Checkpoints every {c['checkpoint_interval_s']} s; backups: "
        + ", ".join(f"`{k}` {v['backups']}" for k, v in c["vnfs"].items())
        + "; manager probe "
        f"{json.dumps(c['ha_probe'])}; detection timings: {c['daemon_timings']}. "
        f"Client: {c['traffic_hz']:.0f} datagrams/s per flow, "
        f"availability probe {1000 / c['probe_period_ms']:.0f} Hz per VNF.",
        "",
        f"*Faults*: Poisson arrivals per type (mean {c['mean_gap_s']:.1f} s apart), each on a "
        "target drawn uniformly at random and injected as soon as it is fair (a VNF whose last "
        "failure is over; for host faults, a host whose VNFs have a replica on another host "
        f"that is up with its agent, with at most {c['hosts'] - 2} hosts down or with their "
        "agent under a fault at once, agent faults included); a target not fair "
        f"within {c.get('target_wait_s', 0):.0f} s is drawn again. Crashed hosts are powered "
        f"on after {c['repair_s']['min']}–{c['repair_s']['max']} s (mean "
        f"{c['repair_s']['mean']}), partitions healed after {c['heal_s']['min']}–"
        f"{c['heal_s']['max']} s (mean {c['heal_s']['mean']}). Asked for: "
        + ", ".join(f"{FAULT_LABEL[k]} {n}" for k, n in c["faults"].items() if n) + ".",
        "",
        f"*Agent faults* hit a host whose agent is not already faulted; its VNFs are no "
        f"target meanwhile. A stall lasts {c['stall_s']['min']}–{c['stall_s']['max']} s "
        f"(uniform); the agent grace is {c['agent_grace_s']:g} s, fed every "
        f"{c['agent_feed_every_s']:g} s, so a stall of at least grace + "
        f"{c['stall_s']['tolerance']} s must fence the host's VNFs (they are its failures, "
        "and it is injected only where a host fault would be), one of at most grace − feed − "
        f"{c['stall_s']['tolerance']} s must recover nothing, and one between may do either "
        "(a recovery then is its own). A kill or a restart must recover nothing. "
        "*Forwarder faults* hit the active forwarder, one at a time, once the pair has been "
        f"whole and in sync (one active, one standby, both in sync) for "
        f"{c['forwarder_quiet_s']:.1f} s; a crashed ingress host is powered on after the "
        "host repair time.",
        "",
        "*Downtime* of a failure: the longest gap between probe replies of the failed VNF "
        "around it; phases from the HEAL operation occurrence (detect = detected − injected). "
        "*Lost*: datagrams of the client that the VNF's counters no longer include "
        f"{c['state_settle_s']} s after the recovery, compared with before (direct VNFs also "
        "lose what was sent while down); *lost, replay* gives the total, the failures with a "
        "loss, and those whose replies showed a transient deficit (datagrams delivered out of "
        "order right after the replay).",
        "",
        "| Fault | Faults | VNF failures | Recovered | Strategies | Downtime median | p95 | max "
        "| Detect | Decide | Restore | Redirect | Lost, replay (total) | Lost, direct (median) |",
        "|:---|---:|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in sm["by_type"].values():
        strat = ", ".join(f"{k} ×{n}" for k, n in v["strategies"].items()) or "–"
        lines.append(
            f"| {v['label']} | {v['faults']} | {v['vnf_failures']} | {v['recovered']} "
            f"| {strat} | **{_f(v['downtime_ms']['median'])}** | {_f(v['downtime_ms']['p95'])} "
            f"| {_f(v['downtime_ms']['max'])} | {_f(v['detect_ms']['median'])} "
            f"| {_f(v['decide_ms']['median'], 1)} | {_f(v['restore_ms']['median'])} "
            f"| {_f(v['redirect_ms']['median'])} | {v['lost_replay']['total']} "
            f"({v['lost_replay']['nonzero']} of {v['lost_replay']['failures']}; transient "
            f"{v['lost_replay']['transient_nonzero']}) "
            f"| {_f(v['lost_direct']['median'])} |")
    lines += _markdown_forwarders(result) + _markdown_agents(result)
    av = sm["availability"]
    lines += ["", f"**Availability** over {av['probe_s']:.0f} s of probing (unavailable: reply "
              f"gaps > {av['down_gap_ms']:.0f} ms, less the {av['client_stalled_s']:.1f} s in "
              f"{av['client_stalls']} moments when the probing client itself was starved of "
              "CPU; *failures only*: gaps overlapping an injected failure — the rest are "
              "checkpoint freezes, CPU stalls of the VNFs and recoveries nobody asked for):",
              "",
              "| | Available | Nines | Down s | Outages | Failures only | Nines | Other down s |",
              "|:---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in [("**service**", av["service"]), *av["per_vnf"].items()]:
        lines.append(f"| {name} | {_pct(v['available'])} | {_n(v['nines'])} "
                     f"| {v['down_s']:.2f} | {v['outages']} "
                     f"| {_pct(v['available_failures_only'])} | {_n(v['nines_failures_only'])} "
                     f"| {v['down_other_s']:.2f} |")
    ex = sm["extrapolation"]
    lines += ["", "**Extrapolated** to real-life failure rates: " + ex["method"], "",
              "| Assumption | Downtime per VNF per year | VNF availability | Nines "
              "| Service per year | Service availability | Nines |",
              "|:---|---:|---:|---:|---:|---:|---:|"]
    for s in ex["scenarios"]:
        lines.append(f"| {s['assumption']} | {s['downtime_s_per_vnf_year']:.1f} s "
                     f"| {_pct(s['vnf_availability'])} | {_n(s['vnf_nines'])} "
                     f"| {s['service_downtime_s_per_year']:.1f} s "
                     f"| {_pct(s['service_availability'])} | {_n(s['service_nines'])} |")
    inv = sm["invariants"]
    lines += ["", "**Invariants** (watched all along):", "",
              f"- two live copies of a VNF: **{inv['two_live_copies']['count']}** "
              f"(cgroups of every host scanned {inv['watcher']['scans']} times, every "
              f"{_f(inv['watcher']['scan_interval_ms_p50'], 1)} ms median, "
              f"{_f(inv['watcher']['scan_interval_ms_p99'], 1)} ms p99, longest "
              f"{_f(inv['watcher']['scan_interval_ms_max'])} ms)",
              f"- VNF lost (failure never recovered, or not ACTIVE/answering on exactly one "
              f"host at the end): **{inv['vnf_lost']['count']}**; manager gave up (FAILED): "
              f"{inv['manager_gave_up']}",
              f"- manager's view ≠ what runs (seen twice, 2 s apart): "
              f"**{inv['view_mismatch']['count']}** "
              f"(transient: {inv['view_mismatch']['transient']}); "
              f"end-of-run check {'OK' if inv['final_check'].get('all_ok') else 'FAILED'}",
              f"- two forwarders answering ARP for one address in one round: "
              f"**{inv['two_forwarder_owners']['count']}** ("
              f"{inv['two_forwarder_owners']['rounds']} rounds every "
              f"{inv['two_forwarder_owners']['period_ms']:.0f} ms for "
              f"{', '.join(inv['two_forwarder_owners']['addresses']) or 'nothing'})",
              f"- recoveries without an injected fault that may cause one (agent kills, "
              f"restarts and short stalls, forwarder faults may cause none): "
              f"**{inv['unexpected_recoveries']['count']}**; VNFs healed by hand after the "
              f"manager gave up: {inv['operator_heals']['count']} heal(s) of "
              f"{', '.join(inv['operator_heals']['vnfs']) or 'none'}", "",
              "**State at the end** (traffic stopped; deficit = sent − counted by the VNF):", "",
              "| VNF | Replay | Sent | Deficit at start | Final deficit | Lost over the run "
              "| Of which unavoidable (takeovers) | Beyond | VNF's own total "
              "| Lost in injected failures | Duplicate replies |",
              "|:---|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, v in sm["state"].items():
        lines.append(f"| {k} | {'yes' if v['replay'] else 'no'} | {v['sent']} "
                     f"| {v['deficit_at_start']} | {v['final_deficit']} | {v['lost_over_run']} "
                     f"| {v['lost_unavoidable']} | {v['lost_beyond_unavoidable']} "
                     f"| {v['counted_by_vnf']} | {v['lost_in_failures']} "
                     f"| {v['duplicate_replies']} |")
    lines += ["", "## Targets", ""]
    for t in result["targets"]:
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: {t['value']} "
                     f"{t['unit']}")
    lines += ["", "## Anomalies", ""]
    lines += [f"- {a}" for a in result["anomalies"][:60]] or ["- none"]
    if len(result["anomalies"]) > 60:
        lines.append(f"- … {len(result['anomalies']) - 60} more in the JSON")
    lines.append("")
    return "\n".join(lines)


def _median_max(st: dict[str, float]) -> str:
    return f"{_f(st['median'])} / {_f(st['max'])}"


def _markdown_forwarders(result: dict[str, Any]) -> list[str]:
    sm = result["summary"]
    rows = [(k, v["label"], v["faults"], v["forwarder"]) for k, v in sm["by_type"].items()
            if "forwarder" in v and v["faults"]]
    if not rows:
        return []
    flows = sorted({f for *_, x in rows for f in x["silence_ms"]})
    vnfs = sorted({v for *_, x in rows for v in x["lost_in_flight"]})
    out = ["", "**Forwarder faults** (the active one hit; ms after the fault, median / max): "
           "*grant* is when the manager granted the standby the active's place, *ARP* when "
           "another forwarder first answered ARP for the upstream address (a 20 ms round's "
           "start), *silence* the longest gap in a replayed flow's replies around the fault "
           "(`fmr`'s client gets a reply every tenth datagram: 100 ms resolution), *lost in "
           "flight* the datagrams the VNFs' state lacks after the takeover compared with "
           "before, total (largest of one fault): unavoidable, and not counted against "
           "replay below; *with a VNF failure*: faults during a failure of a replayed VNF, "
           "whose silence and loss include that failure's.", "",
           "| Fault | Faults | New active | Grant | ARP | "
           + " | ".join(f"Silence `{f}`" for f in flows) + " | "
           + " | ".join(f"Lost in flight `{v}`" for v in vnfs)
           + " | With a VNF failure | Pair whole again s |",
           "|:---|" + "---:|" * (4 + len(flows) + len(vnfs) + 2)]
    mm = _median_max
    for _k, label, n, x in rows:
        out.append(f"| {label} | {n} | {x['takeovers']} | {mm(x['grant_ms'])} "
                   f"| {mm(x['arp_ms'])} | "
                   + " | ".join(mm(x["silence_ms"][f]) if f in x["silence_ms"] else "–"
                                for f in flows) + " | "
                   + " | ".join(f"{x['lost_in_flight'].get(v, 0)} "
                                f"({x['lost_in_flight_max'].get(v, 0)})" for v in vnfs)
                   + f" | {x['with_vnf_failures']} | {_f(x['whole_again_s']['median'], 1)} |")
    un = sm["unavoidable_loss"]
    out += ["", f"Losses replay cannot prevent: {un['events']} event(s), "
            + (", ".join(f"`{v}` {n}" for v, n in un["total"].items()) or "none")
            + " datagrams; each with why in the JSON (`summary.unavoidable_loss`)."]
    return out


def _markdown_agents(result: dict[str, Any]) -> list[str]:
    sm = result["summary"]
    rows = [(v["label"], v["faults"], v["agent"], v) for v in sm["by_type"].values()
            if "agent" in v and v["faults"]]
    if not rows:
        return []
    out = ["", "**Agent faults**: how long until the agent answered again, and what the "
           "faults had to cause (stalls: none / either / fence, by their length against "
           "the grace) and caused.", "",
           "| Fault | Faults | Agent back median s | max | Stall s median | none / either / "
           "fence | Faults that fenced VNFs | Their VNF failures recovered |",
           "|:---|---:|---:|---:|---:|:---:|---:|---:|"]
    for label, n, a, v in rows:
        e = a["expected"]
        out.append(f"| {label} | {n} | {_f(a['back_s']['median'], 2)} "
                   f"| {_f(a['back_s']['max'], 2)} | {_f(a['stall_s']['median'], 2)} "
                   f"| {e['none']} / {e['either']} / {e['fence']} | {a['fenced_faults']} "
                   f"| {a['vnf_failures_recovered']} of {v['vnf_failures']} |")
    return out


def plot(result: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = result["samples"]["columns"]
    rows = [dict(zip(cols, r, strict=True)) for r in result["samples"]["rows"]]
    if not rows:
        return
    fig = plt.figure(figsize=(15, 9))
    gs = fig.add_gridspec(2, 2, height_ratios=[1, 1.1])
    ax1, ax2, ax3 = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, :])
    for k in FAULT_TYPES:
        xs = sorted(r["downtime_ms"] for r in rows if r["type"] == k and r["downtime_ms"])
        if xs:
            ax1.step([xs[0], *xs], [0.0, *((i + 1) / len(xs) for i in range(len(xs)))],
                     where="post", marker="." if len(xs) < 30 else None,
                     color=FAULT_COLOR[k], label=f"{FAULT_LABEL[k]} (n={len(xs)}, median "
                                                 f"{median(xs):.0f} ms)")
    ax1.set_xscale("log")
    ax1.set_xlabel("client downtime per VNF failure (ms, log)")
    ax1.set_ylabel("fraction of failures")
    ax1.set_title("Downtime seen by a 200 Hz probe, per fault type (CDF)", fontsize=9)
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7, loc="lower right")

    bt = result["summary"]["by_type"]
    keys = [k for k in FAULT_TYPES if bt[k]["vnf_failures"]]
    xs = list(range(len(keys)))
    bottom = [0.0] * len(keys)
    for name, metric, color in (("detect", "detect_ms", "tab:red"),
                                ("decide", "decide_ms", "tab:orange"),
                                ("restore (incl. fencing wait)", "restore_ms", "tab:green"),
                                ("redirect", "redirect_ms", "tab:purple")):
        vals = [max(0.0, bt[k][metric]["median"]) if not math.isnan(bt[k][metric]["median"])
                else 0.0 for k in keys]
        ax2.bar(xs, vals, bottom=bottom, color=color, label=name, alpha=0.85, width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    med = [bt[k]["downtime_ms"]["median"] for k in keys]
    p95 = [bt[k]["downtime_ms"]["p95"] for k in keys]
    ax2.plot(xs, med, "k_", markersize=28, mew=2, label="client downtime median")
    ax2.plot(xs, p95, "k_", markersize=18, mew=1, alpha=0.5, label="client downtime p95")
    ax2.set_xticks(xs, [FAULT_LABEL[k].replace(" (", "\n(") for k in keys], fontsize=8)
    ax2.set_ylabel("ms after the fault")
    ax2.set_title("Where the time goes (medians of the HEAL phases)", fontsize=9)
    ax2.legend(fontsize=7, loc="upper left")
    ax2.grid(True, axis="y", alpha=0.3)

    vnfs = list(result["config"]["vnfs"])
    hosts = sorted({(p.get("component", "host"), p["host"]) for p in result["host_periods"]})
    ylab = vnfs + hosts
    for r in rows:
        if r["down_from_s"] is None:
            continue
        y = vnfs.index(r["vnf"])
        ax3.broken_barh([(r["down_from_s"], max(0.05, r["down_to_s"] - r["down_from_s"]))],
                        (y - 0.35, 0.7), color=FAULT_COLOR[r["type"]])
    for p in result["host_periods"]:
        y = len(vnfs) + hosts.index((p.get("component", "host"), p["host"]))
        ax3.broken_barh([(p["start_s"], p["end_s"] - p["start_s"])], (y - 0.35, 0.7),
                        color=FAULT_COLOR[p["kind"]], alpha=0.5)
    ax3.set_yticks(range(len(ylab)), [f"VNF {v}" for v in vnfs]
                   + [f"{comp} {h} {'down' if comp == 'host' else 'faulted'}"
                      for comp, h in hosts])
    ax3.set_xlabel("s since the first fault")
    ax3.set_title("Timeline: client-visible outages per VNF (bar width at least 50 ms so that "
                  "it shows), host down periods, agents until they answer again, the "
                  "forwarder pair until whole again; colour = fault type", fontsize=9)
    ax3.grid(True, axis="x", alpha=0.3)
    handles = [matplotlib.patches.Patch(color=FAULT_COLOR[k], label=FAULT_LABEL[k])
               for k in FAULT_TYPES]
    ax3.legend(handles=handles, fontsize=7, loc="upper right", ncol=5)
    m, c, sm = result["machine"], result["config"], result["summary"]
    s = sm["availability"]["service"]
    fig.suptitle(f"nfvha availability campaign — {len(vnfs)} VNFs on {c['hosts']} emulated "
                 f"hosts, {sum(sm['faults'].values())} faults in "
                 f"{sm['injection_phase_s']:.0f} s; service available {_pct(s['available'])}"
                 f" ({_n(s['nines'])} nines); two live copies: "
                 f"{sm['invariants']['two_live_copies']['count']}, VNFs lost: "
                 f"{sm['invariants']['vnf_lost']['count']}; kernel {m['kernel']}, "
                 f"{m['nproc']} vCPU", fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths)


# -- main ------------------------------------------------------------------------------------


# Fault-detection timings: the daemons' defaults, or those the e2e tests use on this shared
# machine (an agent starved of CPU for longer than the fencing timeout fences its VNFs).
TIMINGS: dict[str, dict[str, list[str]]] = {
    "default": {"agent": [], "manager": []},
    "tolerant": {"agent": ["--fencing-timeout", "0.5"],
                 "manager": ["--suspect-after", "0.3", "--fencing-timeout", "0.5"]},
}
TIMINGS_TEXT = {"default": "heartbeat 50 ms, suspect after 150 ms, fencing timeout 250 ms "
                           "(the daemons' defaults)",
                "tolerant": "heartbeat 50 ms, suspect after 300 ms, fencing timeout 500 ms "
                            "(as the e2e tests on this machine)"}


def _testbed(timings: str) -> Testbed:
    return Testbed(name=TB_NAME, n_hosts=N_HOSTS, subnet=TB_SUBNET, state_dir=STATE_DIR,
                   with_manager=True, with_forwarder=True, forwarders=2,
                   agent_args=list(TIMINGS[timings]["agent"]),
                   manager_args=list(TIMINGS[timings]["manager"]))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_FAILURES} faults per type, the whole run a few minutes")
    ap.add_argument("--failures", type=int, default=None,
                    help=f"faults per type (default {DEFAULT_FAILURES}; "
                         f"{QUICK_FAILURES} with --quick)")
    ap.add_argument("--faults", default=None, metavar="TYPE=N,...",
                    help="faults of these types instead of --failures' number (0: none of "
                         f"that type); types: {', '.join(FAULT_TYPES)}")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds over which each type's arrivals are spread on average "
                         f"(default {DEFAULT_DURATION_S:.0f}, scaled to --failures; "
                         f"{QUICK_DURATION_S:.0f} with --quick)")
    ap.add_argument("--seed", type=int, default=None, help="RNG seed (default: from the clock)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--no-doc-img", action="store_true", help="do not copy the plot to docs/")
    ap.add_argument("--timings", choices=sorted(TIMINGS), default="default",
                    help="fault-detection timings: the daemons' defaults, or the e2e tests' "
                         "more tolerant ones for a loaded machine")
    ap.add_argument("--keep-logs", type=Path, default=None,
                    help="copy the daemons' logs to this directory before teardown")
    a = ap.parse_args(argv)
    failures = a.failures if a.failures is not None else \
        (QUICK_FAILURES if a.quick else DEFAULT_FAILURES)
    if failures < 0:
        ap.error("need --failures >= 0")
    try:
        counts = fault_counts(a.faults, failures)
    except ValueError as exc:
        ap.error(str(exc))
    if sum(counts.values()) < 1:
        ap.error("no fault to inject: give --failures or --faults a number above 0")
    most = max(counts.values())
    if a.duration is not None:
        duration = a.duration
    elif a.quick:
        duration = QUICK_DURATION_S
    else:
        duration = DEFAULT_DURATION_S * most / DEFAULT_FAILURES
    max_phase = QUICK_MAX_FAULT_PHASE_S if a.quick else max(MAX_FAULT_PHASE_S, 1.3 * duration)
    drain = QUICK_DRAIN_TIMEOUT_S if a.quick else DRAIN_TIMEOUT_S
    seed = a.seed if a.seed is not None else int(time.time()) % 100_000
    if os.geteuid() != 0:
        print("campaign: needs root (namespaces, cgroups, CRIU)", file=sys.stderr)
        return 2
    install_signal_handlers()
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "campaign",
        "machine": machine_description(),
        "config": {
            "quick": a.quick, "seed": seed, "failures_per_type": failures,
            "faults": counts, "mean_gap_s": duration / most, "duration_s": duration,
            "max_injection_phase_s": max_phase, "hosts": N_HOSTS,
            "max_hosts_down": N_HOSTS - 2, "forwarders": 2,
            "agent_grace_s": AGENT_GRACE_S, "agent_feed_every_s": AGENT_FEED_EVERY_S,
            "stall_s": {"min": STALL_MIN_S, "max": STALL_MAX_S,
                        "tolerance": STALL_TOLERANCE_S},
            "forwarder_quiet_s": FORWARDER_QUIET_S, "arp_period_ms": ARP_PERIOD * 1e3,
            "realign_after_s": REALIGN_AFTER_S,
            "vnfs": {s.iid: {"kind": s.kind, "replay": s.replay, "after": s.after,
                             "backups": s.backups,
                             "flow": s.flow, "recovery": {"process": list(s.process),
                                                          "host-loss": list(s.host_loss)}}
                     for s in SERVICE},
            "checkpoint_interval_s": CHECKPOINT_INTERVAL, "ha_probe": HA_PROBE,
            "timings": a.timings, "daemon_timings": TIMINGS_TEXT[a.timings],
            "daemon_args": TIMINGS[a.timings],
            "probe_period_ms": PROBE_PERIOD * 1e3, "traffic_hz": TRAFFIC_HZ,
            "ack_every": ACK_EVERY, "watch_period_ms": WATCH_PERIOD * 1e3,
            "down_gap_ms": DOWN_GAP_MS, "settle_after_s": SETTLE_AFTER_S,
            "state_settle_s": STATE_SETTLE_S, "operator_heal_every_s": OPERATOR_HEAL_EVERY_S,
            "target_wait_s": QUICK_TARGET_WAIT_S if a.quick else TARGET_WAIT_S,
            "repair_s": {"mean": REPAIR_MEAN_S, "min": REPAIR_MIN_S, "max": REPAIR_MAX_S},
            "heal_s": {"mean": HEAL_MEAN_S, "min": HEAL_MIN_S, "max": HEAL_MAX_S},
            "hit_slow_s": HIT_SLOW_S,
            "testbed": {"name": TB_NAME, "subnet": TB_SUBNET, "state_dir": str(STATE_DIR)},
        },
    }
    tb = _testbed(a.timings)
    camp = Campaign(tb, counts, duration, max_phase, drain, seed,
                    QUICK_TARGET_WAIT_S if a.quick else TARGET_WAIT_S)
    interrupted: BaseException | None = None
    logs: dict[str, Any] = {}
    try:
        with contextlib.suppress(Exception):
            asyncio.run(tb.down())  # leftovers of an interrupted run
        t0 = time.perf_counter()
        asyncio.run(tb.up(timeout=TESTBED_TIMEOUT))
        pin_bridge_macs(tb)
        progress(f"testbed up ({time.perf_counter() - t0:.1f}s)")
        asyncio.run(camp.run(warm_timeout=20.0 if a.quick else 40.0))
    except (KeyboardInterrupt, BenchError, Exception) as exc:
        interrupted = exc
        print(f"campaign: stopped: {exc!r}", file=sys.stderr)
    finally:
        with signals_ignored():
            with contextlib.suppress(Exception):
                logs = log_summary(tb, a.keep_logs)
            t0 = time.perf_counter()
            testbed_down(tb, "campaign")
            with contextlib.suppress(OSError):
                STATE_DIR.rmdir()
            progress(f"testbed down ({time.perf_counter() - t0:.1f}s)")

    result["elapsed_s"] = time.perf_counter() - t_start
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["machine"]["loadavg_during"] = [(round(t - camp.phase_start, 1), la)
                                           for t, la in camp.loadavg]
    result["machine"]["source_digest_at_end"] = source_digest()
    result["complete"] = interrupted is None
    if interrupted is not None:
        result["stopped_by"] = repr(interrupted)
    if not camp.faults or camp.prober is None or camp.watcher is None:
        print("campaign: nothing measured; nothing written", file=sys.stderr)
        return 1
    matched, spare = match_ops(camp)
    samples = failure_samples(camp, matched)
    takeovers = takeover_samples(camp)
    unavoidable = loss_events(camp, samples, takeovers)
    result["summary"] = summarize(camp, samples, spare, takeovers, unavoidable)
    result["takeovers"] = [{k: ({n: _round(x) for n, x in v.items()} if isinstance(v, dict)
                                else _round(v)) for k, v in t.items() if k != "windows"}
                           for t in takeovers]
    result["targets"] = evaluate_targets(result["summary"])
    result["anomalies"] = anomalies(camp, result, samples)
    result["deficit_changes"] = deficit_changes(camp)
    result["logs"] = logs
    result["host_periods"] = [{"host": p["host"], "component": p.get("component", "host"),
                               "kind": p["kind"],
                               "start_s": round(p["start"] - camp.phase_start, 3),
                               "end_s": round(p["end"] - camp.phase_start, 3)}
                              for p in [*camp.host_periods, *camp.other_periods]]
    result["samples"] = compact(samples)
    publish(result, "campaign", a.out, markdown=markdown, plot=plot,
            target_value=lambda t: f"{t['value']} {t['unit']}", doc_img=not a.no_doc_img,
            json_indent=1)
    return 0 if interrupted is None else 1


if __name__ == "__main__":
    sys.exit(main())
