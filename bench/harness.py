"""The one way toposched's benchmarks time things, so that no figure can flatter.

Every comparison here is an *anchor* (the thing we must match or beat: Dynamo's
radix tree, bare NIXL, greedy placement, the previous implementation …) and one
or more *candidates*, run on the same inputs in one process:

* **alternating repetitions** — repetition ``r`` runs every side once, in an
  order that reverses each repetition (A B, B A, A B …), so drift in the
  machine (another job starting, a CPU frequency change, the page cache) lands
  on both sides alike; a paired ratio is taken per repetition;
* **identical inputs, checked outputs** — each side's body returns its result;
  the harness compares every side's result (after a ``canonical`` map that
  drops representation details) with the anchor's and raises
  :class:`Disagreement` when they differ: a fast wrong answer is not a result;
* **warm-up** repetitions run first and are not recorded;
* **min / median / max** of the repetitions are reported; ratios use medians;
* **set-up is untimed and equal**: ``prepare()`` builds whatever a side needs
  (not timed), the body it returns is the timed part. The garbage collector
  stays on (as in the service) and is drained before every body so that one
  side's garbage is not collected on the other side's clock;
* **the CPU condition is controlled and stated** (:func:`cpu_condition`):

  - ``idle`` — nothing started by the bench (the machine load is recorded);
  - ``awake`` — one ``nice -n 19`` busy loop per vCPU keeps every vCPU out of
    its halt state. On a 2-vCPU VM a thread or process that sleeps and is woken
    pays a hypervisor wake-up of tens of µs when its vCPU is halted; a busy
    production host never halts. The loops run at the lowest priority, so they
    take almost no CPU from the measured code;
  - ``loaded`` — one normal-priority process per vCPU doing mixed Python work
    (JSON, sorting, hashing) competes with the measured code, as another service
    on the host would;

* **machine load and versions** are recorded with every report
  (:func:`environment`): ``uptime``, load averages before and after, CPU model,
  Python and package versions, the git commit.

Timed runs hold ``/tmp/toposched-bench.lock`` (:func:`bench_lock`) so that two
benchmarks never time each other; a run already wrapped in
``flock /tmp/toposched-bench.lock …`` is recognised and not blocked.

Use::

    parser = argparse.ArgumentParser()
    harness.add_arguments(parser)            # --conditions --repeats --warmup
    args = parser.parse_args()
    with harness.session(args) as run:       # lock + environment
        for condition in run.conditions:
            with harness.cpu_condition(condition) as cond:
                result = harness.compare([
                    harness.Side("dynamo", prepare_dynamo, ops=len(stream)),
                    harness.Side("toposched", prepare_ours, ops=len(stream)),
                ], repeats=args.repeats, warmup=args.warmup, condition=cond)
        print(result.ratio("toposched", "dynamo"))
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCK_PATH = Path(os.environ.get("TOPOSCHED_BENCH_LOCK", "/tmp/toposched-bench.lock"))
CONDITIONS = ("idle", "awake", "loaded")
DEFAULT_PACKAGES = ("numpy", "pydantic", "pydantic-core")

#: What each condition means, for reports.
CONDITION_TEXT = {
    "idle": "idle: nothing started by the bench (other jobs on the machine are recorded "
            "as load)",
    "awake": "vCPUs kept awake: one `nice -n 19` busy loop per vCPU (lowest priority; "
             "keeps vCPUs out of halt so thread/process wake-ups cost what they cost on a "
             "busy host)",
    "loaded": "loaded: one normal-priority Python process per vCPU doing JSON, sort and "
              "hash work competes with the measured code",
}


def progress(tag: str, message: str) -> None:
    """One progress line on stderr, ``[tag HH:MM:SS] message``."""
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ CPU conditions

_BUSY_LOOP = "while :; do :; done"
_LOAD_WORK = (
    "import hashlib, json, random\n"
    "rnd = random.Random(7)\n"
    "data = [{'id': i, 'v': rnd.random(), 's': str(rnd.random())} for i in range(2000)]\n"
    "while True:\n"
    "    text = json.dumps(data)\n"
    "    back = json.loads(text)\n"
    "    back.sort(key=lambda d: d['v'])\n"
    "    hashlib.sha256(text.encode()).digest()\n"
)


def vcpus() -> int:
    """vCPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


