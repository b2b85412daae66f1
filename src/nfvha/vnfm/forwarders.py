"""The manager's part in a forwarder pair: the leader arbitrates which forwarder owns
the service addresses (the protocol is in ``nfvha.dataplane.pair``).

* **Beats.** Each forwarder beats the managers; the leader answers the active one (the one
  its store names, in the term it names) with a lease: ``lease_s`` as the forwarder asked,
  at most ``MAX_LEASE``. It remembers, per forwarder, until when the last answer it gave
  may keep that forwarder owning (its answer's time + the lease).
* **Takeover.** A standby asks for the active's place. The leader grants it only after
  every lease it answered the active with has run out by ``margin``, and, in its first
  ``MAX_LEASE`` + ``margin`` as leader, not before that either (a predecessor's answers are
  not known here). If the active goes on beating meanwhile, it refuses (409): only the
  standby lost the active's stream. A grant is a new term in the store
  (``forwarder/pair``: active, term), written before it is answered.
* **After a takeover** the manager calls the new active from then on, and checkpoints
  every replayed VNF ``REANCHOR_AFTER`` later (once the clients have their service back):
  the new active's log lacks what the old one logged but had not yet mirrored, and a
  fresh checkpoint makes that gap unneeded.
* **Alarm** ``forwarder-standby-missing`` while a pair has no standby in sync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nfvha.errors import PROBLEM_PREFIX, InvalidRequest, NfvhaError
from nfvha.ha.lifecycle import VnfState
from nfvha.store.base import NotFound, Op

if TYPE_CHECKING:
    from nfvha.vnfm.manager import Manager

__all__ = ["MAX_LEASE", "ForwarderPair", "TakeoverRefused"]

log = logging.getLogger("nfvha.manager")

#: The longest lease a forwarder is answered with: a new leader waits this out.
MAX_LEASE = 2.0
#: Between the end of the last lease answered and a grant.
MARGIN = 0.05
#: How long a takeover request may wait for the old active's leases to run out.
GRANT_WAIT = 3.0
#: A forwarder just granted the active's place has this long to beat before another may
#: ask for it (a standby asking at the same moment is refused, not granted in turn).
FIRST_BEAT_GRACE = 0.5
#: A takeover's checkpoints of the replayed VNFs start this long after it.
REANCHOR_AFTER = 0.3
#: A forwarder not heard from for this long counts as gone (status, alarm).
GONE_AFTER = 1.0
#: The alarm is raised when the pair has had no standby in sync for this long.
ALARM_AFTER = 2.0
_KIND, _ID = "forwarder", "pair"


class TakeoverRefused(NfvhaError):
    """A takeover was refused: the active is alive and renewing, or the request names an
    old term. Nothing changed."""

    problem_type = PROBLEM_PREFIX + "takeover-refused"

    def __init__(self, message: str, active: str | None = None, term: int = 0) -> None:
        super().__init__(message)
        self.active = active
        self.term = term


@dataclass
class _Member:
    url: str
    last_beat: float | None = None  # monotonic: when its last beat arrived
    role: str = "unknown"
    term: int = 0
    in_sync: bool | None = None  # a standby's: it follows the active's stream
    standby_in_sync: bool | None = None  # the active's: its standby follows
    granted_until: float = 0.0  # monotonic: the end of the last lease answered


class ForwarderPair:
    """The leader's view of the pair and its arbitration; one per manager, reset per
    term (``reset``)."""

    def __init__(self, m: Manager, urls: dict[str, str]) -> None:
        self.m = m
        self.members = {fid: _Member(url) for fid, url in urls.items()}
        self._no_standby_since: float | None = None
        self.takeovers: list[dict[str, Any]] = []

    def reset(self) -> None:
        """A new term: what was answered before is not known (``since`` waits it out)."""
        for fid, mem in self.members.items():
            self.members[fid] = _Member(mem.url)
        self._no_standby_since = None

    # -- the record -------------------------------------------------------------------------

    def record(self) -> tuple[str | None, int, int | None]:
        """(active, term, version) as the store has them."""
        try:
            rec = self.m.store.get(_KIND, _ID)
        except NotFound:
            return None, 0, None
        active = rec.data.get("active")
        return (active if isinstance(active, str) else None, int(rec.data.get("term", 0)),
                rec.version)

    def _write(self, active: str, term: int, version: int | None, reason: str) -> None:
        data = {"active": active, "term": term, "since": time.time(), "reason": reason}
        op = Op.create(_KIND, _ID, data) if version is None else \
            Op.cas(_KIND, _ID, version, data)
        self.m.store.transaction([op])

    def url_of_active(self) -> str | None:
        active, _, _ = self.record()
        return self.members[active].url if active in self.members else None

    # -- beats ------------------------------------------------------------------------------

    def beat(self, fid: str, body: dict[str, Any]) -> dict[str, Any]:
        """A forwarder's beat; the answer names the active and, to the active, a lease."""
        self.m.check_acting()
        mem = self._member(fid)
        now = time.monotonic()
        mem.last_beat = now
        mem.role = str(body.get("role") or "unknown")
        mem.term = int(body.get("term") or 0)
        mem.in_sync = body.get("in_sync")
        mem.standby_in_sync = body.get("standby_in_sync")
        active, term, _ = self.record()
        lease = 0.0
        if active == fid and mem.term == term and mem.role == "active":
            lease = min(max(float(body.get("lease_s") or 0.0), 0.0), MAX_LEASE)
            mem.granted_until = max(mem.granted_until, now + lease)
        act = self.members.get(active) if active is not None else None
        age = None if act is None or act.last_beat is None else round(now - act.last_beat, 3)
        return {"active": active, "term": term, "lease_s": lease, "active_beat_age_s": age}

    # -- takeover ---------------------------------------------------------------------------

    async def takeover(self, fid: str, body: dict[str, Any]) -> dict[str, Any]:
        """Grant ``fid`` the active's place once the old active's leases have run out
        (see the module docstring); ``TakeoverRefused`` if the active goes on renewing."""
        self.m.check_acting()
        mem = self._member(fid)
        known = int(body.get("term") or 0)
        reason = str(body.get("reason") or "")[:300]
        asked = time.monotonic()
        deadline = asked + GRANT_WAIT
        while True:
            self.m.check_acting()
            active, term, version = self.record()
            if known > term:
                raise TakeoverRefused(f"forwarder {fid} names term {known}, but the store's "
                                      f"is {term}", active, term)
            now = time.monotonic()
            if active is None or active == fid:
                free_at = now
            else:
                old = self.members.get(active)
                if old is not None and old.last_beat is not None and old.last_beat > asked \
                        and old.role == "active" and old.term == term:
                    raise TakeoverRefused(
                        f"forwarder {active} is active in term {term} and beat after this "
                        f"request arrived: it is alive; forwarder {fid} stays standby (it "
                        "lost only the active's stream)", active, term)
                free_at = max(old.granted_until if old is not None else 0.0,
                              self.m.started + MAX_LEASE) + MARGIN
            if now >= free_at:
                break
            if free_at > deadline:
                raise TakeoverRefused(
                    f"forwarder {active} is active in term {term} and its lease, renewed "
                    f"by its beats, runs past this request's {GRANT_WAIT:.0f} s wait: it "
                    f"is alive; forwarder {fid} stays standby", active, term)
            await asyncio.sleep(free_at - now)
        new_term = term + 1
        self._write(fid, new_term, version, reason or "takeover")
        mem.granted_until = time.monotonic() + FIRST_BEAT_GRACE
        waited = time.monotonic() - asked
        self.takeovers.append({"from": active, "to": fid, "term": new_term, "at": time.time(),
                               "waited_s": round(waited, 4), "reason": reason})
        del self.takeovers[:-20]
        if self.m.forwarder is not None:
            self.m.forwarder.switch(mem.url)
        log.warning("forwarder %s active in term %d (was %s; %s); granted after %.3f s",
                    fid, new_term, active, reason, waited)
        if active is not None and active != fid:
            self.m.events.publish("forwarder", {"takeover": self.takeovers[-1]})
            self._recheckpoint(active, fid)
        return {"active": fid, "term": new_term, "lease_s": 0.0}

    def _recheckpoint(self, old: str, new: str) -> None:
        """Every replayed VNF is checkpointed now: the new active's log may lack what the
        old one logged last, and a checkpoint taken through it needs none of that."""
        # Not at once: the first checkpoint holds the VNF's traffic for its dump, and the
        # clients should get their service back first (the log lacks a millisecond at
        # most: see the mirror's FLUSH_DELAY).
        at = time.monotonic() + REANCHOR_AFTER
        n = 0
        for rec in self.m.store.list("vnf"):
            if rec.data.get("haState") == VnfState.ACTIVE and self.m._vnfd(rec.data).ha.replay:
                self.m._rt(rec.id).next_checkpoint = at
                n += 1
        if n:
            log.info("forwarder takeover %s -> %s: checkpointing %d replayed VNF(s) now",
                     old, new, n)
            self.m._wake.set()

    # -- status and alarm -------------------------------------------------------------------

    def _member(self, fid: str) -> _Member:
        mem = self.members.get(fid)
        if mem is None:
            raise InvalidRequest(f"forwarder {fid!r} is not one of this manager's pair "
                                f"({', '.join(self.members)}); start the manager with "
                                f"--forwarder ID=URL for each")
        return mem

    def status(self) -> dict[str, Any]:
        active, term, _ = self.record()
        now = time.monotonic()
        members = []
        for fid, mem in self.members.items():
            ago = None if mem.last_beat is None else round(now - mem.last_beat, 3)
            gone = ago is None or ago > GONE_AFTER
            members.append({
                "id": fid, "url": mem.url, "role": "unknown" if gone else mem.role,
                "term": mem.term, "last_beat_ago_s": ago,
                "in_sync": None if gone else (mem.standby_in_sync if fid == active
                                              else mem.in_sync)})
        return {"pair": True, "active": active, "term": term, "members": members,
                "alarm": self.missing_standby(now), "takeovers": self.takeovers[-5:]}

    def missing_standby(self, now: float) -> str | None:
        """Why the pair has no standby in sync (None: it has one)."""
        active, _, _ = self.record()
        if active is None:
            return "no forwarder is active yet"
        act = self.members.get(active)
        if act is None or act.last_beat is None or now - act.last_beat > GONE_AFTER:
            return f"the active forwarder {active} is not beating"
        others = [f for f in self.members if f != active]
        live = [f for f in others if (b := self.members[f].last_beat) is not None
                and now - b <= GONE_AFTER]
        if not live:
            return (f"forwarder {active} runs with no standby: {', '.join(others)} not heard "
                    f"for over {GONE_AFTER:.0f} s; a failure of {active} or its host would "
                    "stop every replayed service")
        if not act.standby_in_sync:
            return (f"forwarder {active} has no standby in sync ({', '.join(live)} alive but "
                    "not following its mirror stream)")
        return None

    async def watch(self) -> None:
        """Raise and clear the standby alarm."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now - self.m.started < ALARM_AFTER:
                continue
            why = self.missing_standby(now)
            if why is None:
                self._no_standby_since = None
                self.m._clear_alarm("forwarder-standby")
                continue
            if self._no_standby_since is None:
                self._no_standby_since = now
            if now - self._no_standby_since >= ALARM_AFTER:
                self.m._raise_alarm("forwarder-standby", None, "COMMUNICATIONS_ALARM",
                                    "MAJOR", "forwarder-standby-missing", why,
                                    {"host": "forwarder"})
