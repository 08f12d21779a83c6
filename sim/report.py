"""Simulation reports: JSON, a Markdown comparison and PNG plots (matplotlib, Agg).

matplotlib is imported here only, and only when plots are drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sim.metrics import HISTOGRAM_EDGES, Summary
from topology.tiers import Tier


class RunRecord(BaseModel):
    """One simulated run: what was run and what it measured."""

    model_config = ConfigDict(frozen=True)
    label: str
    cluster: str
    workload: str
    policy: str
    placement: str
    aggregated: bool = False
    infinite_fabric: bool = False
    seed: int = 0
    summary: Summary


class SimReport(BaseModel):
    """A set of runs to compare, plus free-form sections (validation, notes)."""

    model_config = ConfigDict(frozen=True)
    title: str
    runs: tuple[RunRecord, ...]
    sections: tuple[tuple[str, str], ...] = ()


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f}" if seconds >= 0.01 else f"{seconds * 1e3:.2f}"


def comparison_table(runs: Sequence[RunRecord], baseline: RunRecord | None = None) -> str:
    """A Markdown table: one row per run; ratios against ``baseline`` when given."""
    head = ("| run | TTFT p50 / p90 / p99 (ms) | TPOT p50 / p99 (ms) | E2E p99 (s) | goodput "
            "(req/s) | SLO met | prefix hits (ideal) | bytes moved | no-uplink bytes | "
            "util P / D |")
    rows = [head, "|" + " --- |" * 10]
    for run in runs:
        s = run.summary
        ratio = ""
        if baseline is not None and baseline.summary.goodput_rps > 0 and run is not baseline:
            ratio = f" ({s.goodput_rps / baseline.summary.goodput_rps:.2f}×)"
        rows.append(
            f"| {run.label} | {_ms(s.ttft.p50)} / {_ms(s.ttft.p90)} / {_ms(s.ttft.p99)} | "
            f"{_ms(s.tpot.p50)} / {_ms(s.tpot.p99)} | {s.e2e.p99:.1f} | "
            f"{s.goodput_rps:.2f}{ratio} | {s.slo_attainment:.1%} | "
            f"{_hits(s)} | {s.bytes_moved / 1e12:.2f} TB | "
            f"{s.bytes_no_uplink_share:.0%} | {s.prefill_utilisation:.0%} / "
            f"{s.decode_utilisation:.0%} |")
    return "\n".join(rows)


def _hits(s: Summary) -> str:
    """Prefix hits (ideal); split into local and pulled when prefixes were pulled."""
    text = f"{s.prefix_hit_ratio:.1%} ({s.ideal_hit_ratio:.1%})"
    if s.pulls:
        moved = sum(t.bytes for t in s.pulls) / 1e12
        text += (f": {s.prefix_hit_ratio - s.pulled_hit_ratio:.1%} local, "
                 f"{s.pulled_hit_ratio:.1%} pulled ({moved:.2f} TB)")
    return text


def tier_table(run: RunRecord) -> str:
    """Transfers of one run by tier: count, bytes, latency percentiles."""
    rows = ["| tier | transfers | bytes | latency p50 / p99 (ms) |", "| --- | --- | --- | --- |"]
    for t in run.summary.transfers:
        rows.append(f"| {t.tier} | {t.count} | {t.bytes / 1e9:,.0f} GB | "
                    f"{_ms(t.latency.p50)} / {_ms(t.latency.p99)} |")
    return "\n".join(rows)


def markdown(report: SimReport, plots: Sequence[str] = ()) -> str:
    """The Markdown report, grouped by (cluster, workload)."""
    out = [f"# {report.title}", ""]
    for cluster, workload, runs in _groups(report.runs):
        out += [f"## {cluster} · {workload}", "", comparison_table(runs, runs[0]), ""]
        out += [f"Transfers by tier, `{runs[0].label}`:", "", tier_table(runs[0]), ""]
    for heading, text in report.sections:
        out += [f"## {heading}", "", text, ""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(out)


def _groups(runs: Sequence[RunRecord]) -> list[tuple[str, str, list[RunRecord]]]:
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.cluster, run.workload), []).append(run)
    return [(c, w, rs) for (c, w), rs in groups.items()]


def write_report(report: SimReport, out_dir: str | Path, *, stem: str = "simulation",
                 plots_dir: str | Path | None = None, draw: bool = True,
                 compare_with: int = 1) -> list[Path]:
    """Write ``stem.json``, ``stem.md`` and (``draw``) PNGs; returns the paths written.

    The transfer histograms show each group's first run next to its run number
    ``compare_with``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = Path(plots_dir) if plots_dir is not None else out
    pngs = draw_plots(report, images, compare_with) if draw else []
    rel = [_relative(p, out) for p in pngs]
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(report.model_dump_json(indent=2) + "\n")
    md_path.write_text(markdown(report, rel))
    return [json_path, md_path, *pngs]


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def draw_plots(report: SimReport, out_dir: Path, compare_with: int = 1) -> list[Path]:
    """One set of PNGs per (cluster, workload): latency, goodput, bytes, transfer histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for cluster, workload, runs in _groups(report.runs):
        slug = f"{cluster}_{workload}".replace(":", "_").replace(",", "_").replace("=", "")
        paired = [runs[0], runs[min(compare_with, len(runs) - 1)]] if len(runs) > 1 else runs
        for name, draw, shown in (("latency", _latency, runs), ("goodput", _goodput, runs),
                                  ("bytes", _bytes, runs), ("transfers", _histograms, paired)):
            fig = draw(plt, shown, f"{cluster} · {workload}")
            path = out_dir / f"{slug}_{name}.png"
            fig.savefig(path, dpi=90, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
    return written


def _latency(plt: Any, runs: Sequence[RunRecord], title: str) -> Any:
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(runs))
    for key, width in (("p50", -0.27), ("p90", 0.0), ("p99", 0.27)):
        ax.bar([x + width for x in xs], [getattr(r.summary.ttft, key) for r in runs], 0.27,
               label=f"TTFT {key}")
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    _labels(ax, runs, title + " — TTFT")
    ax.legend()
    return fig


def _goodput(plt: Any, runs: Sequence[RunRecord], title: str) -> Any:
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(runs)), [r.summary.goodput_rps for r in runs], color="tab:green")
    ax.set_ylabel("goodput (requests/s meeting TTFT and TPOT SLOs)")
    _labels(ax, runs, title + " — goodput")
    return fig


def _bytes(plt: Any, runs: Sequence[RunRecord], title: str) -> Any:
    fig, ax = plt.subplots(figsize=(10, 4))
    tiers = sorted({t.tier for r in runs for t in r.summary.transfers},
                   key=lambda name: int(Tier[name.upper()]))
    bottom = [0.0] * len(runs)
    for tier in tiers:
        values = [sum(t.bytes for t in r.summary.transfers if t.tier == tier) / 1e12 for r in runs]
        ax.bar(range(len(runs)), values, bottom=bottom, label=tier)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("KV bytes moved (TB)")
    _labels(ax, runs, title + " — bytes per tier")
    ax.legend(fontsize=7)
    return fig


def _histograms(plt: Any, runs: Sequence[RunRecord], title: str) -> Any:
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    edges = list(HISTOGRAM_EDGES)
    for ax, run in zip(axes[0], runs, strict=True):
        for t in run.summary.transfers:
            ax.stairs(t.histogram, edges, label=f"{t.tier} ({t.count})")
        ax.set_xscale("log")
        ax.set_xlabel("KV transfer latency (s)")
        ax.set_ylabel("transfers")
        ax.set_title(f"{run.label}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title + " — transfer latency by tier", fontsize=10)
    return fig


def _labels(ax: Any, runs: Sequence[RunRecord], title: str) -> None:
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([r.label for r in runs], rotation=30, ha="right", fontsize=7)
    ax.set_title(title, fontsize=10)


def draw_sweep(series: dict[str, list[tuple[float, float]]], path: Path, *, title: str,
               xlabel: str, ylabel: str) -> Path:
    """One line per series of ``(x, y)`` points (a load sweep), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
