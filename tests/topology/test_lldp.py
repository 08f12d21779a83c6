"""Tests for the lldpd neighbour parser (json0, json and keyvalue output)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from topology.errors import ParseError, WrongFormatError
from topology.lldp import LldpCapture, LldpNeighbor, looks_like_lldp, parse_lldp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lldp"
HOST = "gpu-h100-017"
RAIL_NICS = ["enp26s0np0", "enp60s0np0", "enp77s0np0", "enp94s0np0",
             "enp156s0np0", "enp188s0np0", "enp204s0np0", "enp220s0np0"]


def fixture(name: str) -> LldpCapture:
    return parse_lldp((FIXTURES / name).read_text(encoding="utf-8"), name)


def parse_error(text: str) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse_lldp(text, "capture.txt")
    assert caught.value.location.source == "capture.txt"
    return caught.value


# -- builders ---------------------------------------------------------------------


def json_body(*, chassis_name: str | None = "leaf-01", chassis_id: str = "b8:59:9f:00:00:01",
              chassis_type: str = "mac", mgmt: Any = "10.0.0.1", port_id: str = "swp1",
              port_type: str = "ifname", port_descr: Any = "swp1", ttl: Any = "120",
              vlan: Any = None) -> dict[str, Any]:
    """One neighbour as lldpd's ``-f json`` prints it under its interface name."""
    chassis: dict[str, Any] = {"id": {"type": chassis_type, "value": chassis_id},
                               "descr": "Cumulus Linux version 5.9.1"}
    if mgmt is not None:
        chassis["mgmt-ip"] = mgmt
    port: dict[str, Any] = {"id": {"type": port_type, "value": port_id}, "descr": port_descr}
    if ttl is not None:
        port["ttl"] = ttl
    body: dict[str, Any] = {
        "via": "LLDP", "rid": "1", "age": "0 day, 00:10:00",
        "chassis": {chassis_name: chassis} if chassis_name else chassis,
        "port": port,
    }
    if vlan is not None:
        body["vlan"] = vlan
    return body


def json_doc(*entries: tuple[str, dict[str, Any]]) -> str:
    """A ``-f json`` document: one interface collapses to an object, several make a list."""
    keyed = [{name: body} for name, body in entries]
    interfaces: Any = keyed[0] if len(keyed) == 1 else keyed
    return json.dumps({"lldp": {"interface": interfaces} if entries else {}})


def kv_text(*, interface: str = "eth0", chassis: str = "chassis.mac=b8:59:9f:00:00:01",
            port: str = "port.ifname=swp1", extra: tuple[str, ...] = ()) -> str:
    """One neighbour as ``-f keyvalue`` lines."""
    lines = ["via=LLDP", "rid=1", chassis, "chassis.name=leaf-01", port, "port.ttl=120",
             *extra]
    return "".join(f"lldp.{interface}.{line}\n" for line in lines)


def neighbor(**fields: Any) -> LldpNeighbor:
    defaults: dict[str, Any] = {
        "interface": "eth0", "chassis_id": "b8:59:9f:00:00:01", "chassis_id_type": "mac",
        "chassis_name": "leaf-01", "port_id": "swp1", "port_id_type": "ifname",
        "port_descr": "swp1", "mgmt_ips": ["10.0.0.1"], "ttl": 120,
    }
    return LldpNeighbor(**{**defaults, **fields})


# -- the rail-optimised GPU host, in all three formats -------------------------------


def expected_rail_host() -> list[LldpNeighbor]:
    tor = LldpNeighbor(
        interface="eno8303", chassis_id="00:1c:73:a4:5e:01", chassis_id_type="mac",
        chassis_name="tor-a03-mgmt", port_id="Ethernet17", port_id_type="ifname",
        port_descr="gpu-h100-017 eno8303 (BMC+OS)", vlans=[20, 30, 110],
        mgmt_ip="10.10.3.1", mgmt_ips=["10.10.3.1", "fd00:10:3::1"], ttl=120)
    rails = [LldpNeighbor(
        interface=nic, chassis_id=f"b8:59:9f:3e:2{i}:00", chassis_id_type="mac",
        chassis_name=f"leaf-r{i}", port_id="swp17s0", port_id_type="ifname",
        port_descr=f"{HOST} rail{i} {nic}", vlans=[], mgmt_ip=f"10.254.0.{11 + i}",
        mgmt_ips=[f"10.254.0.{11 + i}"], ttl=120) for i, nic in enumerate(RAIL_NICS)]
    return sorted([tor, *rails], key=lambda n: n.interface)


