"""Background tasks stop for good, even one that swallows a cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from scheduler.background import stop_tasks


async def _swallows_cancellations(times: int, ran: list[int]) -> None:
    """A loop that, like Python 3.11's wait_for in a race, loses ``times`` cancels."""
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            ran.append(1)
            if len(ran) > times:
                raise


def test_a_task_that_swallowed_a_cancellation_is_cancelled_again() -> None:
    async def main() -> list[int]:
        ran: list[int] = []
        task = asyncio.create_task(_swallows_cancellations(2, ran))
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_tasks([task], timeout_s=5.0), 3.0)
        assert task.cancelled()
        return ran

    assert len(asyncio.run(main())) == 3


def test_a_task_that_never_stops_is_named_after_the_deadline(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        task = asyncio.create_task(_swallows_cancellations(10**9, []), name="stubborn")
        await asyncio.sleep(0)
        with caplog.at_level(logging.WARNING):
            await stop_tasks([task], timeout_s=0.3)
        assert not task.done()
        task.get_coro().close()  # type: ignore[union-attr]

    asyncio.run(main())
    assert "stubborn" in caplog.text