@dataclass
class ConditionRecord:
    """What the CPU condition was while a comparison ran."""

    name: str
    text: str
    helpers: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] | None = None
    busy_fraction: float | None = None  # of all vCPUs, from /proc/stat, over the condition

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"name": self.name, "text": self.text, "helpers": self.helpers,
                "load_before": list(self.load_before),
                "load_after": list(self.load_after) if self.load_after else None,
                "busy_fraction": self.busy_fraction}


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _start_helpers(name: str) -> list[subprocess.Popen[bytes]]:
    count = vcpus()
    if name == "awake":
        argv = ["nice", "-n", "19", "sh", "-c", _BUSY_LOOP]
    elif name == "loaded":
        argv = [sys.executable, "-c", _LOAD_WORK]
    else:
        return []
    return [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(count)]


def _stop_helpers(helpers: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in helpers:
        proc.terminate()
    for proc in helpers:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def cpu_condition(name: str, *, settle_s: float = 0.5) -> Iterator[ConditionRecord]:
    """Hold the CPU in condition ``name`` (see :data:`CONDITIONS`) while the block runs.

    The helper processes this starts are stopped (by their own process ids) on exit,
    also when the block raises.
    """
    if name not in CONDITIONS:
        raise ValueError(f"unknown CPU condition {name!r}; expected one of {CONDITIONS}")
    record = ConditionRecord(name, CONDITION_TEXT[name], 0, os.getloadavg())
    helpers = _start_helpers(name)
    record.helpers = len(helpers)
    try:
        if helpers:
            time.sleep(settle_s)
        before = _cpu_ticks()
        yield record
        after = _cpu_ticks()
        if before and after and after[1] > before[1]:
            record.busy_fraction = round((after[0] - before[0]) / (after[1] - before[1]), 3)
    finally:
        _stop_helpers(helpers)
        record.load_after = os.getloadavg()


# ------------------------------------------------------------------ comparisons


class Disagreement(AssertionError):
    """Two sides of a comparison returned different results for the same input."""


@dataclass(frozen=True)
class Samples:
    """What a body returns when it times its operations itself (latencies, in seconds).

    ``output`` is compared across sides like a plain return value; ``samples`` are
    pooled over repetitions into percentiles. The body's own wall time is still
    recorded by the harness.
    """

    output: Any
    samples: Sequence[float]
    stages: dict[str, Sequence[float]] = field(default_factory=dict)


@dataclass
class Side:
    """One side of a comparison.

    ``prepare`` builds the inputs and state (untimed) and returns the body; the body
    is timed and returns the side's output (or a :class:`Samples`). ``ops`` is how
    many operations one body performs (for rates); ``canonical`` maps an output to
    the value compared across sides.
    """

    name: str
    prepare: Callable[[], Callable[[], Any]]
    ops: int = 1
    canonical: Callable[[Any], Any] = field(default=lambda value: value)


@dataclass(frozen=True)
class Stats:
    """Min / median / max of a list of numbers, keeping the numbers."""

    values: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def as_dict(self) -> dict[str, Any]:
        return {"min": self.min, "median": self.median, "max": self.max,
                "values": [round(v, 9) for v in self.values]}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class SideResult:
    """Everything measured for one side."""

    name: str
    ops: int
    wall: Stats
    cpu: Stats
    samples: list[float]
    stages: dict[str, list[float]]

    @property
    def rate(self) -> float:
        """Operations per second at the median repetition."""
        return self.ops / self.wall.median

    def rate_stats(self) -> Stats:
        """Operations per second per repetition."""
        return Stats(tuple(self.ops / t for t in self.wall.values))

    def latency(self, q: float, stage: str | None = None) -> float:
        """Percentile ``q`` of the pooled per-operation samples (or one stage's)."""
        return percentile(self.stages[stage] if stage else self.samples, q)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ops": self.ops, "wall_seconds": self.wall.as_dict(),
                               "cpu_seconds": self.cpu.as_dict(),
                               "rate_per_second": self.rate_stats().as_dict()}
        if self.samples:
            out["latency_seconds"] = _latency_dict(self.samples)
        if self.stages:
            out["stages_seconds"] = {k: _latency_dict(v) for k, v in self.stages.items()}
        return out


