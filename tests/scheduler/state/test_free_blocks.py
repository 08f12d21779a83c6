"""The memory store's free-block bitmap behaves like the set of free ids it replaced."""

from __future__ import annotations

import gc
import random

from scheduler.state.memory import FreeBlocks


def test_bitmap_matches_a_set_through_random_steps() -> None:
    rng, total = random.Random(7), 300
    bitmap, model = FreeBlocks(total), set(range(total))
    for _ in range(2000):
        step = rng.random()
        if step < 0.4 and model:
            count = rng.randint(1, min(8, len(model)))
            assert bitmap.take_lowest(count) == sorted(model)[:count]
            model -= set(sorted(model)[:count])
        elif step < 0.7:
            blocks = [rng.randrange(-5, total + 5) for _ in range(rng.randint(0, 6))]
            bitmap.give_back(blocks)
            model |= {b for b in blocks if 0 <= b < total}
        else:
            blocks = [rng.randrange(-5, total + 5) for _ in range(rng.randint(0, 6))]
            bitmap.take(blocks)
            model -= set(blocks)
        assert len(bitmap) == len(model)


def test_the_garbage_collector_has_nothing_to_walk_in_it() -> None:
    bitmap = FreeBlocks(4096)
    held = [obj for obj in gc.get_referents(bitmap) if obj is not FreeBlocks]
    assert len(held) <= 3 and not any(gc.is_tracked(obj) for obj in held)
