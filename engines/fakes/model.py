"""The fake engine's "model": tokenisation, next-token rule and KV blocks.

Outputs depend on every context token, so a decode engine that read the wrong KV (a
freed block, an altered block id, another request's blocks) answers different tokens
than one that computed the prompt itself — the property that makes comparing a
disaggregated answer with a direct one meaningful.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

VOCAB = 32_000
#: Token id of the first byte value (0–9 are reserved).
BYTE_BASE = 10
#: Token every slot of a freed (and possibly reused) KV block holds.
POISON = 7


def tokenize_text(text: str) -> list[int]:
    """One token per UTF-8 byte."""
    return [BYTE_BASE + b for b in text.encode()]


def chat_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The fake chat template: ``<|role|>content`` lines, then the assistant's turn."""
    lines = [f"<|{m.get('role', 'user')}|>{_content(m.get('content'))}" for m in messages]
    return "\n".join([*lines, "<|assistant|>"])


def _content(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def prompt_tokens(body: Mapping[str, Any]) -> list[int]:
    """The prompt of a completion (text or token ids) or chat body, as token ids."""
    if "messages" in body:
        return tokenize_text(chat_prompt(body["messages"]))
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], list):
            prompt = prompt[0]
        if all(isinstance(t, int) for t in prompt):
            return list(prompt)
        prompt = "".join(str(p) for p in prompt)
    return tokenize_text(str(prompt))


def next_token(context: Sequence[int]) -> int:
    """The token after ``context`` (a hash of all of it)."""
    packed = struct.pack(f"<{len(context)}I", *context)
    return zlib.crc32(packed) % (VOCAB - BYTE_BASE) + BYTE_BASE


def generate(context: Sequence[int], count: int) -> list[int]:
    """``count`` tokens after ``context``."""
    tokens = list(context)
    out: list[int] = []
    for _ in range(count):
        tok = next_token(tokens)
        tokens.append(tok)
        out.append(tok)
    return out


def detokenize(token: int) -> str:
    """A token's text."""
    return f" t{token}"


class BlockPool:
    """KV blocks handed out as an engine's block allocator does: an id is taken from the
    free queue and not handed out again until it is freed; freed ids go to the back of
    the queue (the oldest freed is reused first) and their content is gone."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._taken: set[int] = set()
        self.slots: dict[int, list[int]] = {}

    @property
    def free_blocks(self) -> int:
        """Blocks no request holds."""
        return len(self._free)

    def blocks_for(self, tokens: int) -> int:
        """Blocks a prompt of ``tokens`` tokens takes (a partial last block is one)."""
        return -(-tokens // self.block_size)

    def store(self, tokens: Sequence[int]) -> list[int] | None:
        """Write ``tokens`` into free blocks; their ids, or None when too few are free
        (the request waits, as a real engine queues it)."""
        if self.blocks_for(len(tokens)) > len(self._free):
            return None
        ids = []
        for start in range(0, len(tokens), self.block_size):
            block = self._free.popleft()
            self._taken.add(block)
            self.slots[block] = list(tokens[start:start + self.block_size])
            ids.append(block)
        return ids

    def read(self, ids: Sequence[int]) -> list[int]:
        """The tokens the blocks hold now."""
        out: list[int] = []
        for block in ids:
            out.extend(self.slots.get(block, [POISON] * self.block_size))
        return out

    def free(self, ids: Sequence[int]) -> None:
        """Give held blocks back: their content is gone (another request may reuse
        them); a block not held is left alone."""
        for block in ids:
            if block in self._taken:
                self._taken.remove(block)
                self.slots[block] = [POISON] * len(self.slots[block])
                self._free.append(block)