@pytest.mark.parametrize(("name", "fmt"), [("rail_host.json0", "json0"),
                                           ("rail_host.json", "json"),
                                           ("rail_host.kv", "keyvalue")])
def test_rail_host_exact_values(name: str, fmt: str) -> None:
    capture = fixture(name)
    assert capture.source == name
    assert capture.format == fmt
    assert capture.neighbors == expected_rail_host()


def test_rail_host_three_formats_describe_the_same_neighbours() -> None:
    parsed = [fixture(f"rail_host.{ext}").neighbors for ext in ("json0", "json", "kv")]
    assert parsed[0] == parsed[1] == parsed[2]
    assert len(parsed[0]) == 9


def test_rail_host_is_rail_optimised() -> None:
    grouped = fixture("rail_host.json0").by_interface()
    rails = [grouped[nic][0] for nic in RAIL_NICS]
    assert [n.chassis_name for n in rails] == [f"leaf-r{i}" for i in range(8)]
    assert len({n.chassis_id for n in rails}) == 8
    assert {n.port_id for n in rails} == {"swp17s0"}
    assert grouped["eno8303"][0].chassis_name == "tor-a03-mgmt"


def test_neighbours_are_sorted_by_interface_and_grouped() -> None:
    capture = fixture("rail_host.kv")
    names = [n.interface for n in capture.neighbors]
    assert names == sorted(names)
    assert list(capture.by_interface()) == names
    assert all(len(group) == 1 for group in capture.by_interface().values())


# -- the other fixtures ------------------------------------------------------------------


def test_single_neighbour_collapsed_json() -> None:
    capture = fixture("single_neighbor.json")
    assert capture.format == "json"
    assert capture.neighbors == [LldpNeighbor(
        interface="eth0", chassis_id="3c:8c:93:ab:12:c0", chassis_id_type="mac",
        chassis_name="qfx-tor-07", port_id="526", port_id_type="local",
        port_descr="xe-0/0/12", vlans=[100], mgmt_ip="10.20.7.1", mgmt_ips=["10.20.7.1"],
        ttl=120)]


@pytest.mark.parametrize("ext", ["json0", "json", "kv"])
def test_neighbour_without_system_name(ext: str) -> None:
    capture = fixture(f"no_sysname.{ext}")
    assert capture.neighbors == [
        LldpNeighbor(interface="eth2", chassis_id="FDO2231X1AB", chassis_id_type="local",
                     chassis_name=None, port_id="7c:21:0e:4a:3b:91", port_id_type="mac",
                     port_descr="Ethernet1/49", mgmt_ip="192.168.50.2",
                     mgmt_ips=["192.168.50.2"], ttl=120),
        LldpNeighbor(interface="eth3", chassis_id="7c:21:0e:4a:00:10", chassis_id_type="mac",
                     chassis_name="n9k-leaf-12", port_id="Eth1/50", port_id_type="local",
                     port_descr="Ethernet1/50", mgmt_ip="192.168.50.12",
                     mgmt_ips=["192.168.50.12"], ttl=120),
    ]


@pytest.mark.parametrize("ext", ["json", "kv"])
def test_several_vlans_and_management_addresses(ext: str) -> None:
    trunk, access = fixture(f"vlans_mgmt.{ext}").neighbors
    # Listed 300, 200, 1000 and then the PVID 1, which came without a name.
    assert trunk.vlans == [1, 200, 300, 1000]
    assert trunk.mgmt_ips == ["10.30.0.2", "fd00:30::2", "172.16.30.2"]
    assert trunk.mgmt_ip == "10.30.0.2"
    assert (trunk.chassis_name, trunk.port_id, trunk.port_id_type) == ("sw-storage-02", "etp5",
                                                                        "local")
    assert access.vlans == [200]
    assert access.mgmt_ips == ["10.30.0.3"]
    assert access.interface == "ens1f1"


