"""The extension points of a scheduling policy, as small protocols.

One cycle, after llm-d's inference scheduler and the kubernetes scheduler framework:

* a :class:`Filter` drops candidates that cannot take the request;
* each :class:`Scorer` gives every remaining candidate a score, clamped to [0, 1],
  and a profile sums them with weights;
* a :class:`Picker` chooses from the ranked candidates;
* a :class:`ProfileHandler` runs the profiles (one for the prefill side, one for the
  decode side) and returns a (prefill, decode) :class:`PairChoice` — or a
  :class:`Refusal`, the "can't place" answer, which is a value and not an exception:
  exceptions mean a plugin is broken.

Every plugin is pure and synchronous over the immutable
:class:`~policies.snapshot.CycleContext`; the numbers of the fabric (TTFT of a
pair) come from a :class:`PairCostModel` the router puts in the context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from policies.snapshot import BoolArray, CycleContext, FloatArray, IntArray, Worker


def clamp(value: float) -> float:
    """Clamp a score into [0, 1] (NaN counts as 0)."""
    if not value > 0.0:
        return 0.0
    return 1.0 if value > 1.0 else float(value)


@dataclass(frozen=True, slots=True)
class ScoredWorker:
    """A candidate with its weighted total score and each scorer's clamped part."""

    worker: Worker
    score: float
    parts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PairOption:
    """One (prefill, decode) option as ranked by a handler; ``local``: decode prefills."""

    prefill: str
    decode: str
    score: float
    local: bool = False
    ttft_s: float | None = None


@dataclass(frozen=True, slots=True)
class PairChoice:
    """A handler's answer: the chosen pair, the runners-up and why."""

    prefill: Worker
    decode: Worker
    score: float
    local: bool = False
    runners_up: tuple[PairOption, ...] = ()
    notes: tuple[str, ...] = ()
    considered: int = 0
    #: Prefix pull: the worker whose cached prefix the prefill worker copies over the
    #: fabric before its prefill (``None``: it computes what it lacks), and how many
    #: leading blocks of the prompt it holds once the copy has landed.
    pull_from: Worker | None = None
    pull_blocks: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """The request is valid but cannot be placed now; ``reasons`` say why."""

    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PairCosts:
    """TTFT terms (seconds) for prefill candidates ``P`` × decode candidates ``D``.

    ``queue_s`` and ``compute_s`` have one entry per prefill candidate,
    ``admission_s`` one per decode candidate, ``transfer_s`` and ``total_s`` one per
    pair (rows: prefill, columns: decode); ``tier`` is the fabric tier of each pair.
    """

    queue_s: FloatArray
    compute_s: FloatArray
    transfer_s: FloatArray
    admission_s: FloatArray
    total_s: FloatArray
    tier: IntArray


