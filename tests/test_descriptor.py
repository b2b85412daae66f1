"""VNF descriptors: good ones load with their defaults, bad ones fail naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nfvha.descriptor import (
    HaPolicy,
    HealthProbe,
    VnfDescriptor,
    load_descriptor,
    parse_descriptor,
    parse_size,
)
from nfvha.errors import DescriptorError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MIB = 1024**2


def minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "fw",
        "command": ["python3", "fw.py"],
        "network": {"address": "10.250.1.10/16"},
    }
    data.update(overrides)
    return data


def error_of(data: Any) -> str:
    with pytest.raises(DescriptorError) as exc_info:
        parse_descriptor(data)
    return str(exc_info.value)


# -- valid descriptors ---------------------------------------------------------------


def test_minimal_descriptor_gets_safe_defaults() -> None:
    d = parse_descriptor(minimal())

    assert d.id == "fw"
    assert d.command == ["python3", "fw.py"]
    assert d.network.ip == "10.250.1.10"
    assert d.resources.memory == 256 * MIB
    assert d.network_lock == "auto"
    # Every failure type is covered by default, and host loss never tries the lost host.
    assert set(d.ha.recovery) == {"process-exit", "hang", "host-loss"}
    assert "restore-local" not in d.ha.recovery["host-loss"]
    assert d.ha.probe.type == "none"


def test_full_descriptor_keeps_every_field() -> None:
    d = parse_descriptor(minimal(
        name="Firewall", version="2.1", provider="acme", workdir="/srv", env={"MODE": "strict"},
        network={"address": "10.250.1.11/16", "mac": "02:AA:BB:CC:DD:EE",
                 "gateway": "10.250.0.1",
                 "service": {"address": "10.250.2.11", "port": 5001, "exactly_once": True}},
        resources={"memory": "64Mi", "cpu": 0.25},
        network_lock="skip",
        ha={"checkpoint_interval": 0.5, "retention": 5, "backups": 2,
            "recovery": {"hang": ["restart"]},
            "probe": {"type": "tcp", "port": 8080, "timeout": 0.3}, "replay": True},
    ))

    assert (d.name, d.version, d.provider, d.workdir) == ("Firewall", "2.1", "acme", "/srv")
    assert d.env == {"MODE": "strict"}
    assert d.network.effective_mac == "02:aa:bb:cc:dd:ee"
    assert d.network.gateway == "10.250.0.1"
    assert d.network.service is not None
    assert (d.network.service.address, d.network.service.port) == ("10.250.2.11", 5001)
    assert d.network.service.exactly_once
    assert d.ha.replay
    assert (d.resources.memory, d.resources.cpu) == (64 * MIB, 0.25)
    assert d.network_lock == "skip"
    assert d.ha.backups == 2
    assert d.ha.recovery == {"hang": ["restart"]}
    assert (d.ha.probe.type, d.ha.probe.port, d.ha.probe.timeout) == ("tcp", 8080, 0.3)


@pytest.mark.parametrize("name", ["flowmon.yaml", "udpnat.yaml"])
def test_shipped_examples_load(name: str) -> None:
    d = load_descriptor(EXAMPLES / name)

    assert d.id == name.removesuffix(".yaml")
    assert d.resources.memory == 128 * MIB
    assert d.ha.probe.type == "udp"
    assert d.ha.probe.port is not None
    assert all(chain[-1] == "restart" for chain in d.ha.recovery.values())


def test_udpnat_example_uses_standby_for_host_loss() -> None:
    d = load_descriptor(EXAMPLES / "udpnat.yaml")

    assert d.ha.recovery["host-loss"][0] == "standby"


def test_vnfd_root_is_accepted() -> None:
    assert parse_descriptor({"vnfd": minimal()}) == parse_descriptor(minimal())


def test_descriptor_is_immutable() -> None:
    d = parse_descriptor(minimal())

    with pytest.raises(ValueError):
        d.id = "other"


# -- sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("128Mi", 128 * MIB),
    ("1G", 1_000_000_000),
    ("1Gi", 1024**3),
    ("8192k", 8_192_000),
    ("1.5Gi", int(1.5 * 1024**3)),
    (" 64 MB ", 64_000_000),
    (8 * MIB, 8 * MIB),
    ("8388608", 8 * MIB),
])
def test_sizes(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected
    assert parse_descriptor(minimal(resources={"memory": value})).resources.memory == expected


@pytest.mark.parametrize("value", ["lots", "12 parsecs", "1T", "-5Mi"])
def test_bad_size_names_the_field(value: str) -> None:
    msg = error_of(minimal(resources={"memory": value}))

    assert "resources.memory" in msg
    assert "256Mi" in msg  # says what a good size looks like


def test_memory_below_4mi_is_rejected() -> None:
    assert "at least 4Mi" in error_of(minimal(resources={"memory": "1Mi"}))


# -- network identity ------------------------------------------------------------------


def test_mac_derived_from_ip_is_stable_unicast_and_locally_administered() -> None:
    a = parse_descriptor(minimal()).network
    b = parse_descriptor({"vnfd": minimal()}).network
    other = parse_descriptor(minimal(network={"address": "10.250.1.11/16"})).network

    mac = a.effective_mac
    assert mac == "02:00:0a:fa:01:0a"
    assert mac == b.effective_mac
    assert mac != other.effective_mac
    first = int(mac.split(":")[0], 16)
    assert first & 0x01 == 0  # unicast
    assert first & 0x02 == 0x02  # locally administered
    # And it passes the descriptor's own MAC validation.
    assert parse_descriptor(minimal(network={"address": "10.250.1.10/16", "mac": mac}))


def test_address_with_netmask_is_normalised_to_prefix() -> None:
    d = parse_descriptor(minimal(network={"address": "10.250.1.10/255.255.0.0"}))

    assert d.network.address == "10.250.1.10/16"
    assert d.network.ip == "10.250.1.10"


# -- errors name the field -------------------------------------------------------------


@pytest.mark.parametrize("address", ["10.250.1.10", "10.250.1.10/33", "fd00::1/64", "host"])
def test_bad_address_names_field_and_expected_form(address: str) -> None:
    msg = error_of(minimal(network={"address": address}))

    assert "network.address" in msg
    assert "with prefix" in msg
    assert repr(address) in msg


def test_unknown_field_typo_is_named() -> None:
    msg = error_of(minimal(resources={"memroy": "128Mi"}))

    assert "resources.memroy" in msg
    assert "unknown field" in msg


def test_missing_required_field_is_named() -> None:
    data = minimal()
    del data["network"]

    assert "network: required field is missing" in error_of(data)


@pytest.mark.parametrize("bad_id", ["FW", "-fw", "fw-", "fw_1", "a" * 33, ""])
def test_bad_id_is_named(bad_id: str) -> None:
    msg = error_of(minimal(id=bad_id))

    assert msg.startswith("invalid VNF descriptor: id:")
    assert repr(bad_id) in msg


@pytest.mark.parametrize("good_id", ["a", "fw-1", "a" * 32, "0day"])
def test_good_ids(good_id: str) -> None:
    assert parse_descriptor(minimal(id=good_id)).id == good_id


@pytest.mark.parametrize("command", [[], [""], ["  ", "x"]])
def test_empty_command_is_named(command: list[str]) -> None:
    assert "command" in error_of(minimal(command=command))


def test_command_as_string_is_rejected() -> None:
    # A string would be split on spaces somewhere; the descriptor insists on a list.
    assert "command" in error_of(minimal(command="python3 fw.py"))


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "02:00:0a:fa:01",
                                 "02-00-0a-fa-01-0a"])
def test_bad_mac_is_named(mac: str) -> None:
    msg = error_of(minimal(network={"address": "10.250.1.10/16", "mac": mac}))

    assert "network.mac" in msg
    assert "unicast MAC" in msg


def test_bad_gateway_is_named() -> None:
    assert "network.gateway" in error_of(
        minimal(network={"address": "10.250.1.10/16", "gateway": "10.250.0"}))


def test_replay_needs_a_service_address() -> None:
    msg = error_of(minimal(ha={"replay": True}))

    assert "ha.replay needs network.service" in msg


@pytest.mark.parametrize("service", [{"address": "10.250.2.11/16", "port": 5001},
                                     {"address": "10.250.2.11", "port": 0},
                                     {"address": "10.250.2.11"}])
def test_bad_service_address_is_named(service: dict[str, Any]) -> None:
    msg = error_of(minimal(network={"address": "10.250.1.10/16", "service": service}))

    assert "network.service." in msg


def test_unknown_failure_type_in_recovery_is_named() -> None:
    msg = error_of(minimal(ha={"recovery": {"crash": ["restart"]}}))

    assert "ha.recovery" in msg
    assert "'crash'" in msg
    assert "process-exit, hang, host-loss" in msg


def test_unknown_strategy_in_recovery_is_rejected() -> None:
    assert "ha.recovery.hang" in error_of(minimal(ha={"recovery": {"hang": ["reboot"]}}))


def test_empty_strategy_list_is_rejected() -> None:
    assert "recovery.hang needs at least one strategy" in error_of(
        minimal(ha={"recovery": {"hang": []}}))


@pytest.mark.parametrize("kind", ["udp", "tcp", "http"])
def test_network_probe_without_port_is_named(kind: str) -> None:
    msg = error_of(minimal(ha={"probe": {"type": kind}}))

    assert "ha.probe" in msg
    assert f"a {kind} probe needs a port" in msg


def test_exec_probe_without_command_is_named() -> None:
    msg = error_of(minimal(ha={"probe": {"type": "exec"}}))

    assert "ha.probe" in msg
    assert "an exec probe needs a command" in msg


def test_probe_and_policy_models_validate_on_their_own() -> None:
    with pytest.raises(ValueError, match="needs a port"):
        HealthProbe(type="udp")
    assert HaPolicy().backups == 1
    assert isinstance(parse_descriptor(minimal()), VnfDescriptor)


def test_several_errors_are_all_reported() -> None:
    msg = error_of(minimal(id="BAD", network={"address": "10.0.0.1"}))

    assert "id:" in msg
    assert "network.address:" in msg


@pytest.mark.parametrize("data", [None, [], "vnfd", 42])
def test_non_mapping_is_rejected(data: Any) -> None:
    assert "expected a mapping at the top level" in error_of(data)


# -- files -----------------------------------------------------------------------------


def test_missing_file_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(DescriptorError, match="cannot read descriptor") as exc_info:
        load_descriptor(path)
    assert str(path) in str(exc_info.value)


def test_invalid_yaml_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("vnfd:\n  id: fw\n  command: [python3\n")

    with pytest.raises(DescriptorError, match="not valid YAML") as exc_info:
        load_descriptor(path)
    assert str(path) in str(exc_info.value)


def test_load_descriptor_accepts_str_path(tmp_path: Path) -> None:
    path = tmp_path / "fw.yaml"
    path.write_text("vnfd:\n  id: fw\n  command: [./fw]\n  network: {address: 10.0.0.5/8}\n")

    assert load_descriptor(str(path)).network.effective_mac == "02:00:0a:00:00:05"


# -- containment: volumes and security ------------------------------------------------


def test_a_vnf_is_contained_unless_its_descriptor_says_otherwise() -> None:
    d = parse_descriptor(minimal())
    assert d.security.private_root and d.security.seccomp == "default"
    assert d.security.run_as is None and d.volumes == []
    caps = d.security.effective_capabilities()
    assert "NET_BIND_SERVICE" in caps and "NET_RAW" in caps
    assert not {"SYS_ADMIN", "SYS_MODULE", "NET_ADMIN", "SYS_PTRACE", "SYS_TIME"} & set(caps)


def test_capabilities_are_widened_and_narrowed_by_name() -> None:
    d = parse_descriptor(minimal(security={"capabilities": ["cap_net_admin"],
                                           "drop_capabilities": ["NET_RAW"]}))
    caps = d.security.effective_capabilities()
    assert "NET_ADMIN" in caps and "NET_RAW" not in caps
    only = parse_descriptor(minimal(security={"drop_capabilities": ["ALL"],
                                              "capabilities": ["NET_BIND_SERVICE"]}))
    assert only.security.effective_capabilities() == ["NET_BIND_SERVICE"]


@pytest.mark.parametrize(("security", "field", "says"), [
    ({"capabilities": ["NET_ADMN"]}, "security.capabilities", "unknown capability 'NET_ADMN'"),
    ({"drop_capabilities": ["everything"]}, "security.drop_capabilities",
     "unknown capability"),
    ({"run_as": "nobody"}, "security.run_as", "numeric uid"),
    ({"run_as": "1:2:3"}, "security.run_as", "numeric uid"),
    ({"run_as": "4294967295"}, "security.run_as", "numeric uid"),
    ({"seccomp": "strict"}, "security.seccomp", ""),
    ({"privileged": True}, "security.privileged", ""),
])
def test_bad_security_settings_name_the_field(security: dict[str, Any], field: str,
                                              says: str) -> None:
    msg = error_of(minimal(security=security))
    assert field in msg and says in msg


def test_a_volume_defaults_to_read_only_at_its_own_path() -> None:
    d = parse_descriptor(minimal(volumes=[{"source": "/srv/fw//rules/"},
                                          {"source": "/var/cache/x", "target": "/opt/x",
                                           "read_only": False}]))
    assert [(v.source, v.inside, v.read_only) for v in d.volumes] == [
        ("/srv/fw/rules", "/srv/fw/rules", True), ("/var/cache/x", "/opt/x", False)]


@pytest.mark.parametrize(("volume", "says"), [
    ({"source": "relative/dir"}, "absolute path"),
    ({"source": "/srv/../etc"}, "absolute path"),
    ({"source": "/srv/a", "target": "/"}, "cannot be a volume's target"),
    ({"source": "/srv/a", "target": "/etc/nfvha"}, "cannot be a volume's target"),
    ({"source": "/srv/a", "target": "/usr"}, "cannot be a volume's target"),
    ({"source": "/srv/a", "target": "/proc/sys"}, "cannot be a volume's target"),
    ({"source": "/srv/a", "target": "/tmp/x"}, "cannot be a volume's target"),
    ({"source": "/srv/a", "target": "/lib64"}, "cannot be a volume's target"),
    ({"source": "/srv/a", "target": "/.stdout"}, "cannot be a volume's target"),
])
def test_bad_volumes_are_refused_with_what_to_do(volume: dict[str, Any], says: str) -> None:
    msg = error_of(minimal(volumes=[volume]))
    assert "volumes" in msg and says in msg


def test_two_volumes_at_one_target_are_refused() -> None:
    msg = error_of(minimal(volumes=[{"source": "/srv/a", "target": "/opt/x"},
                                    {"source": "/srv/b", "target": "/opt/x"}]))
    assert "volumes" in msg and "/opt/x" in msg


def test_a_workdir_in_the_sandboxs_own_root_is_refused() -> None:
    assert "workdir" in error_of(minimal(workdir="/etc"))


def test_in_a_file_a_relative_volume_source_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "vnfs").mkdir()
    f = tmp_path / "fw.yaml"
    f.write_text("vnfd:\n  id: fw\n  command: [python3, /opt/vnfs/fw.py]\n"
                 "  network: {address: 10.250.1.10/16}\n"
                 "  volumes: [{source: vnfs, target: /opt/vnfs}]\n")
    d = load_descriptor(f)
    assert d.volumes[0].source == str(tmp_path / "vnfs")
    # Over the API there is no file to be relative to.
    assert "absolute path" in error_of({**minimal(), "volumes": [{"source": "vnfs"}]})


def test_all_capabilities_is_every_one_and_the_host_fs_needs_sys_admin() -> None:
    d = parse_descriptor(minimal(security={"capabilities": ["ALL"], "private_root": False}))
    assert {"SYS_ADMIN", "NET_ADMIN", "CHECKPOINT_RESTORE"} <= set(
        d.security.effective_capabilities())
    # Without its own /proc a VNF can be checkpointed only if CRIU may mount one.
    msg = error_of(minimal(security={"private_root": False}))
    assert "security" in msg and "SYS_ADMIN" in msg