@pytest.mark.parametrize(("name", "fmt"), [("empty.json", "json"), ("empty.json0", "json0")])
def test_empty_result_is_a_valid_capture(name: str, fmt: str) -> None:
    capture = fixture(name)
    assert (capture.format, capture.neighbors, capture.by_interface()) == (fmt, [], {})


@pytest.mark.parametrize(("text", "fmt"), [
    ('{"lldp": {"interface": []}}', "json"),
    ('{"lldp": [{"interface": []}]}', "json0"),
    ('{"lldp": []}', "json0"),
    ("", "keyvalue"),
    ("\n\n", "keyvalue"),
])
def test_other_empty_shapes(text: str, fmt: str) -> None:
    capture = parse_lldp(text)
    assert (capture.source, capture.format, capture.neighbors) == ("<input>", fmt, [])


# -- json quirks ----------------------------------------------------------------------------


@pytest.mark.parametrize(("mgmt", "expected"), [
    ("10.0.0.1", ["10.0.0.1"]),
    (["10.0.0.1", "fd00::1"], ["10.0.0.1", "fd00::1"]),
    ({"value": "10.0.0.1"}, ["10.0.0.1"]),
    ([{"value": "10.0.0.1"}, {"value": "10.0.0.9"}], ["10.0.0.1", "10.0.0.9"]),
    (["10.0.0.1", "10.0.0.1"], ["10.0.0.1"]),
    (None, []),
])
def test_mgmt_ip_as_string_object_or_list(mgmt: Any, expected: list[str]) -> None:
    (found,) = parse_lldp(json_doc(("eth0", json_body(mgmt=mgmt)))).neighbors
    assert found.mgmt_ips == expected
    assert found.mgmt_ip == (expected[0] if expected else None)


@pytest.mark.parametrize(("vlan", "expected"), [
    ({"vlan-id": "100", "pvid": True, "value": "vlan-100"}, [100]),
    ([{"vlan-id": "30", "value": "b"}, {"vlan-id": "10", "pvid": True}], [10, 30]),
    ([{"vlan-id": "10"}, {"vlan-id": "10"}], [10]),
    ("vlan100", [100]),
    ("42", [42]),
    ("default", []),
    ({"value": "VLAN-7"}, [7]),
    (["vlan5", {"vlan-id": 6}], [5, 6]),
])
def test_vlan_as_object_list_or_string(vlan: Any, expected: list[int]) -> None:
    (found,) = parse_lldp(json_doc(("eth0", json_body(vlan=vlan)))).neighbors
    assert found.vlans == expected


def test_numbers_may_be_strings_or_numbers() -> None:
    text = json_doc(("eth0", json_body(ttl=120, vlan={"vlan-id": 200})))
    (found,) = parse_lldp(text).neighbors
    assert (found.ttl, found.vlans) == (120, [200])


def test_ttl_missing_or_in_the_chassis() -> None:
    assert parse_lldp(json_doc(("eth0", json_body(ttl=None)))).neighbors[0].ttl is None
    body = json_body(ttl=None, chassis_name=None)
    body["chassis"]["ttl"] = "90"
    assert parse_lldp(json_doc(("eth0", body))).neighbors[0].ttl == 90


def test_chassis_keyed_by_name_or_holding_its_id_directly() -> None:
    named, anonymous = parse_lldp(json_doc(
        ("eth0", json_body()), ("eth1", json_body(chassis_name=None, chassis_id="SN123",
                                                  chassis_type="local")))).neighbors
    assert (named.chassis_name, named.chassis_id) == ("leaf-01", "b8:59:9f:00:00:01")
    assert (anonymous.chassis_name, anonymous.chassis_id) == (None, "SN123")
    assert anonymous.chassis_id_type == "local"


