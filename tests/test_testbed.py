"""The testbed's two networks: where each daemon's address lies (no root needed)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.errors import ConfigError, NfvhaError
from nfvha.testbed import Testbed


def test_daemons_get_management_addresses_and_vnfs_data_ones() -> None:
    """Every control URL is on the management subnet and none on the data one: a VNF's
    connected route then covers no daemon, whatever the filters do."""
    tb = Testbed(name="x", n_hosts=3, subnet="10.123.0.0/16", with_manager=True,
                 with_forwarder=True)
    data, mgmt = ipaddress.ip_network(tb.subnet), ipaddress.ip_network(str(tb.mgmt_subnet))
    assert str(mgmt) == "172.31.123.0/24" and not mgmt.overlaps(data)
    urls = [tb.manager_url, tb.forwarder_url,
            *(f"http://{tb.host_address(i)}:8700" for i in range(1, 4))]
    for url in urls:
        ip = ipaddress.ip_address(url.split("//")[1].rsplit(":", 1)[0])
        assert ip in mgmt and ip not in data, url
    # What VNFs and clients use stays on the data network.
    for addr in (tb.gateway, tb.ingress_address, tb.service_address(1),
                 tb.vnf_address(1).split("/")[0]):
        assert ipaddress.ip_address(addr) in data, addr
    assert tb.bridge != tb.mgmt_bridge


@pytest.mark.parametrize("mgmt", ["10.123.5.0/24", "10.0.0.0/8", "172.31.0.0/28"])
def test_a_management_subnet_that_overlaps_or_is_too_small_is_refused(mgmt: str) -> None:
    with pytest.raises(ConfigError, match="management subnet"):
        Testbed(name="x", subnet="10.123.0.0/16", mgmt_subnet=mgmt)


@pytest.mark.parametrize("n", [2, 4, 0, 7])
def test_a_cluster_of_no_quorum_gain_is_refused(n: int) -> None:
    with pytest.raises(ConfigError, match=r"managers=\d+: .*use 1, 3 or 5") as err:
        Testbed(name="x", managers=n)
    if n in (2, 4):
        assert "majority" in str(err.value)


@pytest.mark.parametrize("n", [3, 5])
def test_management_hosts_lie_between_the_ingress_and_the_compute_hosts(n: int) -> None:
    tb = Testbed(name="x", n_hosts=3, subnet="10.123.0.0/16", with_manager=True,
                 with_forwarder=True, managers=n)
    data, mgmt = ipaddress.ip_network(tb.subnet), ipaddress.ip_network(str(tb.mgmt_subnet))
    others = {tb.mgmt_gateway, tb.ingress_mgmt_address, *(tb.host_address(i)
                                                           for i in range(1, 4))}
    mine = [tb.manager_host_address(k) for k in range(1, n + 1)]
    assert mine == [f"172.31.123.{5 + k}" for k in range(1, n + 1)]
    assert not others & set(mine) and all(ipaddress.ip_address(a) in mgmt for a in mine)
    datas = [tb.manager_data_address(k) for k in range(1, n + 1)]
    assert datas == [f"10.123.0.{5 + k}" for k in range(1, n + 1)]
    assert not {tb.gateway, tb.ingress_address} & set(datas)
    assert all(ipaddress.ip_address(a) in data for a in datas)
    assert ipaddress.ip_address(tb.vnf_address(1).split("/")[0]) > max(
        ipaddress.ip_address(a) for a in datas)
    assert tb.manager_urls == [f"https://{a}:8600" for a in mine]
    assert tb.manager_url == tb.manager_urls[0]
    assert tb.store_url == "etcd://" + ",".join(f"{a}:2379" for a in mine)


def test_one_manager_keeps_the_single_layout() -> None:
    tb = Testbed(name="x", subnet="10.123.0.0/16", with_manager=True)
    assert not tb.clustered and tb.manager_urls == ["https://172.31.123.1:8600"]
    assert tb.etcd_endpoints == [] and tb.describe()["managers"] == []
    assert tb.describe()["manager_urls"] == [tb.manager_url]


def test_cluster_daemons_are_told_of_each_other(tmp_path: Path) -> None:
    """etcd members form one static cluster, each manager campaigns as its member on
    all of etcd, and each agent gets every manager."""
    from nfvha.testbed import ManagerHost, TestbedHost

    tb = Testbed(name="x", n_hosts=1, subnet="10.123.0.0/16", with_manager=True,
                 managers=3, state_dir=tmp_path)
    tb.dir.mkdir()
    for k in range(1, 4):
        a = tb.manager_host_address(k)
        tb.manager_hosts[f"m{k}"] = ManagerHost(
            member_id=f"m{k}", netns=f"x-m{k}", address=a,
            data_address=tb.manager_data_address(k), url=f"https://{a}:8600",
            cgroup=f"x/m{k}", uplink=f"x-m{k}", mgmt_uplink=f"x-m{k}m")
    m2 = tb.manager_hosts["m2"]
    etcd = tb._etcd_argv(m2)
    assert _opt(etcd, "--initial-cluster") == ",".join(
        f"m{k}=http://172.31.123.{5 + k}:2380" for k in range(1, 4))
    assert _opt(etcd, "--listen-client-urls") == "http://172.31.123.7:2379"
    assert _opt(etcd, "--data-dir") == str(tb.dir / "etcd-m2")
    assert _opt(etcd, "--election-timeout") == "500"  # for the 1 s leader lease
    mgr = tb._cluster_manager_argv(m2)
    assert _opt(mgr, "--store") == tb.store_url and _opt(mgr, "--member-id") == "m2"
    assert _opt(mgr, "--listen") == "172.31.123.7:8600"
    assert _opt(mgr, "--advertise-url") == "https://172.31.123.7:8600"
    assert _opt(mgr, "--election-ttl") == "1"
    assert _opt(mgr, "--secret-key-file") == str(tb.dir / "manager.key")  # one for all
    reserved = [mgr[i + 1] for i, a in enumerate(mgr) if a == "--reserve-address"]
    assert [r.split("=")[0] for r in reserved] == ["10.123.0.1", "10.123.0.6", "10.123.0.7",
                                                   "10.123.0.8"]
    h = TestbedHost(host_id="h1", netns="x-h1", uplink="x-h1", address="172.31.123.11",
                    url="https://172.31.123.11:8700", cgroup="x/h1")
    assert _opt(tb._agent_argv(h), "--manager") == ",".join(tb.manager_urls)


def _opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# -- the forwarder pair: two ingress hosts --------------------------------------------


def _pair(tmp_path: Path, **kw: Any) -> Testbed:
    tb = Testbed(name="pairbed8", subnet="10.123.0.0/16", with_manager=True,
                 with_forwarder=True, state_dir=tmp_path, **kw)
    tb.dir.mkdir(parents=True)
    return tb


def test_a_pair_runs_on_two_ingress_hosts_with_an_upstream_address_beside(
        tmp_path: Path) -> None:
    """in1 keeps the single forwarder's addresses, in2 is .4 on both networks, and the
    upstream address .0.3 is the pair's, configured by neither host."""
    tb = _pair(tmp_path)
    assert tb.forwarders == 2 and tb.paired and tb.ingress_ids == ["in1", "in2"]
    in1, in2 = (tb._ingress_plan(i) for i in tb.ingress_ids)
    assert (in1.mgmt_address, in1.data_address) == ("172.31.123.5", "10.123.0.5")
    assert (in2.mgmt_address, in2.data_address) == ("172.31.123.4", "10.123.0.4")
    assert tb.upstream_address == "10.123.0.3"
    assert tb.forwarder_urls == {"in1": "https://172.31.123.5:8800",
                                 "in2": "https://172.31.123.4:8800"}
    assert tb.forwarder_url == tb.forwarder_urls["in1"] == in1.url
    assert (tb.ingress_address, tb.ingress_mgmt_address) == (in1.data_address,
                                                             in1.mgmt_address)
    assert tb.describe()["forwarder_urls"] == tb.forwarder_urls
    # Named after the testbed (a teardown finds them by prefix), within the kernel's
    # 15 characters for the longest testbed name, and apart from every other link.
    names = [n for g in (in1, in2) for n in (g.netns, *g.uplinks)]
    assert all(n.startswith("pairbed8-") and len(n) <= 15 for n in names)
    assert len(set(in1.uplinks + in2.uplinks)) == 4
    others = {tb.bridge, tb.mgmt_bridge, "pairbed8-i0", "pairbed8-i1", "pairbed8-i0m",
              "pairbed8-i1m", *(f"pairbed8-{p}{k}" for p in "htuvwm" for k in range(1, 6))}
    assert not others & set(in1.uplinks + in2.uplinks)
    assert (in1.cgroup, in2.cgroup) == ("pairbed8/forwarder-in1", "pairbed8/forwarder-in2")
    assert in1.pidfile == str(tb.dir / "forwarder-in1.pid")


