"""Builders for the topology/placement/route API tests: an app, a cluster, its feeds."""

from __future__ import annotations

from typing import Any

import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.security import TokenAuth
from api.settings import Settings
from scheduler.capacity import Workload
from tests.scheduler.transfer.builders import registration
from topology.spec import FabricSpec, HostSpec
from topology.synth import SynthParams, synth_cluster
from topology.writers import inventory_document, lldp_json0, nvsmi_text

WORKER, OPERATOR = "w-token", "o-token"
#: Settings for tests whose block hashes stand for 512-token blocks (as in Mooncake traces).
MOONCAKE_BLOCKS = Settings(block_tokens=512)


def bearer(token: str = OPERATOR) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def own_bearer(worker: str, shared: str = WORKER) -> dict[str, str]:
    """An Authorization header with ``worker``'s own token (what its registration returns)."""
    token = TokenAuth(shared, None).worker_token(worker)
    assert token is not None
    return bearer(token)


def make_app(*, worker: str | None = WORKER, operator: str | None = OPERATOR,
             settings: Settings | None = None) -> Any:
    """The app (services included) with two tokens configured."""
    base = settings or Settings()
    return create_app(base.model_copy(update={"worker_token": _secret(worker),
                                              "operator_token": _secret(operator)}))


def _secret(token: str | None) -> SecretStr | None:
    return SecretStr(token) if token is not None else None


def cluster(hosts: int = 3) -> FabricSpec:
    """One pod of ``hosts`` HGX H100 hosts, one per rack, rail-optimised (8 rail leaves)."""
    return synth_cluster(SynthParams(zones=1, pods_per_zone=1, racks_per_pod=hosts,
                                     hosts_per_rack=1))


def inventory_yaml(spec: FabricSpec) -> str:
    """The cluster's inventory without capture paths (captures arrive as feeds)."""
    doc = inventory_document(spec)
    for zone in doc["zones"]:
        for pod in zone["pods"]:
            for rack in pod["racks"]:
                for host in rack["hosts"]:
                    host.pop("nvsmi")
                    host.pop("lldp")
    return yaml.safe_dump(doc, sort_keys=False)


def fewer_gpus(host: HostSpec, keep: int = 4) -> HostSpec:
    """``host`` as nvidia-smi sees it after losing its upper GPUs."""
    links = tuple(row[:keep] for row in host.gpu_links[:keep])
    return host.model_copy(update={"gpus": host.gpus[:keep], "gpu_links": links})


def load_cluster(client: TestClient, spec: FabricSpec) -> None:
    """Post every host's captures, then the inventory (which builds the fabric)."""
    for host in spec.hosts:
        for path, text in (("nvidia-smi", nvsmi_text(host)), ("lldp", lldp_json0(host))):
            answer = client.put(f"/v1/topology/hosts/{host.name}/{path}", content=text,
                                headers=bearer())
            assert answer.status_code == 200, answer.text
    answer = client.put("/v1/topology/inventory", content=inventory_yaml(spec),
                        headers={**bearer(), "Content-Type": "application/yaml"})
    assert answer.status_code == 200, answer.text


def workload(**overrides: Any) -> dict[str, Any]:
    """Llama-3-70B chat traffic as JSON."""
    fields: dict[str, Any] = {"model": "llama-3-70b", "rate_rps": 5.0,
                              "input_tokens_mean": 4000.0, "output_tokens_mean": 300.0,
                              "ttft_slo_ms": 2000.0, "tpot_slo_ms": 50.0}
    fields.update(overrides)
    return Workload(**fields).model_dump(mode="json")


def target(**overrides: Any) -> dict[str, Any]:
    """A placement target: 2 prefill + 2 decode TP-4 instances, 2 s solver limit."""
    fields: dict[str, Any] = {"workload": workload(), "tp_prefill": 4, "tp_decode": 4,
                              "prefill": 2, "decode": 2, "time_limit_s": 2.0}
    fields.update(overrides)
    return fields


def worker_json(name: str, role: str, gpus: list[str], *, num_blocks: int = 256,
                model: str | None = "llama-3-70b") -> dict[str, Any]:
    """A worker registration (fake NIXL metadata) as JSON."""
    reg = registration(name, gpus=gpus, num_blocks=num_blocks)
    return reg.model_copy(update={"role": role, "model": model}).model_dump(mode="json")


def register_pair(client: TestClient, spec: FabricSpec) -> None:
    """``prefill-0`` on the first host and ``decode-0`` on the second, two GPUs each."""
    h0, h1 = (h.name for h in spec.hosts[:2])
    for name, role, gpus in (("prefill-0", "prefill", [f"{h0}/gpu0", f"{h0}/gpu1"]),
                             ("decode-0", "decode", [f"{h1}/gpu0", f"{h1}/gpu1"])):
        answer = client.post("/v1/workers", json=worker_json(name, role, gpus),
                             headers=bearer(WORKER))
        assert answer.status_code == 201, answer.text
