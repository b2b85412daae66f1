"""The testbed's two networks: where each daemon's address lies (no root needed)."""

from __future__ import annotations

import ipaddress

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