@runtime_checkable
class PairCostModel(Protocol):
    """Estimates time to first token of (prefill, decode) pairs on the fabric."""

    def pair_costs(self, ctx: CycleContext, prefill: IntArray, decode: IntArray) -> PairCosts:
        """TTFT terms for every pair of the given snapshot positions (no link sharing)."""
        ...

    def local_costs(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        """TTFT when each decode candidate prefills the request itself (no transfer)."""
        ...

    def contended_total(self, ctx: CycleContext, prefill: int, decode: int) -> float:
        """TTFT of one pair with bandwidth shared with transfers in flight on its links.

        Never less than the pair's ``total_s`` from :meth:`pair_costs`.
        """
        ...

    def decode_costs(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        """Decode-side price (seconds, not part of TTFT) of each decode candidate: the
        slowdown its batch takes and gives, and its KV occupancy."""
        ...

    def local_stall(self, ctx: CycleContext, workers: IntArray) -> FloatArray:
        """What a prefill on each worker costs the requests it decodes (zero on a
        prefill-only worker)."""
        ...


@dataclass(frozen=True, slots=True)
class PullPlan:
    """Per prefill candidate (the positions asked for), the cheapest prefix pull:
    ``source`` the holder's position (-1: no pull pays), ``blocks`` the leading blocks
    the candidate holds after it, ``pull_s`` the copy's time over the fabric (no link
    sharing) with its fixed overhead (``CostParams.pull_overhead_s``) and ``saving_s``
    the prefill compute it saves minus ``pull_s`` (> 0 where ``source`` is set)."""

    source: IntArray
    blocks: IntArray
    pull_s: FloatArray
    saving_s: FloatArray


@runtime_checkable
class PrefixPullModel(Protocol):
    """Optional part of a cost model: copying a cached prefix from the worker holding
    it to the prefill worker over the fabric instead of recomputing it."""

    def pull_plan(self, ctx: CycleContext, prefill: IntArray) -> PullPlan | None:
        """The best pull for each prefill candidate; ``None``: pulls are off, or none
        of the candidates lacks a prefix another worker holds."""
        ...

    def pull_saving(self, ctx: CycleContext, source: int, target: int, blocks: int) -> float:
        """:attr:`PullPlan.saving_s` of one pull with link capacity shared with the
        transfers in flight (never more than without them)."""
        ...


class FewPairCostModel(PairCostModel, Protocol):
    """A :class:`PairCostModel` that also prices a few candidates on Python floats,
    with results equal to its array methods bit for bit (a handler may take either
    path). Handlers find it by its ``few_max`` attribute (no runtime protocol check)."""

    @property
    def few_max(self) -> int:
        """Candidates per side up to which the ``*_few`` methods may be asked."""
        ...

    def decode_costs_few(self, ctx: CycleContext, decode: Sequence[int]) -> list[float]:
        """:meth:`PairCostModel.decode_costs` of the positions ``decode``."""
        ...

    def local_stall_few(self, ctx: CycleContext, workers: Sequence[int]) -> list[float]:
        """:meth:`PairCostModel.local_stall` of the positions ``workers``."""
        ...

    def local_costs_few(self, ctx: CycleContext, decode: Sequence[int]) -> list[float]:
        """:meth:`PairCostModel.local_costs` of the positions ``decode``."""
        ...

    def pair_totals_few(self, ctx: CycleContext, prefill: IntArray,
                        decode: IntArray) -> list[list[float]]:
        """``total_s`` of :meth:`PairCostModel.pair_costs` as rows of Python floats."""
        ...


@runtime_checkable
class Filter(Protocol):
    """Drops candidates that cannot take the request; returns a subset, order kept."""

    name: str

    def filter(self, ctx: CycleContext, candidates: Sequence[Worker]) -> list[Worker]:
        """The candidates that pass."""
        ...


@runtime_checkable
class VectorFilter(Protocol):
    """Optional fast path of a :class:`Filter`: a mask over snapshot positions.

    Must agree with :meth:`Filter.filter`; the joint handler uses it to filter a
    thousand workers without building a list of them.
    """

    def mask(self, ctx: CycleContext, positions: IntArray) -> BoolArray:
        """``True`` for each position that passes."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Scores candidates in [0, 1] (higher is better); a missing id scores 0."""

    name: str

    def score(self, ctx: CycleContext, candidates: Sequence[Worker]) -> Mapping[str, float]:
        """A score per candidate id."""
        ...


@runtime_checkable
class Picker(Protocol):
    """Chooses one candidate from a ranking (best first); ``None`` when it is empty."""

    name: str

    def pick(self, ctx: CycleContext, ranked: Sequence[ScoredWorker]) -> ScoredWorker | None:
        """The chosen candidate."""
        ...


class ProfileRunner(Protocol):
    """A named scheduling profile (filters → weighted scorers → picker) ready to run."""

    @property
    def name(self) -> str:
        """The profile's name in its policy document."""
        ...

    def run(self, ctx: CycleContext, candidates: Sequence[Worker]) -> ProfileOutcome:
        """Filter, score and pick among ``candidates``."""
        ...

    def filter(self, ctx: CycleContext, candidates: Sequence[Worker]) -> list[Worker]:
        """Only the profile's filters."""
        ...

    def filter_positions(self, ctx: CycleContext, positions: IntArray) -> IntArray:
        """Only the profile's filters, over snapshot positions."""
        ...


@dataclass(frozen=True, slots=True)
class ProfileOutcome:
    """What one profile run produced: the ranking, the pick and what filters removed."""

    ranked: tuple[ScoredWorker, ...]
    picked: ScoredWorker | None
    removed: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class ProfileHandler(Protocol):
    """Runs a policy's profiles for one request and returns a pair or a refusal."""

    name: str
    #: Profile names the handler needs (a policy document must define them).
    required_profiles: tuple[str, ...]

    def schedule(self, ctx: CycleContext,
                 profiles: Mapping[str, ProfileRunner]) -> PairChoice | Refusal:
        """Choose the (prefill, decode) pair for ``ctx.request``."""
        ...