def _latency_dict(values: Sequence[float]) -> dict[str, float]:
    return {"count": len(values), "p50": percentile(values, 50),
            "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values) if values else float("nan")}


@dataclass
class Comparison:
    """The result of :func:`compare`: per-side statistics and paired ratios."""

    sides: dict[str, SideResult]
    order: list[list[str]]
    repeats: int
    warmup: int
    agreed: bool
    condition: dict[str, Any] | None = None

    def ratio(self, candidate: str, anchor: str) -> Stats:
        """Candidate throughput / anchor throughput, one value per repetition (paired).

        > 1 means the candidate is faster. Uses wall time per operation.
        """
        cand, anch = self.sides[candidate], self.sides[anchor]
        return Stats(tuple((a / anch.ops) / (c / cand.ops)
                           for c, a in zip(cand.wall.values, anch.wall.values, strict=True)))

    def cpu_ratio(self, candidate: str, anchor: str) -> Stats:
        """Like :meth:`ratio` on process CPU time (all threads) per operation.

        On a loaded machine wall time measures the scheduler's favour as much as the
        code (a side that blocks and wakes is preferred over one that computes); CPU
        time per operation is the work each side did. Report it beside wall time.
        """
        cand, anch = self.sides[candidate], self.sides[anchor]
        return Stats(tuple((a / anch.ops) / (c / cand.ops)
                           for c, a in zip(cand.cpu.values, anch.cpu.values, strict=True)))

    def latency_ratio(self, candidate: str, anchor: str, q: float = 50) -> float:
        """Anchor percentile / candidate percentile of the pooled samples (> 1: faster)."""
        return self.sides[anchor].latency(q) / self.sides[candidate].latency(q)

    def as_dict(self) -> dict[str, Any]:
        names = list(self.sides)
        return {"repeats": self.repeats, "warmup": self.warmup, "agreed": self.agreed,
                "order": self.order, "condition": self.condition,
                "sides": {n: s.as_dict() for n, s in self.sides.items()},
                "paired_ratio_vs_first": {n: self.ratio(n, names[0]).as_dict()
                                          for n in names[1:]},
                "paired_cpu_ratio_vs_first": {n: self.cpu_ratio(n, names[0]).as_dict()
                                              for n in names[1:]}}


def _run_once(side: Side) -> tuple[float, float, Any]:
    body = side.prepare()
    gc.collect()
    cpu0 = time.process_time()
    start = time.perf_counter()
    output = body()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return wall, cpu, output


def _check(sides: Sequence[Side], outputs: dict[str, Any], repetition: int) -> None:
    first = sides[0]
    reference = first.canonical(_plain(outputs[first.name]))
    for side in sides[1:]:
        value = side.canonical(_plain(outputs[side.name]))
        if value != reference:
            raise Disagreement(
                f"repetition {repetition}: {side.name!r} returned a different result than "
                f"{first.name!r}: {_short(value)} != {_short(reference)}")


def _plain(output: Any) -> Any:
    return output.output if isinstance(output, Samples) else output


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def compare(sides: Sequence[Side], *, repeats: int = 5, warmup: int = 1,
            condition: ConditionRecord | None = None, check: bool = True,
            tag: str = "bench") -> Comparison:
    """Run ``sides`` alternately ``warmup + repeats`` times; the first side is the anchor.

    Order alternates each repetition (forward, then reversed). Outputs are compared
    with the first side's every repetition (warm-ups included) unless ``check`` is
    False — only for sides that return nothing comparable, which the report must say.
    """
    if len(sides) < 1 or len({s.name for s in sides}) != len(sides):
        raise ValueError("compare needs one or more sides with distinct names")
    walls: dict[str, list[float]] = {s.name: [] for s in sides}
    cpus: dict[str, list[float]] = {s.name: [] for s in sides}
    samples: dict[str, list[float]] = {s.name: [] for s in sides}
    stages: dict[str, dict[str, list[float]]] = {s.name: {} for s in sides}
    order: list[list[str]] = []
    for rep in range(warmup + repeats):
        run_order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        outputs: dict[str, Any] = {}
        for side in run_order:
            wall, cpu, output = _run_once(side)
            outputs[side.name] = output
            if rep < warmup:
                continue
            walls[side.name].append(wall)
            cpus[side.name].append(cpu)
            if isinstance(output, Samples):
                samples[side.name].extend(output.samples)
                for stage, values in output.stages.items():
                    stages[side.name].setdefault(stage, []).extend(values)
        if check and len(sides) > 1:
            _check(sides, outputs, rep)
        if rep >= warmup:
            order.append([s.name for s in run_order])
            rates = ", ".join(f"{s.name} {s.ops / walls[s.name][-1]:,.0f}/s" for s in sides)
            progress(tag, f"rep {rep - warmup + 1}/{repeats}: {rates}")
    results = {s.name: SideResult(s.name, s.ops, Stats(tuple(walls[s.name])),
                                  Stats(tuple(cpus[s.name])), samples[s.name],
                                  stages[s.name]) for s in sides}
    return Comparison(results, order, repeats, warmup, check,
                      condition.as_dict() if condition else None)


# ------------------------------------------------------------------ environment


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def uptime() -> str:
    """``uptime``'s one line (load averages), or the load averages alone."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        one, five, fifteen = os.getloadavg()
        return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def environment(packages: Sequence[str] = ()) -> dict[str, Any]:
    """Machine, load, versions and commit, for the report."""
    names = dict.fromkeys([*DEFAULT_PACKAGES, *packages])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": platform.platform(), "cpu_model": _cpu_model(), "vcpus": vcpus(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in names},
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "uptime": uptime(), "load": list(os.getloadavg()),
    }


# ------------------------------------------------------------------ lock and session


def _inherited_lock() -> bool:
    """True when an open file descriptor of this process is the bench lock (``flock`` wrapper)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return False
    for entry in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(entry) == str(LOCK_PATH):
                return True
    return False


@contextlib.contextmanager
def bench_lock(tag: str = "bench") -> Iterator[str]:
    """Hold ``/tmp/toposched-bench.lock`` (yields how: ``inherited`` or ``acquired``)."""
    if _inherited_lock():
        yield "inherited"
        return
    with LOCK_PATH.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(tag, f"waiting for {LOCK_PATH} (another benchmark is running)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield "acquired"
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_arguments(parser: argparse.ArgumentParser, *, conditions: Sequence[str] = ("awake",),
                  repeats: int = 5, warmup: int = 1, timing: bool = True) -> None:
    """``--conditions``, ``--repeats``, ``--warmup`` and ``--no-lock`` with these defaults
    (``timing=False``: a benchmark with its own ``--repeats``; only the others)."""
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(conditions),
                        help="CPU conditions to measure under, in order (default: %(default)s)")
    if timing:
        parser.add_argument("--repeats", type=int, default=repeats,
                            help="timed alternating repetitions per comparison "
                                 "(default: %(default)s)")
        parser.add_argument("--warmup", type=int, default=warmup,
                            help="untimed repetitions first (default: %(default)s)")
    else:
        parser.set_defaults(warmup=0)
    parser.add_argument("--no-lock", action="store_true",
                        help=f"do not take {LOCK_PATH} (for quick trial runs only)")


@dataclass
class Session:
    """One benchmark run: its arguments, environment and lock state."""

    conditions: list[str]
    repeats: int
    warmup: int
    env: dict[str, Any]
    lock: str
    started: float = field(default_factory=time.perf_counter)

    def finish(self) -> dict[str, Any]:
        """The environment with the end-of-run load and duration added."""
        self.env["load_after"] = list(os.getloadavg())
        self.env["uptime_after"] = uptime()
        self.env["wall_seconds"] = round(time.perf_counter() - self.started, 1)
        self.env["lock"] = self.lock
        self.env["conditions"] = self.conditions
        self.env["repeats"] = self.repeats
        self.env["warmup"] = self.warmup
        return self.env


@contextlib.contextmanager
def session(args: argparse.Namespace, *, packages: Sequence[str] = (),
            tag: str = "bench") -> Iterator[Session]:
    """Take the bench lock (unless ``--no-lock``) and record the environment."""
    lock: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext("not taken (--no-lock)") if args.no_lock else bench_lock(tag))
    with lock as how:
        run = Session(list(args.conditions), args.repeats, args.warmup,
                      environment(packages), how)
        progress(tag, f"{run.env['uptime']}; conditions {', '.join(run.conditions)}")
        yield run