def test_system_name_called_id_is_still_a_name() -> None:
    (found,) = parse_lldp(json_doc(("eth0", json_body(chassis_name="id")))).neighbors
    assert (found.chassis_name, found.chassis_id) == ("id", "b8:59:9f:00:00:01")


def test_two_neighbours_on_one_interface_stay_apart() -> None:
    text = json_doc(("eth1", json_body(chassis_name="sw-b", chassis_id="00:00:00:00:00:0b")),
                    ("eth0", json_body(chassis_name="sw-z", chassis_id="00:00:00:00:00:0f")),
                    ("eth0", json_body(chassis_name="sw-a", chassis_id="00:00:00:00:00:0a")))
    capture = parse_lldp(text)
    assert [(n.interface, n.chassis_name) for n in capture.neighbors] == [
        ("eth0", "sw-z"), ("eth0", "sw-a"), ("eth1", "sw-b")]
    assert [n.chassis_name for n in capture.by_interface()["eth0"]] == ["sw-z", "sw-a"]


def test_same_chassis_twice_on_one_interface_is_one_neighbour() -> None:
    text = json_doc(("eth0", json_body(vlan={"vlan-id": "10"}, mgmt="10.0.0.1", port_descr="")),
                    ("eth0", json_body(vlan={"vlan-id": "20"}, mgmt="10.0.0.2")))
    assert parse_lldp(text).neighbors == [neighbor(vlans=[10, 20],
                                                   mgmt_ips=["10.0.0.1", "10.0.0.2"])]


def test_empty_strings_mean_not_sent() -> None:
    (found,) = parse_lldp(json_doc(("eth0", json_body(port_descr="  ", mgmt="")))).neighbors
    assert (found.port_descr, found.mgmt_ips, found.mgmt_ip) == (None, [], None)


def test_json_interface_object_with_several_keys() -> None:
    text = json.dumps({"lldp": {"interface": {"eth0": json_body(),
                                              "eth1": json_body(chassis_name="leaf-02")}}})
    assert [n.chassis_name for n in parse_lldp(text).neighbors] == ["leaf-01", "leaf-02"]


def test_json0_shaped_entry_inside_a_json_document() -> None:
    text = json.dumps({"lldp": {"interface": [{"name": "eth4", **json_body()}]}})
    assert parse_lldp(text).neighbors == [neighbor(interface="eth4")]


def test_byte_order_mark_and_leading_blank_lines() -> None:
    text = "\ufeff\n\n" + json_doc(("eth0", json_body()))
    assert parse_lldp(text).neighbors == [neighbor()]


# -- keyvalue quirks ----------------------------------------------------------------------


@pytest.mark.parametrize(("line", "kind", "value"), [
    ("chassis.mac=b8:59:9f:00:00:01", "mac", "b8:59:9f:00:00:01"),
    ("chassis.local=FDO2231X1AB", "local", "FDO2231X1AB"),
    ("chassis.ip=10.0.0.254", "ip", "10.0.0.254"),
    ("chassis.ifname=mgmt0", "ifname", "mgmt0"),
])
def test_keyvalue_chassis_id_variants(line: str, kind: str, value: str) -> None:
    (found,) = parse_lldp(kv_text(chassis=line)).neighbors
    assert (found.chassis_id_type, found.chassis_id) == (kind, value)


@pytest.mark.parametrize(("line", "kind", "value"), [
    ("port.ifname=Ethernet1/1", "ifname", "Ethernet1/1"),
    ("port.mac=7c:21:0e:4a:3b:91", "mac", "7c:21:0e:4a:3b:91"),
    ("port.local=526", "local", "526"),
    ("port.ifalias=uplink", "ifalias", "uplink"),
])
def test_keyvalue_port_id_variants(line: str, kind: str, value: str) -> None:
    (found,) = parse_lldp(kv_text(port=line)).neighbors
    assert (found.port_id_type, found.port_id) == (kind, value)


