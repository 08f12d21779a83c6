"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis).

Every operation is called with generated valid and invalid inputs against the ASGI app
in-process: nothing may answer 5xx, and every call must return promptly (long-polls are
capped at a few milliseconds here). Solving is left out: a generated target may ask
CP-SAT for minutes of work, which is the solver tests' business, not the fuzzer's. So is
a sidecar's job stream: it stays open by design while its worker is registered (a
generated registration of the same name would hold the call until its timeout); its
404s, keep-alives and jobs are tested in tests/api and tests/sidecar.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi

from api.settings import Settings
from tests.api.service_builders import cluster, inventory_yaml, make_app
from topology.writers import lldp_json0, nvsmi_text

#: Kept small so the whole run stays well under a minute on two shared cores.
EXAMPLES_PER_OPERATION = 12


def _app() -> Any:
    app = make_app(worker=None, operator=None,
                   settings=Settings(long_poll_max_s=0.01, lease_ttl_s=60))
    # load a fabric (so reads get past 404) on schemathesis' own event loop: the
    # store's conditions bind to the first loop that waits on them
    client = asgi.get_client(app)
    spec = cluster(hosts=2)
    for host in spec.hosts:
        for path, text in (("nvidia-smi", nvsmi_text(host)), ("lldp", lldp_json0(host))):
            client.put(f"http://{asgi.HOST}/v1/topology/hosts/{host.name}/{path}", data=text)
    answer = client.put(f"http://{asgi.HOST}/v1/topology/inventory", data=inventory_yaml(spec))
    assert answer.status_code == 200, answer.text
    return app


# Built at collection (schemathesis' own `from_fixture` does not work with this pytest).
schema = (schemathesis.openapi.from_asgi("/openapi.json", _app())
          .exclude(path="/v1/placement/solve")
          .exclude(path_regex=r"^/v1/sidecars/.*/jobs/stream$"))


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=2000, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case: schemathesis.Case[Any]) -> None:
    response = case.call(timeout=5)
    assert response.status_code < 500 or _declared_503(response), (
        f"{case.method} {case.path}: {response.text[:300]}")


def _declared_503(response: Any) -> bool:
    """503 is an answer, not a crash, when it says why: unschedulable or not ready."""
    if response.status_code != 503 or "retry-after" not in response.headers:
        return False
    return bool(response.json().get("title") in {"unschedulable", "not ready"})