def test_each_forwarder_of_a_pair_knows_its_id_its_peer_and_the_managers(
        tmp_path: Path) -> None:
    tb = _pair(tmp_path, managers=3)
    in2 = tb._ingress_plan("in2")
    argv = tb._forwarder_argv(in2)
    # Supervised, as agents are: killed, it is started again; its pid in a file.
    assert _opt(argv, "--pidfile") == str(tb.dir / "forwarder-in2.pid")
    assert _opt(argv, "--delay") == str(tb.agent_restart_delay)
    fwd = argv[argv.index("--") + 1:]
    assert fwd[1:4] == ["-m", "nfvha", "forwarder"]
    assert _opt(fwd, "--id") == "in2"
    assert _opt(fwd, "--listen") == "172.31.123.4:8800"
    assert _opt(fwd, "--mirror-listen") == "172.31.123.4:8801"
    assert _opt(fwd, "--peer") == "172.31.123.5:8801"
    assert _opt(fwd, "--manager") == ",".join(tb.manager_urls) and len(tb.manager_urls) == 3
    assert _opt(fwd, "--upstream-ip") == "10.123.0.3"
    assert (_opt(fwd, "--interface"), _opt(fwd, "--prefixlen")) == ("eth0", "16")
    assert _opt(fwd, "--tls-cert") == str(tb.pki_dir / "forwarder-in2.pem")  # names it
    assert "--token-file" not in fwd
    plain = Testbed(name="pairbed8", subnet="10.123.0.0/16", with_forwarder=True, tls=False,
                    agent_restart_delay=None, state_dir=tmp_path)
    fwd = plain._forwarder_argv(plain._ingress_plan("in1"))
    assert fwd[1:4] == ["-m", "nfvha", "forwarder"]  # no supervisor asked for
    assert _opt(fwd, "--token-file") == str(plain.token_file) and "--tls-cert" not in fwd
    # Even with no manager running yet: the pair names its active only through them.
    assert _opt(fwd, "--manager") == ",".join(plain.manager_urls)
    assert plain._ingress_plan("in1").pidfile == ""


