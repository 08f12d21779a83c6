"""Building a FabricSpec from an inventory (or without one), per-host captures, cluster
captures (ibnetdiscover, AWS instance topology) and Kubernetes node labels.

With an inventory, it gives the hierarchy (zones, pods, racks, hosts) and the captures
fill in each host and where its NICs land. Without one, the hosts are those the
captures and the GPU nodes of the Kubernetes node list name, and the hierarchy comes
from what the inputs say about locality (:mod:`topology.derive`): zones from labels or
the instance topology, pods from the InfiniBand subnet's structure or the cloud's
network nodes, racks from the cloud's hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topology.aws_topology import AwsTopology, parse_aws_topology
from topology.builder import FabricBuilder
from topology.derive import derive_inventory, flat_inventory, host_names
from topology.errors import ConflictError, InputError
from topology.iblinkinfo import parse_subnet_capture
from topology.ibnetdiscover import IbFabric
from topology.inventory import Inventory
from topology.k8s import K8sNodes, parse_k8s_nodes
from topology.lldp import parse_lldp
from topology.nccl import parse_nccl_xml
from topology.nvsmi import parse_nvidia_smi
from topology.rdma_devices import parse_rdma_devices
from topology.source import read_capture
from topology.spec import FabricSpec

#: Per-host capture kinds: name → parser.
HOST_PARSERS = {"nvsmi": parse_nvidia_smi, "lldp": parse_lldp, "nccl": parse_nccl_xml,
                "rdma": parse_rdma_devices}


@dataclass
class Captures:
    """Captures that add to (or override) the inventory's: files (the CLI's flags) or
    already-parsed captures (``parsed[kind][host]``, e.g. feeds posted over HTTP).

    Per host: ``nvsmi``, ``lldp``, ``nccl``, ``rdma``; per cluster: Kubernetes nodes,
    ibnetdiscover captures, AWS instance topologies. ``template`` is the host template
    for hosts without a capture when there is no inventory.
    """

    nvsmi: dict[str, Path] = field(default_factory=dict)
    lldp: dict[str, Path] = field(default_factory=dict)
    nccl: dict[str, Path] = field(default_factory=dict)
    rdma: dict[str, Path] = field(default_factory=dict)
    k8s_nodes: Path | None = None
    ibnetdiscover: list[Path] = field(default_factory=list)
    aws_topology: list[Path] = field(default_factory=list)
    parsed: dict[str, dict[str, Any]] = field(default_factory=dict)
    k8s_parsed: K8sNodes | None = None
    ib_parsed: list[IbFabric] = field(default_factory=list)
    aws_parsed: list[AwsTopology] = field(default_factory=list)
    template: str | None = None

    def read_files(self) -> Captures:
        """These captures with every file parsed (each file read once)."""
        parsed = {kind: dict(self.parsed.get(kind, {})) for kind in HOST_PARSERS}
        for kind, parser in HOST_PARSERS.items():
            for host, path in getattr(self, kind).items():
                parsed[kind][host] = parser(read_capture(path), str(path))
        k8s = self.k8s_parsed
        if k8s is None and self.k8s_nodes is not None:
            k8s = parse_k8s_nodes(read_capture(self.k8s_nodes), str(self.k8s_nodes))
        return Captures(
            parsed=parsed, k8s_parsed=k8s, template=self.template,
            ib_parsed=[*self.ib_parsed, *(parse_subnet_capture(read_capture(p), str(p))
                                          for p in self.ibnetdiscover)],
            aws_parsed=[*self.aws_parsed, *(parse_aws_topology(read_capture(p), str(p))
                                            for p in self.aws_topology)])


def build_fabric(inventory: Inventory | None, captures: Captures | None = None,
                 keep_going: bool = False) -> FabricSpec:
    """Build the fabric; conflicts raise :class:`ConflictError` unless ``keep_going``.

    Without an inventory the hosts and their hierarchy come from the captures.
    """
    captures = captures or Captures()
    if inventory is None:
        spec = _without_inventory(captures.read_files())
    else:
        spec = FabricBuilder(inventory, captures).build()
    if spec.conflicts and not keep_going:
        raise ConflictError(f"{len(spec.conflicts)} conflict(s) between inputs:\n  - "
                            + "\n  - ".join(spec.conflicts))
    return spec


def _without_inventory(captures: Captures) -> FabricSpec:
    names, skipped = host_names(captures.parsed, captures.k8s_parsed, captures.template)
    if not names:
        raise InputError("no hosts to build: give an inventory, per-host captures "
                         "(--nvsmi HOST=FILE …) or a Kubernetes node list with GPU nodes")
    first = FabricBuilder(flat_inventory(names, captures.template), captures)
    first.build()
    inventory = derive_inventory(first)
    spec = FabricBuilder(inventory, captures, merged=first.merged).build()
    notes = [f"no inventory: the hierarchy was derived from {first.locality_sources()}"]
    if skipped:
        notes.append(f"{len(skipped)} Kubernetes GPU node(s) have no capture and no template "
                     f"(--template) and were left out: {', '.join(skipped[:5])}"
                     + (" …" if len(skipped) > 5 else ""))
    return spec.model_copy(update={"warnings": (*notes, *spec.warnings)})
