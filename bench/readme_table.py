"""Rewrite the figures table of bench/README.md from the reports in bench/results.

Run: ``.venv/bin/python bench/readme_table.py`` (after any benchmark). Only the lines
between the ``<!-- figures -->`` markers change; every number comes from a report's
JSON, so the table cannot drift from the reports.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
START, END = "<!-- figures -->", "<!-- /figures -->"
Row = tuple[str, str, str, str, str, str]


def _ratio(values: list[float]) -> str:
    ordered = sorted(values)
    mid = ordered[len(ordered) // 2] if len(ordered) % 2 else (
        ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    return f"{mid:.2f}× [{ordered[0]:.2f}–{ordered[-1]:.2f}]"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    if "command" not in data:
        command = _command_of(name)
        if command is not None:
            data["command"] = command
    return data if "command" in data else None


def _command_of(name: str) -> str | None:
    """The command a report states in its Markdown (None: it states none)."""
    report = RESULTS / f"{name}.md"
    found = COMMAND_LINES.search(report.read_text()) if report.exists() else None
    if found is not None:
        return found.group(1)
    script = SCRIPTS.get(name)
    return f".venv/bin/python {script}" if script else None


def _cond(data: dict[str, Any], key: str = "condition") -> str:
    cond = data.get(key) or {}
    load = (cond.get("load_before") or [float("nan")])[0]
    return f"{cond.get('name', '?')} (load {load:.1f})"


def prefix_rows(data: dict[str, Any]) -> Iterator[Row]:
    labels = {"events": "stored events/s", "lookups": "raw lookups/s",
              "route": "route-then-store req/s"}
    for cond in data["conditions"]:
        for scale in cond["scales"]:
            for key, label in labels.items():
                if key not in scale:
                    continue
                cmp_ = scale[key]
                wall = _ratio(cmp_["paired_ratio_vs_first"]["toposched"]["values"])
                cpu = _ratio(cmp_["paired_cpu_ratio_vs_first"]["toposched"]["values"])
                yield ("prefix_index.md", f"{label}, {scale['workers']:,} workers",
                       "Dynamo RadixTree", f"toposched / Dynamo: wall {wall}; CPU {cpu}",
                       _cond(cond), data["command"])


def _p50(side: dict[str, Any]) -> float:
    return float(side["latency_seconds"]["p50"])


def transfer_rows(data: dict[str, Any], report: str = "transfers.md") -> Iterator[Row]:
    best = "bare NIXL (best: progress thread off)"
    pinned = data.get("copy_cpu")
    where = _cond(data) + (f", copy on vCPU {pinned} both sides" if pinned is not None
                           else ", copy not pinned")
    for row in data["throughput"]:
        sides = row["sides"]
        ratio = _p50(sides[best]) / _p50(sides["sidecar end-to-end"])
        yield (report, f"sidecar end-to-end throughput, {row['size_mib']} MiB",
               "bare NIXL, best settings", f"sidecar / bare: {ratio:.2f}× (p50 GB/s)", where,
               data["command"])
    for row in data.get("pipelined", []):
        totals = row["totals"]

        def best(kind: str, totals: dict[str, list[float]] = totals) -> str:
            return min((n for n in totals if n.startswith(kind)),
                       key=lambda n: sorted(totals[n])[len(totals[n]) // 2])

        bare, side = best("bare"), best("sidecar")
        pairs = [b / s for b, s in zip(totals[bare], totals[side], strict=True)]
        yield (report, f"sidecar end-to-end throughput, pipelined, "
               f"{row['size_mib']} MiB ({side})", f"bare NIXL, best settings ({bare})",
               f"sidecar / bare: {_ratio(pairs)} (paired)", where, data["command"])
    for row in data["small"]:
        cp = row["control_plane_seconds"]["p50"] * 1e3
        yield (report, f"control plane per transfer, {row['size']} (p50)",
               "— (target ≤ 1 ms)", f"{cp:.2f} ms", where, data["command"])


def placement_rows(data: dict[str, Any]) -> Iterator[Row]:
    for r in data["results"]:
        t = r["timing"]["sides"]
        slower = [p / g for p, g in zip(t["placer"]["wall_seconds"]["values"],
                                        t["greedy"]["wall_seconds"]["values"], strict=True)]
        cost = r["greedy"]["cost_ms"] / r["solver"]["cost_ms"]
        yield ("placement.md", f"{r['scenario']}, {r['gpus']:,} GPUs: solve time "
               f"({r['method']}), cost", "greedy (set-up counted on both sides)",
               f"solver takes {_ratio(slower)} greedy's time; greedy cost / solver cost "
               f"{cost:.3f}",
               _cond(data), data["command"])


def topology_rows(data: dict[str, Any]) -> Iterator[Row]:
    q = data["queries"]
    for key, label in (("single", "single pair query"), ("rows", "one-vs-all pair query")):
        values = q[key]["paired_ratio_vs_first"]["distance model"]["values"]
        yield ("topology.md", f"{label}, {q['gpus']:,} GPUs (speed)",
               f"dense precomputed table ({q['table_mb']:,.0f} MB)",
               f"model / table speed: {_ratio(values)}",
               _cond(data), data["command"])


def router_rows(data: dict[str, Any]) -> Iterator[Row]:
    for row in data["latency"]:
        base = row["sides"]["prefix-only"]["stages_seconds"]["cpu"]["p50"]
        fc = row["sides"]["fabric-cost"]["stages_seconds"]["cpu"]
        yield ("router.md", f"fabric-cost decision, {row['workers']:,} workers: CPU p50 / p99",
               "prefix-only policy (CPU p50)",
               f"{fc['p50'] * 1e6:.0f} / {fc['p99'] * 1e6:.0f} µs; prefix-only / fabric-cost "
               f"CPU p50 {base / fc['p50']:.2f}×",
               _cond(data), data["command"])


def own_rows(name: str, what: str) -> Callable[[dict[str, Any]], Iterator[Row]]:
    def rows(data: dict[str, Any]) -> Iterator[Row]:
        yield (f"{name}.md", what, "— (absolute figures; see the report)", "—", _cond(data),
               data["command"])
    return rows


def gateway_rows(data: dict[str, Any]) -> Iterator[Row]:
    for condition in data["conditions"]:
        found = data[condition]
        lat = found["latency"]["sides"]
        direct, gateway = (lat[s]["latency_seconds"]["p50"] * 1e3 for s in ("direct", "gateway"))
        thr = found["throughput"]["paired_ratio_vs_first"]["gateway"]["values"]
        yield ("gateway.md", f"added latency per streamed request, p50 (target ≤ 1 ms); "
               f"throughput with {data['concurrency']} in flight", "vLLM's two-leg proxy flow "
               "run by the client, same fake engines", f"{gateway - direct:+.2f} ms "
               f"({gateway:.2f} vs {direct:.2f} ms); gateway / direct req/s {_ratio(thr)}",
               _cond(found["latency"]), data["command"])


def leg_client_rows(data: dict[str, Any]) -> Iterator[Row]:
    for condition in data["environment"]["conditions"]:
        found = data[condition]
        cpu = {name: side["cpu_seconds"]["median"] / side["ops"] * 1e3
               for name, side in found["sides"].items()}
        figures = ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu.items())
        yield ("leg_client.md", "gateway engine-leg client: CPU per two-leg request",
               "httpx (and aiohttp when installed), same requests", figures,
               _cond(found), data["command"])


def _speed(cmp_: dict[str, Any], candidate: str) -> str:
    return _ratio(cmp_["paired_ratio_vs_first"][candidate]["values"])


def engine_event_rows(data: dict[str, Any]) -> Iterator[Row]:
    for row in data["ingestion"]:
        for cmp_ in row["comparisons"].values():
            yield ("engine_events.md", f"KV events ZMQ → decode → prefix index, "
                   f"{row['engines']} engine(s)", "the same events applied to the index alone",
                   f"toposched / index alone speed: {_speed(cmp_, 'zmq-to-index')}",
                   _cond(cmp_), data["command"])
    for cmp_ in data["lag"]["comparisons"].values():
        yield ("engine_events.md", f"BlockStored → routing decision lag, "
               f"{data['lag']['engines']} engines", "events POSTed as JSON over HTTP",
               f"ZMQ / HTTP speed: {_speed(cmp_, 'zmq')}", _cond(cmp_), data["command"])


def ui_rows(data: dict[str, Any]) -> Iterator[Row]:
    for page in data["pages"]:
        cmp_ = page["comparison"]
        for candidate in list(cmp_["sides"])[1:]:
            yield ("ui.md", f"route requests/s with {candidate} of /ui open (refresh "
                   f"{page['interval_s']:g} s)", "no page open",
                   f"with / without pages: {_speed(cmp_, candidate)}", _cond(cmp_),
                   data["command"])


def topology_input_rows(data: dict[str, Any]) -> Iterator[Row]:
    for key, cmp_ in data.items():
        if not isinstance(cmp_, dict) or "paired_ratio_vs_first" not in cmp_:
            continue  # not a harness comparison (cluster shapes, memory, parse times)
        anchor, *candidates = cmp_["sides"]
        for candidate in candidates:
            yield ("topology_inputs.json", f"{key}: {candidate}", anchor,
                   f"speed vs anchor: {_speed(cmp_, candidate)}", _cond(cmp_), data["command"])


def _stall_runs(data: dict[str, Any]) -> str:
    """How many 10,000-worker runs (this report's rounds and its *other runs*) kept the
    stall within 20 ms, when there are several."""
    runs = [data, *data.get("other_runs", [])]
    stalls = [r["healthz_max_ms"] for run in runs for r in run["rows"]
              if r["label"] == "candidate" and r["workers"] == 10_000]
    if len(stalls) < 2:
        return ""
    return (f"; ≤ 20 ms in {sum(ms <= 20 for ms in stalls)} of {len(stalls)} "
            f"runs ({', '.join(f'{ms:.1f}' for ms in stalls)} ms)")


def router_scale_rows(data: dict[str, Any]) -> Iterator[Row]:
    anchors = {(r["workers"], r.get("round", 1)): r for r in data["rows"]
               if r["label"] == "anchor"}
    cond = _cond(data) if data.get("condition") else None
    for row in data["rows"]:
        if row["label"] != "candidate":
            continue
        anchor = anchors.get((row["workers"], row.get("round", 1)))
        size = f"{row['workers']:,} workers" + (
            f", round {row['round']}" if row.get("rounds", 1) > 1 else "")
        where = cond or f"not controlled (load {row['load'].split()[0]})"
        p50 = row["first_route_p50_ms"]
        versus = f"; anchor / candidate {anchor['first_route_p50_ms'] / p50:.1f}×" if anchor \
            else ""
        yield ("router_scale.md", f"first route after a worker-set change, {size} (wall p50)",
               "the previous code (where measured)" if anchor else "—",
               f"{p50:.1f} ms{versus}", where, data["command"])
        loop = row["steady_route_loop_p50_ms"]
        yield ("router_scale.md", f"event-loop CPU per route (steady p50), {size}",
               "the previous code (where measured)" if anchor else "—",
               f"{loop:.1f} ms" + (f"; anchor {anchor['steady_route_loop_p50_ms']:.1f} ms"
                                   if anchor else ""), where, data["command"])
        if row["workers"] == 10_000 or row["workers"] >= 100_000:
            yield ("router_scale.md", "longest /healthz answer (event-loop stall) while "
                   f"workers join and leave, {size}", "— (target ≤ 20 ms at 10,000)",
                   f"{row['healthz_max_ms']:.1f} ms" + (
                       f" (anchor {anchor['healthz_max_ms']:.1f} ms)" if anchor else ""),
                   where, data["command"])
    stalls = _stall_runs(data)
    if stalls:
        yield ("router_scale.md", "10,000-worker runs whose longest /healthz answer stayed "
               "≤ 20 ms", "—", stalls.removeprefix("; "), cond or "not controlled",
               data["command"])


def mocker_rows(data: dict[str, Any]) -> Iterator[Row]:
    for run in data["runs"]:
        ours, theirs = run["ours"]["ttft_p50_ms"], run["mocker"]["ttft_p50_ms"]
        yield ("mocker_compare.md", f"simulated TTFT p50, {run['mode']}, {run['policy']}",
               f"NVIDIA Dynamo's mocker ({run['mocker_router']})",
               f"ours / mocker {ours / theirs:.2f}× ({ours:.0f} / {theirs:.0f} ms)",
               "— (simulated time)", data["command"])


SOURCES: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
    "prefix_index": prefix_rows, "transfers": transfer_rows,
    "transfers_idle": lambda data: transfer_rows(data, "transfers_idle.md"),
    "transfers_unpinned": lambda data: transfer_rows(data, "transfers_unpinned.md"),
    "transfers_idle_unpinned": lambda data: transfer_rows(data,
                                                          "transfers_idle_unpinned.md"),
    "placement": placement_rows,
    "topology": topology_rows, "router": router_rows,
    "route_http": own_rows("route_http", "route and report requests over HTTP"),
    "state": own_rows("state", "memory vs Redis store operations, job delivery"),
    "telemetry": own_rows("telemetry", "telemetry ingest and rendering"),
    "replica_convergence": own_rows("replica_convergence", "convergence lag between replicas"),
    "gateway": gateway_rows, "leg_client": leg_client_rows,
    "engine_events": engine_event_rows, "ui": ui_rows,
    "topology_inputs": topology_input_rows, "router_scale": router_scale_rows,
    "mocker_compare": mocker_rows,
}
#: Reports written before the harness recorded their command: it is read from the
#: report's Markdown ("Rerun: `…`" and the like), or from the generating script's own
#: docstring when the report has no Markdown.
COMMAND_LINES = re.compile(r"(?:Rerun|Command|Reproduce): `([^`]+)`")
SCRIPTS = {"topology_inputs": "bench/topology_inputs.py", "router_scale":
           "bench/router_scale_bench.py", "mocker_compare": "bench/mocker_compare.py"}


def table() -> list[str]:
    """The table's lines: one row per figure of every report written by the harness."""
    lines = ["| report | figure | anchor | ratio (as stated in the row) | condition | "
             "command |", "| --- | --- | --- | --- | --- | --- |"]
    for name, rows in SOURCES.items():
        data = _load(name)
        if data is None:
            lines.append(f"| {name}.md | (not yet regenerated with the harness) | | | | |")
            continue
        lines += ["| " + " | ".join(cells[:5]) + f" | `{cells[5]}` |" for cells in rows(data)]
    return lines


def main() -> int:
    text = README.read_text()
    if START not in text or END not in text:
        print(f"{README}: no {START} … {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + START + "\n" + "\n".join(table()) + "\n" + END + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
