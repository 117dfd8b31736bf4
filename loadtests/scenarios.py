"""The request mixes: which endpoint, how long the prompt, how long the answer."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from loadtests.prompts import PromptGenerator


@dataclass(frozen=True)
class Part:
    """One kind of request in a scenario."""

    name: str
    endpoint: str  # chat | completions
    input_tokens: int
    output_tokens: int
    range_ratio: float = 0.1  # prompt length varies by +-10 %
    weight: float = 1.0

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"


SCENARIOS: dict[str, tuple[Part, ...]] = {
    # A chat turn: short question, short answer.
    "short": (Part("short", "chat", input_tokens=64, output_tokens=32),),
    # Retrieval-style: about 1,000 prompt tokens, 128 out.
    "long": (Part("long", "chat", input_tokens=1000, output_tokens=128),),
    # Mostly short turns with some long prompts in between (4:1).
    "mixed": (
        Part("short", "chat", input_tokens=64, output_tokens=32, weight=4.0),
        Part("long", "chat", input_tokens=1000, output_tokens=128, weight=1.0),
    ),
    # The legacy completions endpoint with a raw prompt.
    "completions": (Part("completions", "completions", input_tokens=128, output_tokens=64),),
}


@dataclass(frozen=True)
class RequestSpec:
    """Everything needed to send one request."""

    part: Part
    path: str
    body: dict[str, Any]
    key: str


def pick_part(parts: tuple[Part, ...], rng: random.Random) -> Part:
    if len(parts) == 1:
        return parts[0]
    return rng.choices(parts, weights=[p.weight for p in parts])[0]


def build_request(
    scenario: str,
    model: str,
    generator: PromptGenerator,
    key: str,
    ignore_eos: bool = True,
) -> RequestSpec:
    """The streamed request number ``key`` of a scenario (deterministic in seed and key)."""
    part = pick_part(SCENARIOS[scenario], generator.rng(f"{key}/part"))
    tokens = generator.length(key, part.input_tokens, part.range_ratio)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": part.output_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: exactly max_tokens out
    if part.endpoint == "chat":
        body["messages"] = generator.chat_messages(key, tokens)
    else:
        body["prompt"] = generator.completion_prompt(key, tokens)
    return RequestSpec(part=part, path=part.path, body=body, key=key)
