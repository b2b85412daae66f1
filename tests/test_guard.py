"""The lease guard and the liveness path, in-process: the shared lease file, fencing on
either lease, renewals from the manager and from peers, and the manager's side of it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfvha.ha.fault import HostState
from nfvha.ha.liveness import decode, encode, host_key, liveness_key, ring_successors
from nfvha.vim.guard import AgentSide, GuardConfig, LeaseFile, LeaseGuard
from nfvha.vnfm.manager import Manager, VnfState

KEY = liveness_key("t")


# -- the datagram codec --------------------------------------------------------------------


def test_a_datagram_round_trips_and_a_forged_or_garbled_one_is_dropped() -> None:
    data = encode(KEY, {"k": "hb", "h": "h1", "s": 1})
    assert decode(KEY, data) == {"k": "hb", "h": "h1", "s": 1}
    assert decode(liveness_key("other token"), data) is None  # not the cluster's key
    forged = data[:16] + data[16:].replace(b"h1", b"h2")
    assert decode(KEY, forged) is None
    assert decode(KEY, b"short") is None
    assert decode(KEY, encode(KEY, [1, 2]) if False else data[:16] + b"[1]") is None


def test_ring_successors_probe_every_host_exactly_fanout_times() -> None:
    hosts = [f"h{i}" for i in range(1, 11)]
    probed = [p for h in hosts for p in ring_successors(h, hosts, 3)]
    assert all(probed.count(h) == 3 for h in hosts)
    assert ring_successors("h1", ["h1", "h2"], 3) == ["h2"]
    assert ring_successors("h1", [], 3) == []


# -- the lease file ------------------------------------------------------------------------


def test_the_lease_file_is_shared_and_survives_a_reopen(tmp_path: Path) -> None:
    a = LeaseFile(tmp_path / "lease")
    b = LeaseFile(tmp_path / "lease")
    a.write_agent(AgentSide(123.5, 2, 42))
    assert b.agent() == AgentSide(123.5, 2, 42)
    assert b.guard().host_until == 0.0  # nothing written by a guard yet
    a.close()
    assert LeaseFile(tmp_path / "lease").agent().ack_seq == 2


def test_a_lease_file_from_an_earlier_boot_is_reset(tmp_path: Path) -> None:
    lf = LeaseFile(tmp_path / "lease")
    lf.write_agent(AgentSide(99.0, 1, 7))
    lf.close()
    raw = bytearray((tmp_path / "lease").read_bytes())
    raw[8:24] = b"\x01" * 16  # another boot id: its monotonic deadlines mean nothing now
    (tmp_path / "lease").write_bytes(bytes(raw))
    assert LeaseFile(tmp_path / "lease").agent() == AgentSide(0.0, 0, 0)


# -- the guard's decisions (no sockets to a manager, a throwaway cgroup) --------------------


def _guard(tmp_path: Path, managers: tuple[tuple[str, int], ...] = (),
           **kw: float) -> LeaseGuard:
    cfg = GuardConfig(host_id="h1", lease_path=tmp_path / "lease",
                      cgroup_parent=f"nfvt-guard-{os.getpid()}/vnf", listen=("127.0.0.1", 0),
                      key=KEY, fencing_timeout=kw.get("fencing_timeout", 0.25),
                      agent_grace=kw.get("agent_grace", 3.0), managers=managers)
    return LeaseGuard(cfg)


def test_no_fence_before_the_first_contact_nor_while_both_leases_hold(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    now = time.monotonic()
    g.check(now + 100)  # never had contact, never fed: not armed
    assert not g.fenced
    g._renew(now, 0.25)
    g.file.write_agent(AgentSide(now + 3.0, 0, 1))
    g.check(now + 0.2)
    assert not g.fenced


def test_the_host_lease_running_out_fences(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    now = time.monotonic()
    g._renew(now, 0.25)
    g.check(now + 0.3)
    assert g.fenced and g.fence_seq == 1 and "host lease ran out" in g.reason
    side = LeaseFile(tmp_path / "lease").guard()
    assert side.fenced == 1 and side.fence_seq == 1  # the agent sees it


def test_an_agent_that_stops_feeding_is_fenced_after_its_grace_then_lifted(
        tmp_path: Path) -> None:
    g = _guard(tmp_path, agent_grace=3.0)
    now = time.monotonic()
    g._renew(now + 10, 0.25)  # the host lease holds throughout
    g.file.write_agent(AgentSide(now + 3.0, 0, 1))
    g.check(now + 2.9)
    assert not g.fenced
    g.check(now + 3.1)
    assert g.fenced and "agent silent" in g.reason
    g.file.write_agent(AgentSide(now + 6.0, 0, 1))  # a new agent feeds, not yet acked
    g.check(now + 3.2)
    assert g.fenced
    g.file.write_agent(AgentSide(now + 6.0, 1, 1))  # it saw the fence through
    g.check(now + 3.3)
    assert not g.fenced and g.fence_seq == 1


def test_a_restarted_guard_inherits_the_lease_in_force(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    now = time.monotonic()
    g._renew(now, 0.25)
    g.sock.close()
    g2 = _guard(tmp_path)
    assert g2.host_until == pytest.approx(now + 0.25)
    g2.check(now + 0.3)
    assert g2.fenced  # a restart did not disarm it


def test_answers_renew_the_lease_from_when_the_request_was_sent(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    sent = time.monotonic() - 0.1
    seq = g._next_seq(sent)
    g.receive(encode(KEY, {"k": "hb-ack", "s": seq, "l": 0.9,
                           "peers": [["h2", "127.0.0.1", 9], ["h3", "127.0.0.1", 10]],
                           "pv": "v1"}), ("127.0.0.1", 1), time.monotonic())
    assert g.host_until == pytest.approx(sent + 0.9)
    assert set(g.peers) == {"h2", "h3"} and g.peers_version == "v1"
    # A peer's answer counts as contact too (cut off from the manager is not isolated).
    later = time.monotonic()
    seq = g._next_seq(later)
    g.receive(encode(KEY, {"k": "pong", "h": "h2", "s": seq}), ("127.0.0.1", 9), later)
    assert g.host_until == pytest.approx(later + 0.9) and "h2" in g.heard
    # A forged answer renews nothing.
    seq = g._next_seq(later + 1)
    g.receive(encode(liveness_key("x"), {"k": "hb-ack", "s": seq, "l": 30}), ("1.2.3.4", 1),
              later + 1)
    assert g.host_until == pytest.approx(later + 0.9)


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(1)
    return s


def test_the_guard_heartbeats_every_manager_and_the_leaders_answer_renews(
        tmp_path: Path) -> None:
    """A cluster of three: a follower (silent), a member that is down (nothing listens),
    the leader (answers). One heartbeat goes to each; the leader's grant holds the host."""
    with _udp() as gone:
        down = gone.getsockname()
    with _udp() as follower, _udp() as leader:
        g = _guard(tmp_path, managers=(follower.getsockname(), down, leader.getsockname()))
        for _ in range(2):  # the member that is down costs the next beat nothing either
            sent = time.monotonic()
            g.beat(sent)
            to_follower = decode(KEY, follower.recv(9000))
            data, guard_addr = leader.recvfrom(9000)
            to_leader = decode(KEY, data)
            assert to_follower == to_leader and to_leader is not None  # one heartbeat
            leader.sendto(encode(KEY, {"k": "hb-ack", "s": to_leader["s"], "l": 0.5}),
                          guard_addr)
            time.sleep(0.05)
            g._drain()
            assert g.host_until == pytest.approx(sent + 0.5, abs=0.01)
            assert g.granted_by == leader.getsockname()
        g.sock.close()


