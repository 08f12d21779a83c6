"""Engine instances: fields, the versioned document, and checks over a set of instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.instance import (
    EngineInstance,
    is_loopback,
    load_instances,
    parse_instances,
    parse_instances_text,
)
from tests.engines.builders import instance, instance_data
from topology.errors import ParseError, ValidationError


def _issues(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {issue.path: issue.message for issue in exc.value.issues}


def test_gpus_as_cuda_visible_devices_become_fabric_names() -> None:
    made = instance(gpus="2, 3", host="h7")
    assert made.gpus == (2, 3)
    assert made.gpu_names == ("h7/gpu2", "h7/gpu3")


def test_base_url_keeps_the_base_without_v1() -> None:
    assert instance(base_url="http://10.0.0.5:8000/").base_url == "http://10.0.0.5:8000"
    with pytest.raises(ValueError, match="without /v1"):
        instance(base_url="http://10.0.0.5:8000/v1")


def test_placement_instance_ids_are_valid_names() -> None:
    assert instance("h0/prefill-0").name == "h0/prefill-0"


def test_side_channel_defaults_to_vllms_localhost() -> None:
    assert instance(nixl_side_channel=None).side_channel == ("localhost", 5600)
    assert instance(engine="sglang", nixl_side_channel=None, bootstrap_port=8998
                    ).side_channel is None


def test_engine_specific_fields_are_refused_on_the_other_engine() -> None:
    with pytest.raises(ValueError, match="SGLang uses bootstrap_port"):
        instance(engine="sglang")
    with pytest.raises(ValueError, match="vLLM uses nixl_side_channel"):
        instance(bootstrap_port=8998)


def test_document_reports_every_bad_field_with_its_path() -> None:
    data = {"version": 1, "instances": [
        instance_data("a"),
        instance_data("b", gpus="0,x", base_url="ftp://h", role="router"),
        instance_data("c", kv_events={"endpoint": "tcp://*:5557"}, tp_size=0),
    ]}
    with pytest.raises(ValidationError) as exc:
        parse_instances(data, "cluster.yaml")
    issues = _issues(exc)
    assert set(issues) >= {"instances[1].gpus", "instances[1].base_url", "instances[1].role",
                           "instances[2].kv_events.endpoint", "instances[2].tp_size"}
    assert "cluster.yaml" in str(exc.value)


def test_unknown_version_and_fields_are_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        parse_instances({"version": 2, "instances": [instance_data(colour="red")]})
    assert set(_issues(exc)) == {"version", "instances[0].colour"}


def test_duplicate_names_are_named_by_path() -> None:
    with pytest.raises(ValidationError) as exc:
        parse_instances({"version": 1, "instances": [instance_data("a"), instance_data("a")]})
    assert "declared twice" in _issues(exc)["instances[1].name"]


def test_localhost_side_channel_is_refused_when_a_partner_is_on_another_host() -> None:
    prefill = instance_data("p", nixl_side_channel="localhost:5600", host="h0")
    decode_far = instance_data("d", role="decode", host="h1", nixl_side_channel="10.0.0.2:5601")
    with pytest.raises(ValidationError) as exc:
        parse_instances({"version": 1, "instances": [prefill, decode_far]})
    assert "not reachable from 'd'" in _issues(exc)["instances[0].nixl_side_channel"]
    decode_near = {**decode_far, "host": "h0"}
    assert len(parse_instances({"version": 1, "instances": [prefill, decode_near]}
                               ).instances) == 2


def test_missing_side_channel_counts_as_vllms_localhost_default() -> None:
    prefill = instance_data("p", nixl_side_channel=None)
    decode = instance_data("d", role="decode", host="h1")
    with pytest.raises(ValidationError) as exc:
        parse_instances({"version": 1, "instances": [prefill, decode]})
    assert "instances[0].nixl_side_channel" in _issues(exc)


def test_bind_mode_topics_must_be_unique() -> None:
    events = {"mode": "bind", "topic": "kv@x"}
    with pytest.raises(ValidationError) as exc:
        parse_instances({"version": 1, "instances": [
            instance_data("a", kv_events=events), instance_data("b", kv_events=events)]})
    assert "instances[1].kv_events.topic" in _issues(exc)


def test_connect_mode_needs_an_endpoint() -> None:
    with pytest.raises(ValueError, match="endpoint is required"):
        instance(kv_events={"topic": "t"})


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("127.0.0.1", True), ("127.8.0.3", True), ("::1", True),
    ("[::1]", True), ("10.0.0.1", False), ("h0.example", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_yaml_file_round_trip_and_syntax_errors_name_the_line(tmp_path: Path) -> None:
    good = tmp_path / "instances.yaml"
    good.write_text("version: 1\ninstances:\n"
                    "  - {name: d0, engine: sglang, role: decode, model: m,\n"
                    "     base_url: 'http://h1:30000', host: h1, gpus: '0,1', tp_size: 2,\n"
                    "     bootstrap_port: 8998}\n")
    document = load_instances(good)
    assert document.instances[0] == EngineInstance(
        name="d0", engine="sglang", role="decode", model="m", base_url="http://h1:30000",
        host="h1", gpus=(0, 1), tp_size=2, bootstrap_port=8998)
    with pytest.raises(ParseError, match=r"instances.yaml:3"):
        parse_instances_text("version: 1\ninstances:\n  - name: a: b\n", "instances.yaml")
