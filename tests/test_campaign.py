"""The availability campaign's pure parts: which faults come when, what an agent stall
must cause, when the forwarder pair is a fair target, and how its watchers read the wire."""

from __future__ import annotations

import importlib.util
import random
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def _campaign() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nfvha_bench_campaign",
                                                  REPO / "benchmarks" / "campaign.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


camp = _campaign()


# -- which faults, how many, when -----------------------------------------------------------


def test_fault_counts_default_every_type_and_take_overrides() -> None:
    counts = camp.fault_counts("agent-stall=5, ingress-crash=0", 3)
    assert set(counts) == set(camp.FAULT_TYPES)
    assert counts["agent-stall"] == 5 and counts["ingress-crash"] == 0
    assert all(n == 3 for k, n in counts.items() if k not in ("agent-stall", "ingress-crash"))
    assert camp.fault_counts(None, 2) == dict.fromkeys(camp.FAULT_TYPES, 2)


@pytest.mark.parametrize(("spec", "says"), [
    ("agent-nap=1", "TYPE one of"), ("kill", "TYPE=N"), ("kill=two", "whole number"),
    ("hang=-1", "0 or more")])
def test_fault_counts_refuse_what_they_cannot_mean(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        camp.fault_counts(spec, 1)


def test_arrivals_spread_each_types_count_over_the_duration_and_repeat_with_the_seed() -> None:
    counts = {**dict.fromkeys(camp.FAULT_TYPES, 0), "kill": 400, "forwarder-kill": 100}
    a = camp.fault_arrivals(counts, 1000.0, random.Random(7))
    assert set(a) == {"kill", "forwarder-kill"}  # none asked for: none arrive
    assert len(a["kill"]) == 400 and len(a["forwarder-kill"]) == 100
    for times in a.values():
        assert times == sorted(times)
        assert 800 < times[-1] < 1200  # the count spread over the duration, on average
    assert a == camp.fault_arrivals(counts, 1000.0, random.Random(7))
    assert a != camp.fault_arrivals(counts, 1000.0, random.Random(8))


@pytest.mark.parametrize(("stall", "outcome"), [
    (0.1, "none"), (2.4, "none"), (2.5, "either"), (2.9, "either"), (3.29, "either"),
    (3.3, "fence"), (5.0, "fence")])
def test_a_stall_fences_only_past_the_agent_grace(stall: float, outcome: str) -> None:
    # grace 3 s, fed every 0.25 s, 0.3 s of tolerance either side
    assert camp.stall_outcome(stall, grace=3.0, feed_every=0.25, tolerance=0.3) == outcome


# -- the forwarder pair ----------------------------------------------------------------------


def _view(active: str | None = "in1", **roles: tuple[str, bool | None]) -> dict[str, object]:
    return {"active": active, "members": [{"id": i, "role": r, "in_sync": s}
                                          for i, (r, s) in roles.items()]}


def test_the_pair_is_a_target_only_whole_and_in_sync() -> None:
    assert camp.pair_in_sync(_view(in1=("active", True), in2=("standby", True))) == "in1"
    assert camp.pair_in_sync(_view(in1=("active", True), in2=("standby", False))) is None
    assert camp.pair_in_sync(_view(in1=("active", True), in2=("unknown", None))) is None
    assert camp.pair_in_sync(_view(in1=("active", True), in2=("demoted", True))) is None
    # the store names another active than the one that says so: a takeover under way
    assert camp.pair_in_sync(_view("in2", in1=("active", True), in2=("standby", True))) is None
    assert camp.pair_in_sync({}) is None


def test_replies_after_a_takeover_are_matched_to_the_requests_that_survived_it() -> None:
    # ACK? every 0.1 s; those sent at 0.3, 0.4 and 0.5 were in flight at the takeover
    sent = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    arrived = [0.105, 0.205, 0.605, 0.705]
    assert camp.align_acks(sent, arrived) == [(0, 0), (1, 1), (5, 2), (6, 3)]
    # a reply held (a checkpoint) past the next request still goes to its own request
    assert camp.align_acks([0.1, 0.2], [0.25, 0.26]) == [(0, 0), (1, 1)]
    # a request sent after the last reply arrived is not what it answered
    assert camp.align_acks([0.1, 0.2, 0.3], [0.15, 0.25]) == [(0, 0), (1, 1)]
    # more replies than requests (a duplicate): the earliest is left out
    assert camp.align_acks([0.1], [0.15, 0.16]) == [(0, 1)]


def test_a_flow_monitors_deficit_is_true_after_a_takeover_lost_requests() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        flow = camp.Flow("fmr", "flowmon", sink.getsockname(), ["fmr"], replay=True)
        try:
            for _ in range(30):  # 3 ACK? requests (datagrams 10, 20 and 30)
                flow._send_one()
            flow._on_ack(flow.sent_t[9] + 0.005, b"ACK 10")
            flow.hold_acks()  # the takeover: datagrams 11..25 are lost in flight
            for _ in range(20):  # 2 more: datagrams 40 and 50
                flow._send_one()
            flow._on_ack(flow.sent_t[39] + 0.005, b"ACK 25")
            flow._on_ack(flow.sent_t[49] + 0.005, b"ACK 35")
            assert flow.realign_acks(cut=flow.sent_t[49]) == 2  # ACK? 20 and 30 never came
        finally:
            flow.sock.close()
    assert [d for _, _, (d,) in flow.samples] == [0, 15, 15]
    assert not flow.holding


# -- the wire: ARP ---------------------------------------------------------------------------


def _reply(mac: str, ip: str) -> bytes:
    hw = bytes.fromhex(mac.replace(":", ""))
    return (b"\x02" * 6 + hw + struct.pack("!H", 0x0806) + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
            + hw + socket.inet_aton(ip) + b"\x02" * 6 + socket.inet_aton("10.0.0.1"))


def test_arp_requests_ask_for_the_address_and_only_replies_name_an_owner() -> None:
    me = bytes.fromhex("020000000001")
    req = camp.arp_request(me, "10.0.0.1", "10.0.0.3")
    assert req[:6] == b"\xff" * 6 and req[6:12] == me and req[20:22] == b"\x00\x01"
    assert socket.inet_ntoa(req[38:42]) == "10.0.0.3"
    assert camp.arp_answer(req) is None  # a request owns nothing
    assert camp.arp_answer(_reply("02:00:0a:00:00:05", "10.0.0.3")) == \
        ("10.0.0.3", "02:00:0a:00:00:05")
    assert camp.arp_answer(_reply("02:00:0a:00:00:05", "10.0.0.3")[:30]) is None


def test_two_macs_answering_one_round_are_two_owners() -> None:
    assert camp.double_owners({"10.0.0.3": {"a"}, "10.0.1.11": set()}) == {}
    assert camp.double_owners({"10.0.0.3": {"b", "a"}, "10.0.1.11": {"a"}}) == \
        {"10.0.0.3": ["a", "b"]}


def test_rounds_with_two_owners_make_one_violation_per_episode() -> None:
    up, svc = "10.0.0.3", "10.0.1.11"
    seen = camp.ArpRounds([up, svc])
    for t, a, b in [(0.00, {"in1"}, {"in1"}), (0.02, set(), {"in1"}),
                    (0.04, {"in1", "in2"}, {"in1"}), (0.06, {"in1", "in2"}, {"in2"}),
                    (0.08, {"in2"}, {"in2"}), (0.10, {"in2", "in1"}, {"in2"})]:
        seen.add(t, {up: a, svc: b})
    seen.close()  # the run ended in the middle of an episode: it counts
    assert seen.rounds == 6 and seen.unanswered == {up: 1, svc: 0}
    assert [(v["address"], v["start"], v["end"], v["rounds"], v["macs"])
            for v in seen.violations] == [(up, 0.04, 0.06, 2, ["in1", "in2"]),
                                          (up, 0.10, 0.10, 1, ["in1", "in2"])]
    assert [c for c in seen.changes if c[1] == svc] == [(0.0, svc, ("in1",)),
                                                        (0.06, svc, ("in2",))]


def test_the_new_owner_is_the_first_other_mac_answering_alone() -> None:
    up = "10.0.0.3"
    changes = [(1.00, up, ("in1",)), (1.00, "10.0.1.11", ("in1",)), (5.02, up, ()),
               (5.10, up, ("in1", "in2")), (5.12, up, ("in2",)), (9.0, up, ("in1",))]
    assert camp.owners_at(changes, up, 5.05) == ("in1",)  # before the fault: in1
    assert camp.first_new_owner(changes, up, 5.0, ("in1",)) == (5.12, "in2")
    assert camp.first_new_owner(changes, up, 6.0, ("in2",)) == (9.0, "in1")
    assert camp.first_new_owner(changes, up, 9.5, ("in1",)) is None


def test_a_flows_silence_is_its_longest_reply_gap_around_the_fault() -> None:
    replies = [9.0 + i * 0.01 for i in range(100)] + [10.35 + i * 0.01 for i in range(50)]
    gap = camp.silence(replies, t0=10.0, serving=10.2)
    assert gap is not None and gap == pytest.approx((9.99, 10.35))
    assert camp.silence([], 10.0, 10.2) == pytest.approx((9.0, 13.2))


def test_the_settled_deficit_is_what_most_replies_show_past_a_replays_transients() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        flow = camp.Flow("ch", "nat", sink.getsockname(), ["ch1"], replay=True)
        flow.sock.close()
    # right after a replay: new datagrams counted before the replayed ones, then settled
    flow.samples = [(1.0, 1.0, (309,)), (1.1, 0.2, (-16,)), (1.1, 1.1, (118,))] \
        + [(1.2 + i / 100, 1.2 + i / 100, (67,)) for i in range(50)]
    assert flow.settled_deficit("ch1", 1.0, 3.0) == 67
    assert flow.settled_deficit("ch1", 5.0, 6.0) is None
    # as common: the later one
    flow.samples = [(1.0, 1.0, (5,)), (1.1, 1.1, (7,))]
    assert flow.settled_deficit("ch1", 0.0, 2.0) == 7
