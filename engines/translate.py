"""Engine KV events → the prefix index's own events, keyed by toposched's token-chunk hashes.

An engine's block hashes depend on its ``PYTHONHASHSEED`` (random per process unless
set) and its hash algorithm, so the router cannot reproduce them from a request's
tokens. Like llm-d's "dual key", a :class:`KeyTranslator` keys every block the way the
router hashes prompts (:func:`scheduler.prefix.block_hashes`: chained XXH3 over the
block's token ids) and remembers engine hash → own key, so that later removals, and
stores that continue a chain (``parent_block_hash``), find the key. Only the block
size must match the router's, and it comes from the engine.

Rules (each counted in :class:`TranslateStats`):

* a store needs ``token_ids`` (``len == blocks × block_size``); without them it cannot
  be keyed and is skipped (``without_tokens``);
* a store whose parent is unknown (stored before toposched subscribed, or lost) is
  skipped (``orphans``): its chain cannot be keyed from tokens alone;
* only KV-cache group 0 is indexed (hybrid models report one group per cache kind);
* blocks with extra keys (multimodal items, a cache salt) get keys of their own that
  no plain prompt matches; a LoRA adapter's blocks live under the adapter's name
  (requests for an adapter name it as their model), the base model's under the model;
* medium ``GPU`` (or none) is the ``gpu`` tier, any other medium (``CPU``, storage)
  the ``host`` tier.

Data-parallel ranks of one instance share the instance's index entries: a key is
stored when the first rank holds it and removed when the last one drops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engines.events import (
    AllCleared,
    BlocksRemoved,
    BlocksStored,
    EngineEvent,
    EngineHash,
    encode_extra,
)
from scheduler.prefix import AllBlocksCleared, BlockRemoved, BlockStored
from scheduler.prefix.hashing import block_hashes, chain_hash, dynamo_hash, local_block_hash

NativeEvent = BlockStored | BlockRemoved | AllBlocksCleared
Tier = Literal["gpu", "host"]
#: (model namespace, own key, tier) of one indexed block.
Holding = tuple[str, int, Tier]


@dataclass
class TranslateStats:
    """Counters of one instance's translation (monotonic)."""

    stored_blocks: int = 0
    removed_blocks: int = 0
    cleared: int = 0
    orphans: int = 0
    without_tokens: int = 0
    other_groups: int = 0
    malformed: int = 0


@dataclass
class _Rank:
    """What one data-parallel rank holds: engine hash → (namespace, own key, tiers)."""

    keys: dict[EngineHash, tuple[str, int, set[Tier]]] = field(default_factory=dict)


def tier_of(medium: str | None) -> Tier:
    """The index tier of an engine's storage medium."""
    return "gpu" if medium is None or medium.upper() == "GPU" else "host"


