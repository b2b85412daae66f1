"""The testbed's two networks: where each daemon's address lies (no root needed)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from nfvha.errors import ConfigError
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
