"""Token ids of a request's prompt, for prefix routing (the engines get the body as is).

Token-id prompts are used as they are. Text prompts are tokenized by the model's own
tokenizer when its files are given (``--tokenizer``: a ``tokenizer.json``, read with
Hugging Face ``tokenizers``); otherwise, and for chat messages (whose chat template
only the engine applies exactly), the engine's ``/tokenize`` endpoint answers (vLLM's
shape: ``{"model", "prompt"}`` or ``{"model", "messages"}`` → ``{"tokens": [...]}``); an
engine that cannot be reached is reported (out of routing) and the next one asked.
When no tokens can be had, the request is routed without prefix affinity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.instance import EngineInstance
from engines.pd.http import EngineHttp, TransportError
from engines.pd.legs import encode
from topology.errors import InputError

log = logging.getLogger(__name__)
#: Rough characters per token, to size a prompt nobody could tokenize.
CHARS_PER_TOKEN = 4
#: Engines asked for tokens before routing without them (each failure costs a round trip).
ASK_AT_MOST = 2


@dataclass(frozen=True)
class PromptTokens:
    """The prompt's token ids (empty: unknown) and its length in tokens (at least 1:
    an empty prompt is the engine's to refuse)."""

    ids: tuple[int, ...]
    count: int
    source: str  # "request", "local", "engine" or "estimate"


class LocalTokenizer:
    """A Hugging Face ``tokenizer.json`` (no model weights needed)."""

    def __init__(self, path: Path) -> None:
        """Load ``path`` (the file, or a directory holding ``tokenizer.json``)."""
        from tokenizers import Tokenizer

        file = path / "tokenizer.json" if path.is_dir() else path
        try:
            self._tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # the library raises bare Exceptions on bad files
            raise InputError(f"{file}: not a tokenizer.json ({exc})") from exc

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens as the tokenizer's post-processor adds)."""
        return list(self._tokenizer.encode(text).ids)


class Tokens:
    """Finds a request's token ids by the cheapest exact way available."""

    def __init__(self, client: EngineHttp, local: LocalTokenizer | None = None,
                 headers: Mapping[str, str] | None = None,
                 unreachable: Callable[[str], None] | None = None) -> None:
        """``client`` asks the engines; ``local`` tokenizes text prompts here;
        ``unreachable`` hears of an engine that did not answer (out of routing)."""
        self.client, self.local, self.headers = client, local, dict(headers or {})
        self.unreachable = unreachable

    async def of(self, body: Mapping[str, Any], engines: Sequence[EngineInstance]
                 ) -> PromptTokens:
        """The prompt's tokens: given, local, from an engine, or only estimated."""
        given = _given_ids(body.get("prompt"))
        if given is not None:
            return PromptTokens(tuple(given), max(len(given), 1), "request")
        text = _prompt_text(body.get("prompt"))
        if text is not None and self.local is not None:
            ids = self.local.encode(text)
            return PromptTokens(tuple(ids), max(len(ids), 1), "local")
        for engine in engines[:ASK_AT_MOST]:
            asked = await self._ask(engine, body)
            if asked is not None:
                return PromptTokens(tuple(asked), max(len(asked), 1), "engine")
        size = len(text or str(body.get("messages", "")))
        return PromptTokens((), max(size // CHARS_PER_TOKEN, 1), "estimate")

    async def _ask(self, engine: EngineInstance, body: Mapping[str, Any]) -> list[int] | None:
        query: dict[str, Any] = {"model": body.get("model")}
        if "messages" in body:
            query["messages"] = body["messages"]
            query["add_generation_prompt"] = body.get("add_generation_prompt", True)
        else:
            query["prompt"] = _prompt_text(body.get("prompt")) or ""
        try:
            answer = await self.client.post(f"{engine.base_url}/tokenize", encode(query),
                                            self.headers)
            await answer.read()
            tokens = answer.json().get("tokens") if answer.status_code == 200 else None
        except TransportError as exc:
            log.warning("tokenize on %s failed: %s", engine.name, type(exc).__name__)
            if self.unreachable is not None:
                self.unreachable(engine.name)
            return None
        except (ValueError, AttributeError) as exc:  # not JSON, or not an object
            log.warning("tokenize on %s failed: %s", engine.name, type(exc).__name__)
            return None
        if isinstance(tokens, list) and all_ints(tokens):
            return tokens
        return None


def _given_ids(prompt: Any) -> list[int] | None:
    """Token ids given in the request (the first prompt of a batch)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all_ints(prompt):
        return prompt
    return None


def all_ints(values: list[Any]) -> bool:
    """Whether every item is an ``int`` (not a ``bool``): one pass in C, a few times
    faster than ``isinstance`` over a long prompt."""
    return set(map(type, values)) == {int}


def _prompt_text(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return str(prompt[0])
    return None