# ------------------------------------------------------------------ report helpers


def environment_markdown(env: dict[str, Any], script: str, command: str, *,
                         compared: bool = True) -> list[str]:
    """The standard header lines of a report: how it was made and on what.

    ``compared``: the report's figures come from :func:`compare` (else the header says
    the harness recorded only the machine, load and CPU condition).
    """
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    dirty = " (uncommitted changes)" if env.get("dirty") else ""
    lines = [
        f"Generated by `{script}` on {env['date']} at commit `{env['commit']}`{dirty}, in "
        f"{env.get('wall_seconds', '?')} s. Rerun: `{command}`.",
        "",
        f"Machine: {env['cpu_model']}, {env['vcpus']} vCPUs, {env['machine']}; Python "
        f"{env['python']}; {packages}.",
        "",
        f"Load: before `{env['uptime']}`; after `{env.get('uptime_after', '?')}`. "
        f"Bench lock: {env.get('lock', '?')}.",
        "",
        f"Method (bench/harness.py): {env.get('repeats', '?')} timed repetitions after "
        f"{env.get('warmup', '?')} warm-up, sides alternating in order each repetition "
        "(A B, B A, …), same inputs, outputs compared every repetition unless stated; "
        "figures are medians with [min–max]; ratios are per-repetition paired ratios "
        "(median [min–max]); GC on, drained before each timed body; set-up untimed on "
        "every side." if compared else
        "Method: the timings below are this benchmark's own (described with each "
        "table); bench/harness.py held the bench lock, recorded the machine, load and "
        "versions, and held the CPU condition for the whole run.",
        "",
    ]
    return lines