def test_the_managers_know_both_forwarders_and_refuse_their_addresses_to_vnfs(
        tmp_path: Path) -> None:
    tb = _pair(tmp_path)
    mgr = tb._manager_argv("172.31.123.1:8600", ["--db", "x.db"])
    assert _opt(mgr, "--forwarder") == ("in1=https://172.31.123.5:8800,"
                                        "in2=https://172.31.123.4:8800")
    reserved = [mgr[i + 1].split("=")[0] for i, a in enumerate(mgr) if a == "--reserve-address"]
    assert reserved == ["10.123.0.1", "10.123.0.5", "10.123.0.4", "10.123.0.3"]


def test_a_single_forwarder_keeps_its_layout(tmp_path: Path) -> None:
    tb = Testbed(name="x", subnet="10.123.0.0/16", with_manager=True, with_forwarder=True,
                 forwarders=1, state_dir=tmp_path)
    assert not tb.paired and tb.ingress_ids == ["in1"] and tb.ingress_netns == "x-in"
    g = tb._ingress_plan("in1")
    assert (g.netns, g.uplink, g.mgmt_uplink, g.cgroup, g.label, g.pidfile) == (
        "x-in", "x-i0", "x-i0m", "x/forwarder", "forwarder", "")
    fwd = tb._forwarder_argv(g)
    assert fwd[1:4] == ["-m", "nfvha", "forwarder"]
    assert "--id" not in fwd and "--peer" not in fwd and "--upstream-ip" not in fwd
    assert _opt(fwd, "--tls-cert") == str(tb.pki_dir / "forwarder.pem")
    mgr = tb._manager_argv("172.31.123.1:8600", ["--db", "x.db"])
    assert _opt(mgr, "--forwarder") == "https://172.31.123.5:8800"
    reserved = [mgr[i + 1] for i, a in enumerate(mgr) if a == "--reserve-address"]
    assert reserved[1] == "10.123.0.5=the steering forwarder (its data side)"
    assert tb.forwarder_urls == {"in1": tb.forwarder_url}