def test_keyvalue_lists_repeat_their_key() -> None:
    extra = ("chassis.mgmt-ip=10.0.0.1", "chassis.mgmt-ip=fd00::1", "vlan.vlan-id=300",
             "vlan=storage", "vlan.vlan-id=20", "vlan.pvid=yes", "vlan=mgmt")
    (found,) = parse_lldp(kv_text(extra=extra)).neighbors
    assert (found.mgmt_ips, found.vlans) == (["10.0.0.1", "fd00::1"], [20, 300])


def test_keyvalue_interface_name_with_dots() -> None:
    (found,) = parse_lldp(kv_text(interface="bond0.100")).neighbors
    assert (found.interface, found.chassis_name, found.port_id) == ("bond0.100", "leaf-01",
                                                                    "swp1")


def test_keyvalue_two_neighbours_on_one_interface() -> None:
    text = kv_text() + kv_text(chassis="chassis.mac=b8:59:9f:00:00:02")
    found = parse_lldp(text).neighbors
    assert [n.chassis_id for n in found] == ["b8:59:9f:00:00:01", "b8:59:9f:00:00:02"]
    # Without the via/rid lines, the repeated chassis id alone splits them.
    bare = "".join(line + "\n" for line in text.splitlines() if ".chassis." in line)
    assert [n.chassis_id for n in parse_lldp(bare).neighbors] == [
        "b8:59:9f:00:00:01", "b8:59:9f:00:00:02"]


def test_keyvalue_multiline_description_is_joined() -> None:
    text = kv_text(extra=("chassis.descr=Cisco IOS Software, C3750E Software",
                          "Technical Support: http://www.cisco.com/techsupport",
                          "port.descr=GigabitEthernet1/0/7"))
    text = text.replace("lldp.eth0.Technical", "Technical")
    (found,) = parse_lldp(text).neighbors
    assert found.port_descr == "GigabitEthernet1/0/7"


def test_keyvalue_tolerates_crlf_indent_blank_lines_unknown_keys_and_equals() -> None:
    text = ("  lldp.eth0.via=LLDP\r\n\r\n"
            "lldp.eth0.chassis.mac=b8:59:9f:00:00:01\r\n"
            "lldp.eth0.chassis.name=leaf-01\r\n"
            "lldp.eth0.chassis.Bridge.enabled=on\r\n"
            "lldp.eth0.port.ifname=swp1\r\n"
            "lldp.eth0.port.descr=a=b\r\n"
            "lldp.eth0.unknown-tlvs.tlv.oui=00,80,c2\r\n"
            "lldp.eth0.future-thing=1\r\n")
    (found,) = parse_lldp(text).neighbors
    assert (found.chassis_name, found.port_id, found.port_descr) == ("leaf-01", "swp1", "a=b")
    assert found.ttl is None


# -- errors -------------------------------------------------------------------------------