def wrap_main(args: argparse.Namespace, tag: str, packages: Sequence[str],
              run_body: Callable[[], dict[str, Any]], script: str,
              argv: Sequence[str] | None) -> dict[str, Any]:
    """Run a benchmark body under the lock and the first CPU condition asked for.

    Returns the body's result with ``environment``, ``condition`` and ``command``
    added (for benchmarks whose timings are their own, not :func:`compare`'s).
    """
    with session(args, packages=packages, tag=tag) as run, \
            cpu_condition(run.conditions[0]) as cond:
        result = run_body()
    result["environment"] = run.finish()
    result["condition"] = cond.as_dict()
    given = list(argv if argv is not None else sys.argv[1:])
    result["command"] = " ".join(["flock", str(LOCK_PATH), ".venv/bin/python", script,
                                  *given])
    return result


def header_markdown(result: dict[str, Any], script: str, *, compared: bool) -> list[str]:
    """Environment lines and the CPU condition of a :func:`wrap_main` result."""
    return [*environment_markdown(result["environment"], script, result["command"],
                                  compared=compared),
            condition_line(result["condition"]), ""]


def condition_line(cond: dict[str, Any] | None) -> str:
    """One sentence stating the CPU condition and the load while it held."""
    if not cond:
        return "CPU condition: not controlled."
    busy = cond.get("busy_fraction")
    busy_text = f", all-vCPU busy {busy:.0%}" if busy is not None else ""
    load = cond.get("load_before") or [float("nan")]
    return f"CPU condition **{cond['name']}** — {cond['text']}; 1-min load {load[0]:.2f} " \
           f"at start{busy_text}."


def fmt_rate(stats: Stats, digits: int = 0) -> str:
    """``12,345 [11,000–13,000]``."""
    return f"{stats.median:,.{digits}f} [{stats.min:,.{digits}f}–{stats.max:,.{digits}f}]"


def fmt_ratio(stats: Stats) -> str:
    """``1.23× [1.10–1.31]``."""
    return f"{stats.median:.2f}× [{stats.min:.2f}–{stats.max:.2f}]"


def fmt_us(seconds: float) -> str:
    """Seconds as µs with a sensible number of digits."""
    us = seconds * 1e6
    return f"{us:,.1f} µs" if us < 100 else f"{us:,.0f} µs"


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON with a trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Stats):
        return value.as_dict()
    if isinstance(value, Comparison | SideResult | ConditionRecord):
        return value.as_dict()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