def test_a_late_answer_from_a_deposed_leader_does_not_set_the_lease(tmp_path: Path) -> None:
    """The old leader's answer to an earlier heartbeat, granting a longer lease, comes
    after the new leader's: neither the lease (which peers' answers renew) nor the host's
    deadline nor the peer list take it up."""
    g = _guard(tmp_path)
    old_leader, new_leader = ("10.0.0.1", 8600), ("10.0.0.2", 8600)
    t0 = time.monotonic() - 0.2
    s9, s10 = g._next_seq(t0), g._next_seq(t0 + 0.05)
    g.receive(encode(KEY, {"k": "hb-ack", "s": s10, "l": 0.25,
                           "peers": [["h2", "10.0.1.2", 8700]], "pv": "new"}), new_leader,
              t0 + 0.06)
    assert g.host_until == pytest.approx(t0 + 0.30) and g.granted_by == new_leader
    g.receive(encode(KEY, {"k": "hb-ack", "s": s9, "l": 2.0, "peers": [], "pv": "old"}),
              old_leader, t0 + 0.07)
    assert g.host_until == pytest.approx(t0 + 0.30) and g.lease == 0.25
    assert list(g.peers) == ["h2"] and g.granted_by == new_leader
    # A peer's answer renews with the lease in force, the new leader's.
    s11 = g._next_seq(t0 + 0.1)
    g.receive(encode(KEY, {"k": "pong", "h": "h2", "s": s11}), ("10.0.1.2", 8700), t0 + 0.11)
    assert g.host_until == pytest.approx(t0 + 0.35)
    # Two members answering one heartbeat (both believe they lead, for an instant): the
    # guard holds the longer grant and says so in its heartbeats.
    s12 = g._next_seq(t0 + 0.15)
    g.receive(encode(KEY, {"k": "hb-ack", "s": s12, "l": 0.75}), old_leader, t0 + 0.16)
    g.receive(encode(KEY, {"k": "hb-ack", "s": s12, "l": 0.25}), new_leader, t0 + 0.16)
    assert g.lease == 0.75 and g.host_until == pytest.approx(t0 + 0.9)