def test_invalid_json_names_line_and_column() -> None:
    text = (FIXTURES / "truncated.json").read_text(encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as reference:
        json.loads(text)
    error = parse_error(text)
    assert error.location.line == reference.value.lineno
    assert f"column {reference.value.colno}" in error.message
    assert "capture.txt:" in str(error)


@pytest.mark.parametrize("text", ['[{"lldp": {}}]', '{"neighbors": []}', "[]", "{}"])
def test_json_that_is_not_an_lldp_document(text: str) -> None:
    error = parse_error(text)
    assert (error.location.path, error.expected) == ("$", '{"lldp": …}')


@pytest.mark.parametrize(("text", "path"), [
    ('{"lldp": "eth0"}', "lldp"),
    ('{"lldp": null}', "lldp"),
    ('{"lldp": {"interface": 5}}', "lldp.interface"),
    ('{"lldp": [5]}', "lldp[0]"),
    ('{"lldp": [{"interface": ["eth0"]}]}', "lldp[0].interface[0]"),
    ('{"lldp": {"interface": {"eth0": {"chassis": "leaf"}}}}', "lldp.interface.eth0.chassis"),
    ('{"lldp": {"interface": {"eth0": {"port": [7]}}}}', "lldp.interface.eth0.port"),
    ('{"lldp": {"interface": {"eth0": {"port": {"descr": true}}}}}',
     "lldp.interface.eth0.port.descr"),
    ('{"lldp": {"interface": {"eth0": {"port": {"id": {"value": [[1]]}}}}}}',
     "lldp.interface.eth0.port.id.value"),
    ('{"lldp": {"interface": {"eth0": {"chassis": {"mgmt-ip": ["a", {"value": {}}]}}}}}',
     "lldp.interface.eth0.chassis.mgmt-ip[1]"),
])
def test_json_structure_errors_name_the_path(text: str, path: str) -> None:
    assert parse_error(text).location.path == path


@pytest.mark.parametrize(("text", "path"), [
    ((FIXTURES / "no_name.json0").read_text(encoding="utf-8"), "lldp[0].interface[1]"),
    ('{"lldp": [{"interface": [{"name": " ", "via": "LLDP"}]}]}', "lldp[0].interface[0]"),
    ('{"lldp": {"interface": {"via": "LLDP", "chassis": {}}}}', "lldp.interface"),
    ('{"lldp": {"interface": [{"eth0": {}}, {}]}}', "lldp.interface[1]"),
    ('{"lldp": {"interface": [{"eth0": {}}, "eth1"]}}', "lldp.interface[1]"),
    ('{"lldp": {"interface": {"": {}}}}', "lldp.interface"),
])
def test_interface_entry_without_a_name(text: str, path: str) -> None:
    error = parse_error(text)
    assert error.location.path == path
    assert "name" in error.message


@pytest.mark.parametrize(("vlan", "path"), [
    ({"vlan-id": "abc"}, "lldp.interface.eth0.vlan[0]"),
    ([{"vlan-id": "10"}, {"vlan-id": "5000"}], "lldp.interface.eth0.vlan[1]"),
    ({"vlan-id": "-3"}, "lldp.interface.eth0.vlan[0]"),
])
def test_bad_vlan_id_in_json(vlan: Any, path: str) -> None:
    error = parse_error(json_doc(("eth0", json_body(vlan=vlan))))
    assert (error.location.path, error.expected) == (path, "a VLAN id")


def test_bad_ttl_in_json() -> None:
    error = parse_error(json_doc(("eth0", json_body(ttl="2 minutes"))))
    assert error.location.path == "lldp.interface.eth0.port.ttl"
    assert "TTL" in error.message


def test_keyvalue_line_without_equals_names_the_line() -> None:
    error = parse_error((FIXTURES / "bad_line.kv").read_text(encoding="utf-8"))
    assert error.location.line == 8
    assert "'='" in error.message
    assert "lldp.eth2.port.mac" in error.message


@pytest.mark.parametrize(("text", "line"), [
    ("garbage\n", 1),
    ("lldp.eth0.via=LLDP\nlldp.eth0.port.ttl=120\neth0.chassis.name=x\n", 3),
    ("lldp.eth0.via=LLDP\n\nLLDP.eth0.rid=1\n", 3),
])
def test_keyvalue_line_not_starting_with_lldp(text: str, line: int) -> None:
    error = parse_error(text)
    assert error.location.line == line
    assert "lldp." in error.message
    assert error.expected == "lldp.<interface>.<key>=<value>"


@pytest.mark.parametrize("text", ["lldp..via=LLDP\n", "lldp.=x\n",
                                  "lldp.eth0.via=LLDP\nlldp..chassis.mac=x\n"])
def test_keyvalue_interface_without_a_name(text: str) -> None:
    error = parse_error(text)
    assert error.location.line == text.count("\n")
    assert "no name" in error.message


@pytest.mark.parametrize(("extra", "what"), [("vlan.vlan-id=twelve", "VLAN id"),
                                             ("vlan.vlan-id=4096", "VLAN id"),
                                             ("port.ttl=1e3", "TTL")])
def test_keyvalue_bad_numbers_name_the_line(extra: str, what: str) -> None:
    text = f"lldp.eth0.via=LLDP\nlldp.eth0.chassis.mac=00:00:00:00:00:01\nlldp.eth0.{extra}\n"
    error = parse_error(text)
    assert what in error.message
    assert error.location.line == 3


def test_show_chassis_output_is_the_wrong_format() -> None:
    with pytest.raises(WrongFormatError) as caught:
        fixture("not_lldp.json")
    assert "show chassis" in caught.value.found
    assert caught.value.location.source == "not_lldp.json"


@pytest.mark.parametrize("text", [
    '{"lldp": [{"interface": [{"name": "eth0", "tx": [{"tx": "10"}], "rx": [{"rx": "9"}]}]}]}',
    '{"lldp": {"interface": {"eth0": {"status": "RX and TX", "chassis": {}}}}}',
    "lldp.eth0.status=RX and TX\nlldp.eth0.chassis.mac=00:00:00:00:00:01\n",
])
def test_interfaces_or_statistics_output_is_the_wrong_format(text: str) -> None:
    with pytest.raises(WrongFormatError) as caught:
        parse_lldp(text)
    assert "show neighbors" in caught.value.wanted


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text", [
    "x" * 2_000_000,
    "lldp.eth0.via=LLDP\n" + "y" * 2_000_000,
    "[" * 200_000,
    '{"lldp": ' + "[" * 200_000,
    "{" * 200_000,
    "lldp.eth0.port.ttl=" + "9" * 2_000_000,
    "lldp.eth0.chassis.descr=" + "=" * 1_000_000 + "\n" + "z" * 1_000_000 + "\nlldp.eth0 no equals",
])
def test_big_garbage_is_rejected(text: str) -> None:
    parse_error(text)


