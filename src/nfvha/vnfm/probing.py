"""Health probes of running VNFs: a hang is a VNF that stops answering while its host
still heartbeats, and is not merely frozen by a checkpoint or being recovered.

A part composed into the ``Manager``; it calls back through the manager's shared
services only (the contract is in ``nfvha.vnfm.manager``'s docstring).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from nfvha.descriptor import HealthProbe, VnfDescriptor
from nfvha.errors import NfvhaError
from nfvha.ha.fault import probe_vnf
from nfvha.ha.lifecycle import VnfState

if TYPE_CHECKING:
    from nfvha.vnfm.manager import Manager

log = logging.getLogger("nfvha.manager")

__all__ = ["Prober"]


class Prober:
    """Probes a VNF (one probe loop at a time per VNF) and waits for a restored one to serve."""

    def __init__(self, m: Manager) -> None:
        self.m = m

    async def probe(self, vnf_id: str) -> None:
        rt = self.m._rt(vnf_id)
        try:
            rec = self.m.store.find("vnf", vnf_id)
            if rec is None:
                return
            d = self.m._vnfd(rec.data)
            t0 = time.monotonic()
            ok = await self.probe_once(vnf_id, d, d.ha.probe, rec.data.get("host"))
            # Excused: frozen by a dump, or being recovered. Not merely queued for the
            # host's dump slot (at 20 VNFs a host that is most of the time) or replicating:
            # the VNF runs meanwhile, and a hang must still be seen.
            busy = rt.dumping or rt.thawed_at >= t0 or (
                rt.busy is not None and not rt.busy.done() and not rt.checkpointing)
            host = rec.data.get("host")
            self.m.membership.drain_liveness()  # silence is measured to the last heartbeat read
            host_silent = host is not None and (
                not self.m.detector.is_up(host)
                or self.m.detector.silence(host) > 2 * self.m.cfg.timings.heartbeat_interval)
            if ok or host_silent:
                # A silent host is the heartbeat detector's to judge: a VNF that does not
                # answer because its host is gone is a host loss, not a hang.
                rt.probe_failures = 0
                rt.probe_failing_since = None
            elif busy:
                # Frozen by a checkpoint, or being recovered: this probe proves nothing
                # either way. Not a reset: a hung VNF whose checkpoints keep failing must
                # still reach the threshold.
                pass
            else:
                rt.probe_failures += 1
                if rt.probe_failing_since is None:
                    rt.probe_failing_since = time.time() - d.ha.probe.timeout
                if rt.probe_failures >= d.ha.probe.failure_threshold and rt.failure is None:
                    rt.probe_failures = 0
                    cur = self.m.store.find("vnf", vnf_id)
                    if cur is not None and cur.data["haState"] == VnfState.ACTIVE:
                        rt.failure = ("hang", time.time(),
                                      f"{d.ha.probe.failure_threshold} {d.ha.probe.type} probes "
                                      "unanswered")
                        rt.failed_at = rt.probe_failing_since
                        self.m._wake.set()
            await asyncio.sleep(max(0.0, d.ha.probe.interval - (time.monotonic() - t0)))
        finally:
            rt.probing = False
            self.m._wake.set()  # the next probe is due now

    async def probe_once(self, vnf_id: str, d: VnfDescriptor, probe: HealthProbe,
                         host: str | None) -> bool:
        """One probe. An exec probe is run by the VNF's agent inside its sandbox, never
        here: a command from a VNFD must not run as root beside the manager."""
        if probe.type != "exec":
            return await probe_vnf(probe, d.network.ip)
        if host is None:
            rec = self.m.store.find("vnf", vnf_id)
            host = rec.data.get("host") if rec is not None else None
        if host is None:
            return False
        try:
            return await self.m.agent(host).exec_probe(vnf_id, probe.timeout)
        except NfvhaError:
            return False

    async def wait_serving(self, vnf_id: str, host: str, d: VnfDescriptor,
                           restored: float) -> float | None:
        """When the restored VNF first answered its probe; None if not within 3 s."""
        if d.ha.probe.type == "none":
            return restored
        # Short probes, often: the first answer is the moment service is back.
        fast = d.ha.probe if d.ha.probe.type == "exec" else \
            d.ha.probe.model_copy(update={"timeout": min(d.ha.probe.timeout, 0.01)})
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if await self.probe_once(vnf_id, d, fast, host):
                return time.time()
            await asyncio.sleep(0.002)
        return None
