"""A forwarder pair: an active and a standby forwarder on two ingress hosts.

**Who forwards.** The active holds a *lease* and forwards, and answers ARP for the
service addresses and the pair's upstream address (``nfvha.dataplane.arp``), only
while it holds it. The lease is renewed by acknowledgements, each worth ``lease`` from
the moment the active *sent* what was acknowledged:

* the standby's, on the mirror stream (a heartbeat every ``beat``);
* the managers' (the leader answers a beat every ``beat``), worth ``lease`` while the
  active reports its standby in sync and ``lone_lease`` while it has none (so a standby
  lost does not leave the active hanging on the managers' answers alone).

**Who takes over.** A standby that loses the active's stream (closed, or silent for
``silence``) asks the managers for the active's place. The leader grants it only once
every lease it granted the active has run out by ``margin`` (waiting for that, and
refusing if the active goes on beating: then only the stream was lost), and records the
new active and a new *term* in its store; the standby, before it takes over, also waits
until the last acknowledgement it sent has run out by ``margin``. So the old active's
lease has ended, by every acknowledgement it could hold, before the new one answers
ARP for the addresses: never two forwarders owning an address, whatever died, stalled or
was cut off. A new manager leader grants nothing before ``lone_lease`` + ``margin`` into
its term (it cannot know what its predecessor granted).

**What carries over.** The standby holds the active's state as the mirror stream brings
it (``nfvha.dataplane.mirror``): flows with their upstream ports (it binds them again on
the same floating upstream address), the packet log, reply counts. Datagrams in flight
at the takeover (on the wire, in the old active's sockets, or logged but not yet
mirrored) can be lost, as through a router that fails; the manager checkpoints every
replayed VNF as soon as it has granted a takeover, to re-anchor the log.

**A demoted active** (its lease ran out) stops forwarding and answering ARP at once (the
gate is read per batch), closes its sockets and asks the managers who is active: another
one, and it becomes that one's standby (its state is replaced by the new active's
snapshot); itself (nobody took over), and it takes its place back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from nfvha.dataplane.arp import ArpOwner
from nfvha.dataplane.forwarder import Forwarder, ServiceSpec
from nfvha.dataplane.mirror import (
    MirrorReceiver,
    MirrorSender,
    ack_frame,
    barrier_ack_frame,
    json_frame,
    read_frame,
    snapshot_frames,
)
from nfvha.errors import HostNetworkError
from nfvha.tls import identity_from_peercert
from nfvha.vim.hostnet import HostNetwork

__all__ = ["PairMember", "PairTimings", "Role"]

log = logging.getLogger(__name__)

Addr = tuple[str, int]


class Role(enum.StrEnum):
    ACTIVE = "active"
    STANDBY = "standby"
    DEMOTED = "demoted"  # its lease ran out; it asks the managers who is active


@dataclass(frozen=True)
class PairTimings:
    """The pair's clock; each value says why. Takeover after an active's death takes
    about ``lease`` + ``margin`` (the old lease running out), plus a round trip."""

    #: The active's heartbeat to the standby and the managers.
    beat: float = 0.04
    #: What one acknowledgement is worth, with a standby in sync (several beats: one
    #: late answer costs nothing).
    lease: float = 0.15
    #: What a manager's acknowledgement is worth with no standby in sync: the active then
    #: hangs on the managers alone, and rides out a manager leader change (about 1 s).
    lone_lease: float = 2.0
    #: Kept between the end of the old lease and the new owner's first ARP answer.
    margin: float = 0.05
    #: The standby counts the active lost after this long without a heartbeat.
    silence: float = 0.12
    #: A standby's (and a demoted active's) beat to the managers.
    standby_beat: float = 0.2
    #: How long a takeover request may wait for the manager's grant.
    grant_timeout: float = 4.0

    def __post_init__(self) -> None:
        if not 0 < self.beat < self.lease < self.lone_lease:
            raise ValueError("pair timings: need 0 < beat < lease < lone_lease")
        if self.silence <= self.beat:
            raise ValueError("pair timings: silence must exceed beat")


class PairMember:
    """One forwarder of a pair: its role, lease and term; the mirror stream (sending
    while active, receiving while standby); its beats to the managers."""

    def __init__(self, member_id: str, fwd: Forwarder, *, peer: Addr, mirror_listen: Addr,
                 managers: Sequence[str], upstream_ip: str, interface: str, prefixlen: int,
                 net: HostNetwork, token: str = "",
                 server_tls: ssl.SSLContext | None = None,
                 client_tls: ssl.SSLContext | None = None,
                 timings: PairTimings | None = None, arp: ArpOwner | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        self.id = member_id
        self.fwd = fwd
        self.peer = peer
        self.mirror_listen = mirror_listen
        self.managers = [m.rstrip("/") for m in managers]
        self.upstream_ip = upstream_ip
        self.interface = interface
        self.prefixlen = prefixlen
        self.net = net
        self.token = token
        self.server_tls = server_tls
        self.client_tls = client_tls
        self.t = timings or PairTimings()
        self.role = Role.STANDBY
        self.term = 0  # the last term this member knows of
        self.lease_until = 0.0
        self.active: str | None = None  # the active, as the managers last said
        self.takeovers = 0
        self.demotions = 0
        self.renewals = 0  # lapsed leases renewed in time
        self.last_takeover: dict[str, Any] | None = None
        self.arp = arp if arp is not None else ArpOwner(interface, self.owning)
        fwd.gate = self.gate
        fwd.passive = True
        fwd.upstream_ip = upstream_ip
        # Standby side: the stream from the active.
        self.receiver = MirrorReceiver(fwd, self._configure_service)
        self._stream_alive = False
        self._last_heartbeat = 0.0  # when the active's last heartbeat arrived
        self._last_ack_sent = 0.0  # when this standby last acknowledged one
        self._peer_lease = self.t.lease  # what the active counts per acknowledgement
        self._ever_streamed = False
        self._active_heard: float | None = None  # when the managers last heard the active
        self._incoming: asyncio.StreamWriter | None = None
        self._claiming = False  # asking for the active's place: acknowledging nothing
        # Active side: the stream to the standby.
        self.sender: MirrorSender | None = None
        self._beats_sent: dict[int, float] = {}
        self._barriers: dict[int, asyncio.Future[None]] = {}
        self._beat_no = 0
        self._barrier_no = 0
        self._resync_barrier: int | None = None  # a barrier the standby is late with
        self._standby_in_sync = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._http = http or httpx.AsyncClient(
            verify=client_tls if client_tls is not None else True, timeout=1.0)
        self._headers = {"Authorization": f"Bearer {token}"} if token and not client_tls else {}
        self._inflight: dict[str, int] = {}
        self.manager_answers = 0
        self.manager_refusals: str | None = None

    # -- ownership ------------------------------------------------------------------------

    def owning(self) -> bool:
        """Whether this forwarder owns the addresses now: active, within its lease."""
        return self.role is Role.ACTIVE and time.monotonic() < self.lease_until

    def gate(self) -> bool | None:
        """The data path's question, per batch: forward (True), drop (False: not the
        active), or hold on (None: the active, its lease lapsed a moment ago; the sockets
        are paused at once and what was read is kept until it is renewed or given up)."""
        if self.role is not Role.ACTIVE:
            return False
        if time.monotonic() < self.lease_until:
            return True
        self.fwd.pause()
        return None

    def _renew(self, sent_at: float, lease: float) -> None:
        if self.role is Role.ACTIVE:
            was = self.owning()
            self.lease_until = max(self.lease_until, sent_at + lease)
            if not was and self.owning():  # the first lease of a term, or one regained
                if self.fwd.paused:  # the data path paused it on the lapse
                    self.fwd.resume()
                self.arp.announce()

    # -- start / stop ---------------------------------------------------------------------

    async def start(self) -> None:
        """Configure the upstream address, take ARP over, listen for a mirror stream and
        start as standby (the managers say whether there is an active to follow)."""
        # ARP first: from here on the kernel answers for no address of the interface, so
        # the floating ones configured next are answered by this process alone.
        self.arp.start()
        self.arp.set_floating([self.upstream_ip])
        await self._ensure_address(self.upstream_ip)
        self._server = await asyncio.start_server(
            self._accept, self.mirror_listen[0], self.mirror_listen[1], ssl=self.server_tls)
        self._main = asyncio.create_task(self._run())
        log.info("forwarder %s of a pair: standby; mirror on %s:%d, peer %s:%d, managers %s",
                 self.id, *self.mirror_listen, *self.peer, ", ".join(self.managers))

    async def close(self) -> None:
        self.role = Role.DEMOTED
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(BaseException):
                await self._main
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
        if self._incoming is not None:
            self._incoming.close()
        self._stop_sender()
        self.arp.close()
        await self._http.aclose()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _ensure_address(self, ip: str) -> None:
        owned = {a.split("/")[0] for _, a in await self.net.addresses()}
        if ip not in owned:
            await self.net.add_address(self.interface, f"{ip}/{self.prefixlen}")

    async def _configure_service(self, spec: ServiceSpec) -> None:
        """A service the active has: its address is configured here too (answered by
        nobody until a takeover: ARP is this process's), so a takeover only binds."""
        if spec.listen is not None:
            try:
                await self._ensure_address(spec.listen[0])
            except HostNetworkError as exc:
                log.error("service %s: cannot configure %s here: %s; a takeover could not "
                          "serve it", spec.name, spec.listen[0], exc)
            self.arp.add_floating(spec.listen[0])

    def service_added(self, spec: ServiceSpec) -> None:
        """The active got a service through its API: its address is floating too."""
        if spec.listen is not None:
            self.arp.add_floating(spec.listen[0])
            if self.owning():
                self.arp.announce()

    # -- the main loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                if self.role is Role.ACTIVE:
                    await self._act()
                else:
                    await self._stand_by()
            except asyncio.CancelledError:
                raise
            except Exception:  # the pair must go on; say what broke
                log.exception("forwarder %s (%s): pair loop failed; going on", self.id,
                              self.role)
                await asyncio.sleep(self.t.beat)

    async def _act(self) -> None:
        """Beat while active; return once demoted."""
        link = self._spawn(self._stream_to_standby())
        try:
            while self.role is Role.ACTIVE:
                now = time.monotonic()
                if now >= self.lease_until:
                    lapsed = now - self.lease_until
                    if await self._renew_lapsed():
                        log.warning("forwarder %s: its lease lapsed (this loop or its "
                                    "acknowledgements late by %.3f s); renewed after %.3f s, "
                                    "traffic held in the socket buffers meanwhile", self.id,
                                    lapsed, time.monotonic() - now)
                        continue
                    self._demote("its lease ran out: neither the standby nor a manager "
                                 f"acknowledged a beat for {self.t.lease:.2f} s")
                    return
                self._beat_no += 1
                self._beats_sent[self._beat_no] = now
                if len(self._beats_sent) > 256:
                    for k in sorted(self._beats_sent)[:128]:
                        del self._beats_sent[k]
                sender = self.sender
                if sender is not None and sender.broken is None and self._standby_in_sync:
                    sender.beat(self._beat_no, self.t.lease)
                self._beat_managers(now)
                await asyncio.sleep(min(self.t.beat, max(self.lease_until - now, 0.001)))
        finally:
            link.cancel()
            self._stop_sender()

    async def _renew_lapsed(self) -> bool:
        """The lease lapsed without a successor known: forward nothing, read nothing (the
        kernel's buffers keep what arrives) and beat at once; if an acknowledgement comes
        within ``lease``, carry on (a stall of this loop, or late answers, then cost delay,
        not datagrams), else give up. Safe as any renewal is: a standby stops
        acknowledging before it claims the place, and the managers answer a lease only to
        the active they record."""
        self.fwd.pause()
        self.renewals += 1
        deadline = time.monotonic() + self.t.lease
        try:
            while self.role is Role.ACTIVE and time.monotonic() < deadline:
                now = time.monotonic()
                self._beat_no += 1
                self._beats_sent[self._beat_no] = now
                sender = self.sender
                if sender is not None and sender.broken is None and self._standby_in_sync:
                    sender.beat(self._beat_no, self.t.lease)
                self._beat_managers(now)
                await asyncio.sleep(self.t.beat / 4)
                if self.owning():
                    return True
            return False
        finally:
            if self.owning():
                self.fwd.resume()

    async def barrier(self, timeout: float = 0.25) -> bool:
        """Return once the standby has applied everything mirrored so far (True), or at
        once with no standby in sync (False). A checkpoint's cut waits for it: every log
        position the managers are given is then one the standby holds, so no checkpoint
        cut by an active can point past what its successor's log numbers alike. A standby
        that does not answer within ``timeout`` counts as out of sync until it does, and the
        cut goes on (False)."""
        sender = self.sender
        if self.role is not Role.ACTIVE or sender is None or sender.broken is not None \
                or not self._standby_in_sync:
            return False
        self._barrier_no += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[self._barrier_no] = done
        sender.barrier(self._barrier_no)
        try:
            await asyncio.wait_for(done, timeout)
            return True
        except TimeoutError:
            # Behind (a loaded host): not in sync until it catches up with this barrier,
            # so the managers' leases are the long ones meanwhile and a takeover waits
            # until it has applied what reached it. The stream is kept: dropping it left
            # the pair with no standby at all, over and over, on a loaded machine.
            self._resync_barrier = self._barrier_no
            self._barriers.pop(self._barrier_no, None)
            self._standby_in_sync = False
            log.warning("forwarder %s: the standby did not apply a checkpoint's cut within "
                        "%.2f s; not in sync until it does", self.id, timeout)
            return False

    def _demote(self, why: str) -> None:
        if self.role is not Role.ACTIVE:
            return
        self.role = Role.DEMOTED
        self.demotions += 1
        self.fwd.deactivate()
        self.fwd.set_sink(None)
        log.warning("forwarder %s: demoted in term %d: %s", self.id, self.term, why)

    async def _stand_by(self) -> None:
        """Follow the active's stream; ask for its place when it is lost."""
        next_beat = 0.0
        next_ask = time.monotonic() + self.t.silence
        refused = 0
        while self.role is not Role.ACTIVE:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.t.standby_beat
                self._beat_managers(now)
            lost = self._active_lost(now)
            if lost is None:
                refused = 0
            elif now >= next_ask and self.managers:
                if await self._ask_takeover(lost):
                    return
                # Refused (the active beat after the request: a beat of the active's last
                # moments can still arrive then) or unanswered: soon again, then slower,
                # while the active stays alive and out of this member's reach.
                refused += 1
                next_ask = time.monotonic() + (self.t.silence if refused <= 3 else 0.5)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.t.beat / 2)

    def _active_lost(self, now: float) -> str | None:
        """Why the active counts as lost (None: it is not)."""
        if self._stream_alive:
            if now - self._last_heartbeat > self.t.silence:
                return f"no heartbeat from the active for {now - self._last_heartbeat:.3f} s"
            return None
        if self._ever_streamed:
            return "the active's mirror stream closed"
        # No stream yet (just started, or demoted): an active the managers hear beating
        # will stream to this one; claim only when there is none, or it went silent.
        heard = self._active_heard
        if self.active not in (None, self.id) and heard is not None \
                and now - heard < 2 * self.t.lease:
            return None
        if self.role is Role.DEMOTED:
            return "this forwarder was demoted and no active streams to it"
        if self.active in (None, self.id):
            return "no active forwarder"
        return f"the active {self.active} streams to nobody here and the managers have " \
               "not heard it lately"

    # -- the managers ---------------------------------------------------------------------

    def _beat_body(self) -> dict[str, Any]:
        active = self.role is Role.ACTIVE
        return {"role": str(self.role), "term": self.term,
                "in_sync": self.receiver.synced and self._stream_alive if not active else None,
                "standby_in_sync": self._standby_in_sync if active else None,
                "lease_s": (self.t.lease if self._standby_in_sync else self.t.lone_lease)
                if active else 0.0}

    def _beat_managers(self, now: float) -> None:
        body = self._beat_body()
        for url in self.managers:
            if self._inflight.get(url, 0) >= 2:  # that one is slow: do not pile up
                continue
            self._inflight[url] = self._inflight.get(url, 0) + 1
            self._spawn(self._beat_one(url, body, now))

    async def _beat_one(self, url: str, body: dict[str, Any], sent_at: float) -> None:
        try:
            r = await self._http.post(f"{url}/nfvha/v1/forwarders/{self.id}/beat", json=body,
                                      headers=self._headers, timeout=0.5)
        except httpx.HTTPError:
            return
        finally:
            self._inflight[url] -= 1
        if r.status_code != 200:
            if r.status_code in (401, 403, 404, 422):
                self.manager_refusals = f"{url}: {r.status_code} {r.text[:200]}"
            return  # a follower (503), or a manager that does not know pairs
        try:
            ans = r.json()
            active, term, lease = ans.get("active"), int(ans["term"]), float(ans["lease_s"])
            age = ans.get("active_beat_age_s")
            self._active_heard = None if age is None else time.monotonic() - float(age)
        except (ValueError, KeyError, TypeError):
            return
        self.manager_answers += 1
        if term < self.term:
            return  # an answer from before this member's own takeover
        self.active = active
        if self.role is Role.ACTIVE:
            if active == self.id and term == self.term and lease > 0:
                self._renew(sent_at, lease)
            elif active != self.id or term > self.term:
                self._demote(f"the managers name {active} active in term {term}")
        else:
            self.term = max(self.term, term)

    async def _ask_takeover(self, why: str) -> bool:
        """Ask every manager for the active's place (the leader answers, once the leases
        it granted the old active have run out); then take it: after this member's own
        acknowledgements have run out too and a first beat is acknowledged."""
        # From here on this member acknowledges nothing (the stream is dropped, and none
        # is taken while it claims): the last acknowledgement it sent is final, and worth
        # _peer_lease to the active, so once that has run out by margin its
        # acknowledgements keep no one owning.
        self._claiming = True
        try:
            if self._incoming is not None:
                self._incoming.close()
            wait = self._last_ack_sent + self._peer_lease + self.t.margin - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            return await self._claim(why)
        finally:
            self._claiming = False

    async def _claim(self, why: str) -> bool:
        log.info("forwarder %s: asking to take over (%s)", self.id, why)
        asked_at = time.monotonic()
        body = {"term": self.term, "reason": why}
        tasks = [asyncio.create_task(self._http.post(
            f"{url}/nfvha/v1/forwarders/{self.id}/takeover", json=body, headers=self._headers,
            timeout=self.t.grant_timeout)) for url in self.managers]
        grant: dict[str, Any] | None = None
        granted_by = ""
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    r = await fut
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    with contextlib.suppress(ValueError):
                        grant = r.json()
                        granted_by = str(r.request.url).split("/nfvha/")[0]
                    break
                if r.status_code == 409:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        ans = r.json()
                        self.active = ans.get("active")
                        self.term = max(self.term, int(ans.get("term", self.term)))
        finally:
            for t in tasks:
                t.cancel()
        if grant is None or self.role is Role.ACTIVE:
            return False
        await self._promote(int(grant["term"]), granted_by, why, time.monotonic() - asked_at)
        return True

    async def _promote(self, term: int, granted_by: str, why: str, waited: float) -> None:
        """Become active in ``term``: sockets opened, then, once a beat in the new term is
        acknowledged (the grant itself holds no lease: it may have waited long), ARP
        answered and announced."""
        if self._incoming is not None:  # the old active's stream, if it still trickles
            self._incoming.close()
        self.term = term
        self.active = self.id
        self.role = Role.ACTIVE
        self.lease_until = 0.0
        self._standby_in_sync = False
        self._stream_alive = False
        self._ever_streamed = False
        flows = self.fwd.activate()
        self.arp.set_floating([self.upstream_ip, *(s.spec.listen[0] for s in
                                                   self.fwd.services.values()
                                                   if s.spec.listen is not None)])
        sent_at = time.monotonic()
        self._inflight[granted_by] = self._inflight.get(granted_by, 0) + 1
        await self._beat_one(granted_by, self._beat_body(), sent_at)  # announces
        if not self.owning():
            log.warning("forwarder %s: granted term %d but its first beat was not "
                        "acknowledged; it beats on", self.id, term)
        self.takeovers += 1
        self.last_takeover = {"term": term, "reason": why, "granted_after_s": round(waited, 4),
                              "services": len(self.fwd.services), "flows": flows,
                              "at": time.time()}
        log.warning("forwarder %s: active in term %d (%s); %d service(s), %d flow(s) "
                    "reopened, granted after %.3f s", self.id, term, why,
                    len(self.fwd.services), flows, waited)

    # -- the mirror stream: active side ---------------------------------------------------

    async def _stream_to_standby(self) -> None:
        """Keep a stream to the standby open: connect, send the snapshot, then every
        change; read its acknowledgements. Reconnects while active."""
        while self.role is Role.ACTIVE:
            opened: asyncio.StreamWriter | None = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    self.peer[0], self.peer[1], ssl=self.client_tls,
                    server_hostname=self.peer[0] if self.client_tls else None), timeout=1.0)
                opened = writer
                writer.write(json_frame({"op": "hello", "id": self.id, "term": self.term,
                                         "token": "" if self.client_tls else self.token}))
                for frame in snapshot_frames(self.fwd):
                    writer.write(frame)
                sender = MirrorSender(writer)
                self.sender = sender
                self.fwd.set_sink(sender)
                # In sync once the standby says it applied the snapshot (a barrier after
                # it): until then no heartbeat goes to it (its acknowledgements would
                # renew nothing it could take over with) and no cut waits for it.
                self._barrier_no += 1
                synced_by = self._barrier_no
                sender.barrier(synced_by)
                log.info("forwarder %s: mirror stream to the standby open (%d service(s)); "
                         "snapshot sent", self.id, len(self.fwd.services))
                while self.role is Role.ACTIVE and sender.broken is None:
                    # A snapshot takes a while to apply: wait long for its barrier.
                    kind, body = await asyncio.wait_for(
                        read_frame(reader),
                        timeout=self.t.lease * 4 if self._standby_in_sync else 60.0)
                    if kind == b"A":
                        number = int.from_bytes(body[:8], "big")
                        sent_at = self._beats_sent.pop(number, None)
                        if sent_at is not None:
                            self._renew(sent_at, self.t.lease)
                    elif kind == b"b":
                        number = int.from_bytes(body[:8], "big")
                        if number in (synced_by, self._resync_barrier):
                            self._resync_barrier = None
                            self._standby_in_sync = True
                            log.info("forwarder %s: the standby applied the snapshot: in "
                                     "sync", self.id)
                        done = self._barriers.pop(number, None)
                        if done is not None and not done.done():
                            done.set_result(None)
                if sender.broken is not None:
                    log.warning("forwarder %s: mirror stream given up: %s", self.id,
                                sender.broken)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError,
                    ssl.SSLError) as exc:
                if self._standby_in_sync:
                    log.warning("forwarder %s: mirror stream to the standby lost: %s",
                                self.id, exc or type(exc).__name__)
            finally:
                self._stop_sender()
                if opened is not None:
                    opened.close()
            if self.role is Role.ACTIVE:
                await asyncio.sleep(0.2)

    def _stop_sender(self) -> None:
        self._standby_in_sync = False
        for done in self._barriers.values():  # no standby to wait for: cuts go on
            if not done.done():
                done.set_result(None)
        self._barriers.clear()
        if self.sender is not None:
            self.fwd.set_sink(None)
            self.sender = None

    # -- the mirror stream: standby side --------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            if self.server_tls is not None:
                ident = identity_from_peercert(writer.get_extra_info("peercert"))
                if ident is None or not ident.is_forwarder():
                    log.warning("mirror stream from %s refused: not a forwarder's certificate "
                                "(%s)", peer, ident)
                    return
            kind, body = await asyncio.wait_for(read_frame(reader), timeout=2.0)
            hello = json.loads(body) if kind == b"J" else {}
            if hello.get("op") != "hello" or (self.server_tls is None
                                              and hello.get("token") != self.token):
                log.warning("mirror stream from %s refused: no valid hello", peer)
                return
            term = int(hello.get("term", 0))
            if self._claiming:
                log.warning("mirror stream from %s (term %d) refused: this forwarder is "
                            "asking for the active's place", hello.get("id"), term)
                return
            if self.role is Role.ACTIVE or term < self.term:
                log.warning("mirror stream from %s (term %d) refused: this forwarder is %s "
                            "in term %d", hello.get("id"), term, self.role, self.term)
                return
            if self.role is Role.DEMOTED:
                self.role = Role.STANDBY
                log.info("forwarder %s: standby of %s (term %d)", self.id, hello.get("id"),
                         term)
            if self._incoming is not None:
                self._incoming.close()
            self._incoming = writer
            self.term, self.active = term, hello.get("id")
            self._stream_alive = True
            self._ever_streamed = True
            self._last_heartbeat = time.monotonic()
            while self.role is not Role.ACTIVE and self._incoming is writer:
                kind, body = await read_frame(reader)
                if self._claiming:
                    break
                if kind == b"H":
                    number = int.from_bytes(body[:8], "big")
                    self._peer_lease = max(int.from_bytes(body[8:12], "big") / 1000, 0.0)
                    writer.write(ack_frame(number))
                    self._last_ack_sent = self._last_heartbeat = time.monotonic()
                elif kind == b"B":  # everything before it is applied: say so
                    writer.write(barrier_ack_frame(int.from_bytes(body[:8], "big")))
                else:
                    await self.receiver.apply(kind, body)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, KeyError,
                ssl.SSLError) as exc:
            log.warning("forwarder %s: mirror stream from %s ended: %s", self.id, peer,
                        exc or type(exc).__name__)
        finally:
            if self._incoming is writer:
                self._incoming = None
                self._stream_alive = False
                self.receiver.synced = False
                self._wake.set()
            writer.close()

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        active = self.role is Role.ACTIVE
        return {
            "id": self.id, "role": str(self.role), "term": self.term, "active": self.active,
            "owning": self.owning(),
            "lease_remaining_s": round(max(self.lease_until - now, 0.0), 4) if active else 0.0,
            "standby_in_sync": self._standby_in_sync if active else None,
            "in_sync": (self.receiver.synced and self._stream_alive) if not active else None,
            "last_heartbeat_ago_s": None if active or not self._stream_alive
            else round(now - self._last_heartbeat, 4),
            "mirrored_bytes": self.sender.sent_bytes if self.sender is not None else None,
            "mirrored_datagrams": None if active else self.receiver.datagrams,
            "takeovers": self.takeovers, "demotions": self.demotions,
            "renewals": self.renewals,
            "last_takeover": self.last_takeover,
            "arp": {"answered": self.arp.answered, "refused": self.arp.refused},
            "manager_answers": self.manager_answers, "manager_refusal": self.manager_refusals,
            "timings": {"beat": self.t.beat, "lease": self.t.lease,
                        "lone_lease": self.t.lone_lease, "margin": self.t.margin,
                        "silence": self.t.silence},
        }
