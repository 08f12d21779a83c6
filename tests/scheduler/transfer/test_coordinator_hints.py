"""The coordinator reuses transport hints per worker pair until a registration changes."""

from __future__ import annotations

import asyncio

from scheduler.state.memory import MemoryStore
from scheduler.transfer.coordinator import TransferCoordinator, TransferRequest
from scheduler.transfer.plan import TransferRecord
from tests.scheduler.transfer.builders import registration
from tests.topology.builders import SOURCE, TIER_PEERS, small_fabric


def coordinator() -> TransferCoordinator:
    """A coordinator over a small fabric (so hints depend on the workers' GPUs)."""
    return TransferCoordinator(MemoryStore(), spec=small_fabric())


async def _submit(c: TransferCoordinator, block: int) -> TransferRecord:
    return await c.submit(TransferRequest(src="p", dst="d", src_blocks=(block,)))


def test_hints_follow_a_re_registration_on_other_gpus() -> None:
    async def body() -> tuple[str, str, str]:
        c = coordinator()
        await c.register(registration("p", gpus=[SOURCE]))
        await c.register(registration("d", gpus=[TIER_PEERS["same_pod"]], base=0x10_0000_0000))
        first = await _submit(c, 0)
        again = await _submit(c, 1)
        await c.register(registration("d", gpus=[TIER_PEERS["cross_zone"]],
                                      base=0x10_0000_0000))
        moved = await _submit(c, 2)
        return first.plan.hints.tier, again.plan.hints.tier, moved.plan.hints.tier
    assert asyncio.run(body()) == ("same_pod", "same_pod", "cross_zone")


def test_cached_hints_equal_fresh_ones() -> None:
    async def body() -> bool:
        warm, cold = coordinator(), coordinator()
        for c in (warm, cold):
            await c.register(registration("p", gpus=[SOURCE]))
            await c.register(registration("d", gpus=[TIER_PEERS["same_leaf"]],
                                          base=0x10_0000_0000))
        await _submit(warm, 0)
        return (await _submit(warm, 1)).plan.hints == (await _submit(cold, 1)).plan.hints
    assert asyncio.run(body())
