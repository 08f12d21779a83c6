"""An agentic request stream: long shared system prompts, multi-turn sessions, bursts."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

BLOCK_TOKENS = 512  # the service hashes token ids in 512-token blocks


@dataclass
class DemoRequest:
    """One turn of one session: its full prompt (token ids) and identifiers."""

    request_id: str
    session: str
    tokens: list[int]


@dataclass
class AgenticWorkload:
    """Sessions of a few agents; each agent has a long system prompt all its sessions share."""

    agents: int = 3
    sessions: int = 8
    turns: int = 4
    system_blocks: int = 4
    turn_blocks: int = 1
    seed: int = 7
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _tokens(self, blocks: int) -> list[int]:
        return [self._rng.randrange(1, 128_000) for _ in range(blocks * BLOCK_TOKENS)]

    def requests(self) -> Iterator[DemoRequest]:
        """Turns of all sessions interleaved (bursty: a session's turns come in runs)."""
        prompts = [self._tokens(self.system_blocks) for _ in range(self.agents)]
        history = {s: list(prompts[s % self.agents]) for s in range(self.sessions)}
        order = [s for s in range(self.sessions) for _ in range(self.turns)]
        self._rng.shuffle(order)
        turn_of = dict.fromkeys(range(self.sessions), 0)
        for s in order:
            history[s] += self._tokens(self.turn_blocks)
            turn_of[s] += 1
            yield DemoRequest(f"s{s}-t{turn_of[s]}", f"session-{s}", list(history[s]))

    @property
    def total(self) -> int:
        """How many requests the stream has."""
        return self.sessions * self.turns