def test_an_answer_to_the_previous_guards_heartbeat_renews_nothing(tmp_path: Path) -> None:
    """A restarted guard numbers its heartbeats anew; a late answer to its predecessor's
    heartbeat must not pass for an answer to its own heartbeat of that number, sent after
    the manager answered (a lease from a time the manager never heard the host)."""
    g1 = _guard(tmp_path)
    old = g1._next_seq(time.monotonic())
    g1.sock.close()
    time.sleep(0.002)  # a restart takes far longer
    g2 = _guard(tmp_path)
    for _ in range(3):
        g2._next_seq(time.monotonic())
    g2.receive(encode(KEY, {"k": "hb-ack", "s": old, "l": 0.9}), ("10.0.0.1", 8600),
               time.monotonic())
    assert g2.host_until == 0.0  # never had contact
    g2.sock.close()


def test_the_guard_answers_peer_pings_over_real_udp(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    port = g.sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        sent = time.monotonic()
        s.sendto(encode(KEY, {"k": "ping", "h": "h7", "s": 5}), ("127.0.0.1", port))
        time.sleep(0.2)  # read late, as at the next beat
        g._drain()
        reply = decode(KEY, s.recv(9000))
    assert reply == {"k": "pong", "h": "h1", "s": 5}
    # Counted at its arrival (kernel timestamp), not when it was read.
    assert sent <= g.heard["h7"] < sent + 0.1


def test_the_guard_kills_the_vnf_cgroups_when_it_fences(tmp_path: Path) -> None:
    """For real: a process in a VNF cgroup under the guard's parent dies at the fence."""
    from nfvha.vim.cgroups import CgroupDriver, CgroupLimits

    if os.geteuid() != 0:
        pytest.skip("needs root for cgroups")
    g = _guard(tmp_path)
    cg = CgroupDriver.detect().cgroup(f"{g.cfg.cgroup_parent}/vnf-a")
    cg.create(CgroupLimits())
    proc = subprocess.Popen(["sleep", "60"])
    try:
        cg.add_pid(proc.pid)
        now = time.monotonic()
        g._renew(now, 0.25)
        g.check(now + 0.3)
        assert proc.wait(5) == -9
    finally:
        proc.kill()
        CgroupDriver.detect().cgroup(g.cfg.cgroup_parent.split("/")[0]).delete()


def test_the_guard_process_heartbeats_every_manager_given(tmp_path: Path) -> None:
    """``--manager A:P,B:P`` as the agent passes it: a heartbeat reaches each."""
    (tmp_path / "token").write_text("t")
    key = host_key(liveness_key("t"), "h1")
    with _udp() as m1, _udp() as m2:
        managers = ",".join(f"{h}:{p}" for h, p in (m1.getsockname(), m2.getsockname()))
        guard = subprocess.Popen(
            [sys.executable, "-m", "nfvha.vim.guard", "--host-id", "h1", "--lease-file",
             str(tmp_path / "lease"), "--cgroup-parent", "nfvt-none/vnf", "--listen",
             "127.0.0.1:0", "--token-file", str(tmp_path / "token"), "--nice", "0",
             "--manager", managers], stderr=subprocess.DEVNULL)
        try:
            m1.settimeout(10)
            m2.settimeout(10)
            got = [decode(key, m.recv(9000)) for m in (m1, m2)]
        finally:
            guard.terminate()
            guard.wait(5)
    assert all(hb is not None and hb["k"] == "hb" and hb["h"] == "h1" for hb in got)


def test_the_guard_process_starts_fast_and_refuses_a_second_instance(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    args = [sys.executable, "-m", "nfvha.vim.guard", "--host-id", "h1", "--lease-file",
            str(tmp_path / "lease"), "--cgroup-parent", "nfvt-none/vnf", "--listen",
            "127.0.0.1:0", "--token-file", str(tmp_path / "token"), "--nice", "0"]
    first = subprocess.Popen(args, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if LeaseFile(tmp_path / "lease").guard().pid == first.pid:
                break
            time.sleep(0.02)
        assert LeaseFile(tmp_path / "lease").guard().pid == first.pid
        second = subprocess.run(args, capture_output=True, timeout=10)
        assert second.returncode == 3 and b"another guard" in second.stderr
    finally:
        first.terminate()
        first.wait(5)


# -- the manager's side --------------------------------------------------------------------


def _hb(host: str, seq: int, **kw: object) -> dict[str, object]:
    return {"k": "hb", "h": host, "i": 1.0, "s": seq, "l": 0.25, "a": 2.9, "g": 3.0, "f": 0,
            "pv": "", "p": {}, **kw}


async def test_guard_heartbeats_keep_a_registered_host_alive_and_get_peers(
        manager: Manager) -> None:
    assert manager.liveness("h1", _hb("h1", 1), ("10.0.0.1", 8700)) == {
        "k": "hb-ack", "s": 1, "l": manager.cfg.timings.fencing_timeout}  # not registered
    assert manager.detector.state_of("h1") is None
    for h in ("h1", "h2"):
        manager.heartbeat(h, {"url": f"http://{h}:8700", "instances": []})
    answer = manager.liveness("h1", _hb("h1", 2), ("10.0.0.1", 8700))
    assert answer is not None and answer["l"] >= 0.25
    answer = manager.liveness("h2", _hb("h2", 1), ("10.0.0.2", 8700))
    assert answer is not None
    assert answer["peers"] == [["h1", "10.0.0.1", 8700], ["h2", "10.0.0.2", 8700]]
    # Once the guard has the list, it is not sent again.
    again = manager.liveness("h2", _hb("h2", 2, pv=answer["pv"]), ("10.0.0.2", 8700))
    assert again is not None and "peers" not in again
    # A replayed (older) heartbeat is ignored.
    assert manager.liveness("h2", _hb("h2", 2), ("10.0.0.2", 8700)) is None


async def test_a_guard_reporting_a_fence_moves_that_hosts_vnfs_at_once(
        manager: Manager) -> None:
    manager.heartbeat("h1", {"url": "http://h1:8700", "instances": []})
    manager.store.put("vnf", "v1", {"id": "v1", "haState": VnfState.ACTIVE, "host": "h1",
                                    "vnfd": {}})
    manager.liveness("h1", _hb("h1", 1), ("10.0.0.1", 8700))
    assert manager._rt("v1").failure is None
    manager.liveness("h1", _hb("h1", 2, f=1, fr="agent silent for 3.1 s", fa=time.time()),
                     ("10.0.0.1", 8700))
    failure = manager._rt("v1").failure
    assert failure is not None and failure[0] == "host-loss" and "lease guard" in failure[2]
    assert "h1" in manager.membership.fenced_hosts
    # The same fence reported again is not a second failure.
    manager._rt("v1").failure = None
    manager.liveness("h1", _hb("h1", 3, f=1), ("10.0.0.1", 8700))
    assert manager._rt("v1").failure is None
    # Lifted (the agent is back and saw it through): no longer known fenced.
    manager.liveness("h1", _hb("h1", 4, f=0), ("10.0.0.1", 8700))
    assert "h1" not in manager.membership.fenced_hosts


async def test_an_overdue_agent_raises_an_alarm_before_its_guard_fences(
        manager: Manager) -> None:
    manager.heartbeat("h1", {"url": "http://h1:8700", "instances": []})
    manager.liveness("h1", _hb("h1", 1, a=1.2), ("10.0.0.1", 8700))  # silent 1.8 s of 3
    alarms = [r.data for r in manager.store.list("alarm")]
    assert [a["faultType"] for a in alarms] == ["agent-unresponsive"]
    manager.liveness("h1", _hb("h1", 2, a=2.95), ("10.0.0.1", 8700))
    assert all(r.data.get("alarmClearedTime") for r in manager.store.list("alarm"))


async def test_the_second_path_reads_the_guards_reports(manager: Manager) -> None:
    """A host the manager no longer hears but a peer's guard heard a moment ago stays UP;
    one nobody heard is DOWN."""
    for h in ("h1", "h2", "h3"):
        manager.heartbeat(h, {"url": f"http://{h}:8700", "instances": []})
    manager.liveness("h2", _hb("h2", 1, p={"h1": 20}), ("10.0.0.2", 8700))
    manager.liveness("h3", _hb("h3", 1, p={}), ("10.0.0.3", 8700))
    quiet_since = manager.detector.last_heard("h1")
    assert quiet_since is not None
    manager.detector.heard("h1", now=quiet_since - 1.0)  # the manager's own path went quiet
    manager.detector.restore_state("h1", HostState.SUSPECTED)
    manager._confirming.add("h1")
    await manager.membership.confirm_host_loss("h1")
    assert manager.detector.state_of("h1") == "UP"
    manager.liveness("h2", _hb("h2", 2, p={"h1": 1500}), ("10.0.0.2", 8700))
    manager.detector.restore_state("h1", HostState.SUSPECTED)
    await manager.membership.confirm_host_loss("h1")
    assert manager.detector.state_of("h1") == "DOWN"


async def test_an_agent_report_inside_a_guard_stall_does_not_hide_the_stall(
        manager: Manager) -> None:
    """The CI failure of stop 18: the agent's status report (every 0.5 s) landed in the
    middle of a 0.25 s guard stall, the silence counted as two short ones, and the next,
    slightly longer stall had the host DOWN. The strain is the guard's own silence."""
    manager.heartbeat("h1", {"url": "http://h1:8700", "instances": []})
    t0 = time.monotonic()
    manager.liveness("h1", _hb("h1", 1), ("10.0.0.1", 8700), at=t0)
    manager.membership.host_heard("h1", None, at=t0 + 0.12)  # the agent's report, mid-stall
    manager.liveness("h1", _hb("h1", 2), ("10.0.0.1", 8700), at=t0 + 0.25)
    assert manager.detector.suspect_after("h1", t0 + 0.3) == pytest.approx(0.5)
    assert manager.detector.lease("h1", t0 + 0.3) == pytest.approx(0.75)