@pytest.mark.parametrize("n", [0, 3])
def test_forwarders_other_than_one_or_a_pair_are_refused(n: int) -> None:
    with pytest.raises(ConfigError, match=rf"forwarders={n}: use 1 .* or 2"):
        Testbed(name="x", forwarders=n)


def test_the_ingress_hosts_are_saved_and_loaded(tmp_path: Path) -> None:
    tb = _pair(tmp_path)
    tb.token_file.write_text("t")
    tb.ingress_hosts = {i: tb._ingress_plan(i) for i in tb.ingress_ids}
    tb.ingress_hosts["in2"].state, tb.ingress_hosts["in1"].pid = "down", 4242
    tb._save()
    back = Testbed.load(tb.name, tmp_path)
    assert back.forwarders == 2 and back.ingress_hosts == tb.ingress_hosts
    # A testbed saved before pairs had one forwarder, with no ingress hosts recorded.
    saved = json.loads((tb.dir / "testbed.json").read_text())
    del saved["forwarders"], saved["ingress_hosts"]
    (tb.dir / "testbed.json").write_text(json.dumps(saved))
    old = Testbed.load(tb.name, tmp_path)
    assert old.forwarders == 1 and list(old.ingress_hosts) == ["in1"]
    assert old.ingress_hosts["in1"].netns == "pairbed8-in"


