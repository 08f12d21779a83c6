"""Parser for AWS EC2 instance topology (``aws ec2 describe-instance-topology``).

Each instance lists the network nodes above it, **top layer first** (three layers on
p4d/p5/trn1, four on p6-b200): instances sharing the bottom node sit under one network
node, those sharing the next one up under one aggregation, and so on. Accepted shapes
(AWS CLI and SDK dumps): ``{"Instances": [...], "NextToken": …}``, several such pages
concatenated or in a list, or the bare list of instances; keys in AWS's PascalCase or an
SDK's camelCase. ``CapacityBlockId`` is kept (``"null"`` and null read as none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

from topology.errors import Location, ParseError
from topology.source import bounded_int, strip_bom

_EXPECTED = 'describe-instance-topology JSON ({"Instances": [{"InstanceId", "NetworkNodes", …}]})'
_SNIFF = re.compile(r'"(?:NetworkNodes|networkNodes)"\s*:')
_MAX_LAYERS = 8


class AwsInstance(BaseModel, frozen=True):
    """One instance and the network nodes above it."""

    instance_id: str
    instance_type: str | None = None
    group_name: str | None = None
    network_nodes: list[str] = Field(description="top layer first")
    availability_zone: str | None = None
    zone_id: str | None = None
    capacity_block_id: str | None = None


class AwsTopology(BaseModel, frozen=True):
    """Every instance of one capture (pages merged), in document order."""

    source: str
    instances: list[AwsInstance]

    def by_id(self) -> dict[str, AwsInstance]:
        """Instances by id."""
        return {instance.instance_id: instance for instance in self.instances}


def looks_like_aws_topology(text: str) -> bool:
    """Cheap sniff: JSON naming ``NetworkNodes``."""
    head = strip_bom(text[:65536]).lstrip()
    return head.startswith(("{", "[")) and _SNIFF.search(head) is not None


def parse_aws_topology(text: str, source: str = "<input>") -> AwsTopology:
    """Parse describe-instance-topology output (any accepted shape, module docstring)."""
    instances: list[AwsInstance] = []
    seen: dict[str, str] = {}
    for item, path in _instances(_documents(strip_bom(text), source), source):
        instance = _instance(item, path, source)
        if instance.instance_id in seen:
            held = next(i for i in instances if i.instance_id == instance.instance_id)
            if held != instance:
                raise ParseError(f"instance {instance.instance_id} is listed twice with "
                                 f"different topology (first at {seen[instance.instance_id]})",
                                 Location(source, path=path), "one entry per instance")
            continue
        seen[instance.instance_id] = path
        instances.append(instance)
    return AwsTopology(source=source, instances=instances)


def _documents(text: str, source: str) -> list[Any]:
    """One or more JSON documents (pages printed one after another)."""
    decoder = json.JSONDecoder(parse_int=bounded_int)
    docs, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        try:
            doc, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise ParseError(f"invalid JSON: {exc.msg} (column {exc.colno})",
                             Location(source, exc.lineno), _EXPECTED) from exc
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"invalid JSON: {exc}", Location(source), _EXPECTED) from exc
        docs.append(doc)
    if not docs:
        raise ParseError("no JSON document", Location(source), _EXPECTED)
    return docs


def _key(item: dict[str, Any], name: str) -> Any:
    """A field by its PascalCase name, or the camelCase an SDK prints."""
    if name in item:
        return item[name]
    return item.get(name[0].lower() + name[1:])


def _instances(docs: list[Any], source: str) -> Iterator[tuple[Any, str]]:
    for d, doc in enumerate(docs):
        prefix = f"[{d}]" if len(docs) > 1 else ""
        pages = doc if isinstance(doc, list) and doc and isinstance(doc[0], dict) and \
            _key(doc[0], "Instances") is not None else [doc]
        for p, page in enumerate(pages):
            where = f"{prefix}[{p}]" if len(pages) > 1 else prefix
            if isinstance(page, dict) and isinstance(_key(page, "Instances"), list):
                for i, item in enumerate(_key(page, "Instances")):
                    yield item, f"{where}.Instances[{i}]".lstrip(".")
            elif isinstance(page, list):
                for i, item in enumerate(page):
                    yield item, f"{where}[{i}]"
            else:
                raise ParseError("no Instances list", Location(source, path=where or "$"),
                                 _EXPECTED)


def _instance(item: Any, path: str, source: str) -> AwsInstance:
    if not isinstance(item, dict):
        raise ParseError("an instance entry is not an object", Location(source, path=path),
                         _EXPECTED)
    instance_id = _key(item, "InstanceId")
    if not isinstance(instance_id, str) or not instance_id.strip():
        raise ParseError("an instance without InstanceId",
                         Location(source, path=f"{path}.InstanceId"), "an instance id")
    nodes = _key(item, "NetworkNodes")
    if not isinstance(nodes, list) or not nodes or len(nodes) > _MAX_LAYERS or \
            not all(isinstance(n, str) and n.strip() for n in nodes):
        raise ParseError(f"instance {instance_id}: NetworkNodes is not a list of 1 to "
                         f"{_MAX_LAYERS} node ids", Location(source, path=f"{path}.NetworkNodes"),
                         '["nn-…", "nn-…", "nn-…"] (top layer first)')
    return AwsInstance(
        instance_id=instance_id.strip(), instance_type=_optional(item, "InstanceType"),
        group_name=_optional(item, "GroupName"), network_nodes=[n.strip() for n in nodes],
        availability_zone=_optional(item, "AvailabilityZone"), zone_id=_optional(item, "ZoneId"),
        capacity_block_id=_optional(item, "CapacityBlockId"))


def _optional(item: dict[str, Any], name: str) -> str | None:
    value = _key(item, name)
    if not isinstance(value, str) or not value.strip() or value.strip() == "null":
        return None
    return value.strip()
