"""Transport hints from the fabric tier: which UCX transports, which NIC, cuda_ipc or not.

UCX picks transports itself and often picks badly in two ways users report: the wrong
NIC for a GPU (half bandwidth, or traffic through the socket link) and no ``cuda_ipc``
between GPUs of one host in different containers. The scheduler knows each GPU's
nearest NIC and the tier of every pair, so it states both per plan. A sidecar pins its
own NIC when it creates its agent (UCX reads devices once per context); the per-plan
hint lets it check that the pinned device is the one the fabric expects.
"""

from __future__ import annotations

from scheduler.transfer.plan import MemType, TransportHints, WorkerRegistration
from topology.distance import DistanceModel
from topology.spec import FabricSpec
from topology.tiers import Tier

#: UCX_TLS families per (same host?, memory type); order is UCX_TLS order.
_SAME_HOST_VRAM = ("cuda_ipc", "cuda_copy", "sm", "self")
_SAME_HOST_DRAM = ("sm", "cma", "self")
_CROSS_HOST_VRAM = ("rc", "cuda_copy", "self")
_CROSS_HOST_DRAM = ("rc", "self")


def _tls(tier: Tier, mem_type: MemType) -> tuple[str, ...]:
    if tier.same_host:
        return _SAME_HOST_VRAM if mem_type == "VRAM" else _SAME_HOST_DRAM
    families = _CROSS_HOST_VRAM if mem_type == "VRAM" else _CROSS_HOST_DRAM
    # Across zones RDMA is rarely routed; TCP is the transport that always works there.
    return (*families, "tcp") if tier == Tier.CROSS_ZONE else families


def net_device(nic: str | None) -> str | None:
    """UCX device name for a NIC (``mlx5_3`` → ``mlx5_3:1``, port 1 unless given)."""
    if not nic:
        return None
    return nic if ":" in nic else f"{nic}:1"


def hints_for_tier(tier: Tier, mem_type: MemType, *, src_nic: str | None = None,
                   dst_nic: str | None = None) -> TransportHints:
    """Hints for a path of ``tier`` carrying ``mem_type`` memory."""
    cross = not tier.same_host
    return TransportHints(tier=tier.label, ucx_tls=_tls(tier, mem_type),
                          cuda_ipc=tier.same_host and mem_type == "VRAM",
                          src_net_device=net_device(src_nic) if cross else None,
                          dst_net_device=net_device(dst_nic) if cross else None)


def nearest_nic(spec: FabricSpec, gpu: str) -> str | None:
    """The NIC the fabric document names for GPU ``HOST/gpuN`` (None if it names none)."""
    host_name, _, local = gpu.rpartition("/gpu")
    for host in spec.hosts:
        if host.name == host_name:
            for card in host.gpus:
                if str(card.index) == local:
                    return card.nic
    return None


def path_nics(model: DistanceModel, src_gpu: str, dst_gpu: str) -> tuple[str | None, str | None]:
    """NIC devices the cost model routes a cross-host path through (sending, receiving).

    Read from the path's link ids (``nic:HOST/DEV:tx`` … ``nic:HOST/DEV:rx``), which use
    the nearest NIC by PCIe distance where the document names none.
    """
    send = recv = None
    for link in model.path_links(src_gpu, dst_gpu):
        kind, _, rest = link.partition(":")
        if kind == "nic":
            device = rest.rpartition(":")[0].rpartition("/")[2]
            if rest.endswith(":tx"):
                send = device
            elif rest.endswith(":rx"):
                recv = device
    return send, recv


def tier_between(src: WorkerRegistration, dst: WorkerRegistration,
                 model: DistanceModel | None) -> Tier:
    """Tier of the path between two workers' first GPUs.

    Without a fabric (or GPUs unknown to it) only the host names are known: the same
    host counts as ``host_bridge``, different hosts as ``same_zone`` (no rail, no leaf
    known, so the plan makes no NIC claim it cannot back).
    """
    if (model is not None and src.gpus and dst.gpus and model.knows(src.gpus[0])
            and model.knows(dst.gpus[0])):
        return model.tier(src.gpus[0], dst.gpus[0])
    return Tier.HOST_BRIDGE if src.host == dst.host else Tier.SAME_ZONE


def hints_for_workers(src: WorkerRegistration, dst: WorkerRegistration, *,
                      spec: FabricSpec | None = None,
                      model: DistanceModel | None = None) -> TransportHints:
    """Hints for moving ``src``'s KV to ``dst`` on the given fabric (if any)."""
    tier = tier_between(src, dst, model)
    nics: tuple[str | None, str | None] = (None, None)
    if model is not None and not tier.same_host and src.gpus and dst.gpus \
            and model.knows(src.gpus[0]) and model.knows(dst.gpus[0]):
        nics = path_nics(model, src.gpus[0], dst.gpus[0])
    elif spec is not None and src.gpus and dst.gpus:
        nics = nearest_nic(spec, src.gpus[0]), nearest_nic(spec, dst.gpus[0])
    return hints_for_tier(tier, src.mem_type, src_nic=nics[0], dst_nic=nics[1])


def ucx_env(hints: TransportHints, side: str) -> dict[str, str]:
    """Environment a sidecar of ``side`` ('src' or 'dst') would start its agent with."""
    env = {"UCX_TLS": ",".join(hints.ucx_tls)}
    device = hints.src_net_device if side == "src" else hints.dst_net_device
    if device:
        env["UCX_NET_DEVICES"] = device
    return env