class Forwarders(httpx.MockTransport):
    """Forwarders by their management address's last octet (in1 .5, in2 .4): each
    answers GET /v1/pair with its view, a status code, or an exception."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.seen: list[httpx.Request] = []
        super().__init__(self.answer)

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        assert request.url.path == "/v1/pair"
        a = self.answers[{"5": "in1", "4": "in2"}[request.url.host.rsplit(".", 1)[1]]]
        if isinstance(a, Exception):
            raise a
        if isinstance(a, int):
            return httpx.Response(a)
        return httpx.Response(200, json=a)


def _up(tb: Testbed) -> Testbed:
    tb.ingress_hosts = {i: tb._ingress_plan(i) for i in tb.ingress_ids}
    return tb


def _view(i: str, role: str, term: int = 1) -> dict[str, Any]:
    return {"id": i, "role": role, "term": term}


def test_the_active_forwarder_is_the_one_that_says_so(tmp_path: Path) -> None:
    tb = _up(_pair(tmp_path, tls=False))
    tb.token = "daemon-token"
    t = Forwarders(in1=_view("in1", "standby"), in2=_view("in2", "active"))
    assert asyncio.run(tb.active_forwarder(transport=t)) == "in2"
    # Asked as the manager: without TLS, with the daemons' token.
    assert {r.headers["authorization"] for r in t.seen} == {"Bearer daemon-token"}
    # Two say so while a deposed one has not heard: the higher term is the active one.
    t = Forwarders(in1=_view("in1", "active", 4), in2=_view("in2", "active", 5))
    assert asyncio.run(tb.active_forwarder(transport=t)) == "in2"
    # None says so (an election, a pair without the API yet, both unreachable).
    for in1, in2 in [(_view("in1", "demoted"), _view("in2", "standby")), (404, 404),
                     (httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"))]:
        assert asyncio.run(tb.active_forwarder(transport=Forwarders(in1=in1, in2=in2))) is None
    # An unreachable one does not hide the other; a host that is down is not asked.
    t = Forwarders(in1=httpx.ConnectError("refused"), in2=_view("in2", "active"))
    assert asyncio.run(tb.active_forwarder(transport=t)) == "in2"
    tb.ingress_hosts["in1"].state = "down"
    t = Forwarders(in2=_view("in2", "active"))
    assert asyncio.run(tb.active_forwarder(transport=t)) == "in2"
    assert [r.url.host for r in t.seen] == ["172.31.123.4"]
    assert asyncio.run(tb.pair_views(transport=Forwarders(in2=503))) == {"in2": "answered 503"}


def test_with_tls_the_forwarders_are_asked_with_the_managers_certificate(
        tmp_path: Path) -> None:
    tb = _up(_pair(tmp_path))
    tb.token = "daemon-token"
    tb._make_pki()
    t = Forwarders(in1=_view("in1", "active", 2), in2=_view("in2", "standby", 2))
    assert asyncio.run(tb.active_forwarder(transport=t)) == "in1"
    assert all("authorization" not in r.headers for r in t.seen)  # the certificate says


def test_kill_forwarder_kills_the_forwarder_not_its_supervisor(tmp_path: Path) -> None:
    """By id, or as the forwarders name themselves; a name that fits none is refused."""
    tb = _up(_pair(tmp_path, tls=False))
    victim = subprocess.Popen(["sleep", "60"])
    try:
        Path(tb.ingress_hosts["in2"].pidfile).write_text(f"{victim.pid}\n")
        views = {"in1": _view("in1", "active", 3), "in2": _view("in2", "standby", 3)}

        async def pair_views() -> dict[str, Any]:
            return views

        tb.pair_views = pair_views
        assert asyncio.run(tb.kill_forwarder("standby")) == ("in2", victim.pid)
        assert victim.wait(5) == -signal.SIGKILL
        assert tb.forwarder_process("in2") == victim.pid  # the supervisor writes the next
        with pytest.raises(NfvhaError, match=r"in2: its forwarder \(pid \d+\) is not running"):
            asyncio.run(tb.kill_forwarder("in2"))
        views["in2"] = "ConnectError"  # type: ignore[assignment]
        views["in1"]["role"] = "demoted"
        with pytest.raises(NfvhaError, match=r"no forwarder says it is active \(in1: demoted; "
                                             r"in2: ConnectError\); name one: in1, in2"):
            asyncio.run(tb.kill_forwarder("active"))
        with pytest.raises(ConfigError, match="no forwarder 'in3'"):
            asyncio.run(tb.kill_forwarder("in3"))
        tb.ingress_hosts["in2"].state = "down"
        with pytest.raises(ConfigError, match="ingress host in2 is down; power it on"):
            asyncio.run(tb.kill_forwarder("in2"))
    finally:
        victim.kill()
        victim.wait()


def test_a_single_forwarder_is_the_active_one_and_has_no_standby(tmp_path: Path) -> None:
    tb = _up(Testbed(name="x", with_forwarder=True, forwarders=1, state_dir=tmp_path))
    assert asyncio.run(tb._forwarder_named("active")) == "in1"
    with pytest.raises(ConfigError, match="one forwarder, which has no standby"):
        asyncio.run(tb.kill_forwarder("standby"))
    with pytest.raises(ConfigError, match="no ingress host 'in2'"):
        asyncio.run(tb.crash_ingress_host("in2"))
    with pytest.raises(ConfigError, match="runs no forwarder"):
        Testbed(name="y").ingress_host("in1")
