"""The request mixes: which endpoint, how long the prompt, how long the answer.

Chat and completions parts are streamed and timed chunk by chunk; an embeddings part
is one non-streamed POST to ``/v1/embeddings`` (its latency is the E2EL, as vLLM's
``bench serve`` names it) and goes to the embedding model of the run, not the chat one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from loadtests.prompts import PromptGenerator


@dataclass(frozen=True)
class Part:
    """One kind of request in a scenario."""

    name: str
    endpoint: str  # chat | completions | embeddings
    input_tokens: int
    output_tokens: int
    range_ratio: float = 0.1  # prompt length varies by +-10 %
    weight: float = 1.0

    @property
    def path(self) -> str:
        return PATHS[self.endpoint]

    @property
    def embedding(self) -> bool:
        return self.endpoint == "embeddings"


PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
# The part name of every embeddings request (Sample.kind): what separates a mixed
# run's embedding samples from its chat samples in the reports and the verdict.
EMBED_KIND = "embed"
DEFAULT_EMBED_TOKENS = 128


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
    # /v1/embeddings, one input of --embed-tokens tokens per request, not streamed.
    "embeddings": (Part(EMBED_KIND, "embeddings", input_tokens=DEFAULT_EMBED_TOKENS, output_tokens=0),),
    # Retrieval-augmented chat through a gateway that routes by model: as many
    # embedding requests (the query) as short chat turns (the answer), drawn 1:1.
    "rag": (
        Part(EMBED_KIND, "embeddings", input_tokens=DEFAULT_EMBED_TOKENS, output_tokens=0, weight=1.0),
        Part("chat", "chat", input_tokens=64, output_tokens=32, weight=1.0),
    ),
}


def has_chat(scenario: str) -> bool:
    """The scenario sends chat or completions requests (streamed, timed per chunk)."""
    return any(not p.embedding for p in SCENARIOS[scenario])


def has_embeddings(scenario: str) -> bool:
    """The scenario sends /v1/embeddings requests (it needs an embedding model)."""
    return any(p.embedding for p in SCENARIOS[scenario])


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
    embed_model: str | None = None,
    embed_tokens: int | None = None,
) -> RequestSpec:
    """The request number ``key`` of a scenario (deterministic in seed and key).

    An embeddings part goes to ``embed_model`` (else ``model``) with an input of about
    ``embed_tokens`` tokens (else the part's length); every other part is streamed.
    """
    part = pick_part(SCENARIOS[scenario], generator.rng(f"{key}/part"))
    body: dict[str, Any]
    if part.embedding:
        tokens = generator.length(key, embed_tokens or part.input_tokens, part.range_ratio)
        body = {
            "model": embed_model or model,
            "input": generator.embedding_input(key, tokens),
            "encoding_format": "float",
        }
        return RequestSpec(part=part, path=part.path, body=body, key=key)
    tokens = generator.length(key, part.input_tokens, part.range_ratio)
    body = {
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