def own_keys(tokens: Sequence[int], block_size: int, parent: int | None,
             extras: Sequence[Any] | None = None) -> list[int]:
    """toposched's chained keys of the blocks in ``tokens`` after ``parent``.

    Without extra keys these are exactly :func:`scheduler.prefix.block_hashes`; a block
    with extra keys folds their hash into its local hash.
    """
    if not extras or all(extra is None for extra in extras):
        return block_hashes(tokens, block_size, parent=parent)
    keys, previous = [], parent
    for i in range(len(tokens) // block_size):
        local = local_block_hash(tokens[i * block_size:(i + 1) * block_size])
        if i < len(extras) and extras[i] is not None:
            local = chain_hash(local, dynamo_hash(encode_extra(extras[i])))
        previous = chain_hash(previous, local)
        keys.append(previous)
    return keys


class KeyTranslator:
    """Turns one engine instance's events into native events for the prefix index.

    ``worker`` is the instance name (the index's worker), ``model`` the model it serves,
    ``block_size`` the fallback when an event does not say. Native events carry this
    translator's own sequence numbers (one per event, from 1), so the index's gap
    detection sees an unbroken stream; gaps in the engine's stream are handled (and
    counted) by the subscriber before events get here.
    """

    def __init__(self, worker: str, model: str, block_size: int | None = None) -> None:
        self.worker, self.model, self.block_size = worker, model, block_size
        self.stats = TranslateStats()
        self._ranks: dict[int, _Rank] = {}
        self._holders: dict[Holding, int] = {}
        self._seq = 0

    def translate(self, events: Sequence[EngineEvent], rank: int = 0) -> list[NativeEvent]:
        """Native events for one batch of ``rank``'s events, in order."""
        out: list[NativeEvent] = []
        state = self._ranks.setdefault(rank, _Rank())
        for event in events:
            if isinstance(event, BlocksStored):
                self._store(state, event, out)
            elif isinstance(event, BlocksRemoved):
                self._remove(state, event, out)
            elif isinstance(event, AllCleared):
                self.stats.cleared += 1
                out.extend(self.forget_rank(rank))
        return out

    def forget_rank(self, rank: int) -> list[NativeEvent]:
        """Drop what ``rank`` held (its cache was cleared, or its events were lost)."""
        state = self._ranks.pop(rank, None)
        if state is None:
            return []
        dropped: list[Holding] = [(space, key, tier) for space, key, tiers in state.keys.values()
                                  for tier in tiers]
        if not self._ranks or all(not r.keys for r in self._ranks.values()):
            self._holders.clear()
            return [AllBlocksCleared(worker=self.worker, seq=self._next())] if dropped else []
        return self._release(dropped)

    def forget_all(self) -> list[NativeEvent]:
        """Drop everything (the engine went away or restarted)."""
        out: list[NativeEvent] = []
        for rank in list(self._ranks):
            out.extend(self.forget_rank(rank))
        return out

    def holds(self) -> int:
        """Distinct (namespace, key, tier) entries the instance holds now."""
        return len(self._holders)

    # -- stores ------------------------------------------------------------------------

    def _store(self, state: _Rank, event: BlocksStored, out: list[NativeEvent]) -> None:
        keys = self._keys_of(state, event)
        if keys is None:
            return
        space, tier = self._namespace(event), tier_of(event.medium)
        fresh: list[int] = []
        for engine_hash, key in zip(event.block_hashes, keys, strict=True):
            known = state.keys.get(engine_hash)
            if known is not None and (known[0], known[1]) != (space, key):
                out.extend(self._release([(known[0], known[1], t) for t in known[2]]))
                known = None
            if known is None:
                known = state.keys[engine_hash] = (space, key, set())
            if tier not in known[2]:
                known[2].add(tier)
                if self._hold((space, key, tier)):
                    fresh.append(key)
        self.stats.stored_blocks += len(keys)
        if fresh:
            # Built without validation: the keys are our own u64 hashes (2x cheaper).
            out.append(BlockStored.model_construct(
                worker=self.worker, seq=self._next(), block_hashes=tuple(fresh),
                parent_hash=None, tier=tier, model=space))

    def _keys_of(self, state: _Rank, event: BlocksStored) -> list[int] | None:
        if event.group_idx not in (None, 0):
            self.stats.other_groups += 1
            return None
        size = event.block_size or self.block_size
        if not event.token_ids:
            self.stats.without_tokens += 1
            return None
        if not size or len(event.token_ids) != size * len(event.block_hashes):
            self.stats.malformed += 1
            return None
        parent: int | None = None
        if event.parent is not None:
            known = state.keys.get(event.parent)
            if known is None:
                self.stats.orphans += 1
                return None
            parent = known[1]
        return own_keys(event.token_ids, size, parent, self._extras(event))

    @staticmethod
    def _extras(event: BlocksStored) -> list[Any] | None:
        """Per-block extra keys without the LoRA name (the namespace carries it)."""
        if event.extra_keys is None:
            return None
        out: list[Any] = []
        for extra in event.extra_keys:
            items = list(extra) if isinstance(extra, list | tuple) else \
                ([] if extra is None else [extra])
            if event.lora_name is not None and items and items[0] == event.lora_name:
                items = items[1:]
            out.append(items or None)
        return out

    def _namespace(self, event: BlocksStored) -> str:
        if event.lora_name:
            return event.lora_name
        return self.model if event.lora_id is None else f"{self.model}#lora{event.lora_id}"

    # -- removals ----------------------------------------------------------------------

    def _remove(self, state: _Rank, event: BlocksRemoved, out: list[NativeEvent]) -> None:
        if event.group_idx not in (None, 0):
            return
        tier = tier_of(event.medium)
        dropped: list[Holding] = []
        for engine_hash in event.block_hashes:
            known = state.keys.get(engine_hash)
            if known is None or tier not in known[2]:
                continue
            known[2].discard(tier)
            if not known[2]:
                del state.keys[engine_hash]
            dropped.append((known[0], known[1], tier))
        self.stats.removed_blocks += len(dropped)
        out.extend(self._release(dropped))

    def _release(self, dropped: Sequence[Holding]) -> list[NativeEvent]:
        """Native removals for the holdings whose last holder let go, grouped."""
        gone: dict[tuple[str, Tier], list[int]] = {}
        for holding in dropped:
            if self._unhold(holding):
                gone.setdefault((holding[0], holding[2]), []).append(holding[1])
        return [BlockRemoved.model_construct(worker=self.worker, seq=self._next(),
                                             block_hashes=tuple(keys), tier=tier, model=space)
                for (space, tier), keys in gone.items()]

    def _hold(self, holding: Holding) -> bool:
        count = self._holders.get(holding, 0)
        self._holders[holding] = count + 1
        return count == 0

    def _unhold(self, holding: Holding) -> bool:
        count = self._holders.get(holding, 0)
        if count <= 1:
            self._holders.pop(holding, None)
            return count == 1
        self._holders[holding] = count - 1
        return False

    def _next(self) -> int:
        self._seq += 1
        return self._seq