@pytest.mark.timeout(20)
def test_big_valid_keyvalue_capture() -> None:
    text = "".join(kv_text(interface=f"eth{i}") for i in range(2000))
    capture = parse_lldp(text)
    assert len(capture.neighbors) == 2000
    assert len(capture.by_interface()) == 2000


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["lldp", "interface", "eth0", "name", "chassis", "port",
                                       "id", "value", "type", "vlan", "vlan-id", "mgmt-ip",
                                       "ttl", "descr"]), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(_JSON)
def test_any_json_parses_or_raises_parse_error(doc: Any) -> None:
    try:
        capture = parse_lldp(json.dumps({"lldp": doc}))
    except ParseError:
        return
    assert all(n.vlans == sorted(set(n.vlans)) for n in capture.neighbors)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet="lldp.eth0chassismacportvlan-id=\n 12", max_size=30),
                max_size=10))
def test_any_keyvalue_text_parses_or_raises_parse_error(lines: list[str]) -> None:
    with contextlib.suppress(ParseError):
        parse_lldp("\n".join(lines))


# -- models and sniffing --------------------------------------------------------------------


def test_models_are_frozen_and_normalised() -> None:
    found = LldpNeighbor(interface="eth0", vlans=[30, 10, 30], mgmt_ips=["b", "a", "b"])
    assert (found.vlans, found.mgmt_ips, found.mgmt_ip) == ([10, 30], ["b", "a"], "b")
    with pytest.raises(PydanticValidationError):
        found.interface = "eth1"  # type: ignore[misc]
    capture = LldpCapture(source="s", format="json", neighbors=[found])
    with pytest.raises(PydanticValidationError):
        capture.source = "t"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["rail_host.json0", "rail_host.json", "rail_host.kv",
                                  "empty.json", "empty.json0", "single_neighbor.json",
                                  "vlans_mgmt.kv"])
def test_looks_like_lldp_on_captures(name: str) -> None:
    assert looks_like_lldp((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("text", [
    "", "lldp.eth0 without equals", '{"apiVersion": "v1", "kind": "List", "items": []}',
    "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV18\t0-55\n", '{"local-chassis": {}}',
    "<system version=\"1\"></system>",
])
def test_looks_like_lldp_rejects_other_inputs(text: str) -> None:
    assert not looks_like_lldp(text)
