"""A seeded synthetic prompt generator with controlled lengths.

Prompts are random sequences of common English words that the usual BPE
tokenizers encode as one token each (``data/words.txt``), so a prompt of N words
is about N tokens; nothing is downloaded or tokenized at run time, and the real
count comes back in ``usage.prompt_tokens``. Every request gets its own prompt,
drawn from ``(seed, key)``: the same seed and key give the same prompt, and
distinct keys give prompts that share no prefix beyond the fixed instruction, so
vLLM's prefix cache cannot make a stage faster than the one before it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

WORDS_FILE = Path(__file__).with_name("data") / "words.txt"
SYSTEM_PROMPT = "You are a helpful assistant."
INSTRUCTION = "Continue the following list of words with more words:"
# Tokens the chat template, system prompt and instruction add around the words,
# measured on SmolLM2-135M-Instruct (usage.prompt_tokens minus the word count).
CHAT_OVERHEAD = 30
COMPLETION_OVERHEAD = 10
# [CLS] and [SEP] of a BERT-style embedding model (all-MiniLM-L6-v2) around the words.
EMBEDDING_OVERHEAD = 2


@cache
def load_words(path: Path = WORDS_FILE) -> tuple[str, ...]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(w.strip() for w in lines if w.strip() and not w.startswith("#"))


class PromptGenerator:
    """Draws prompts of a target token length from a seed."""

    def __init__(self, seed: int | str, words: Sequence[str] | None = None) -> None:
        self.seed = seed
        self.words = tuple(words) if words is not None else load_words()
        if not self.words:
            raise ValueError("the prompt vocabulary is empty")

    def rng(self, key: str) -> random.Random:
        return random.Random(f"{self.seed}/{key}")

    def length(self, key: str, mean: int, range_ratio: float) -> int:
        """A length drawn uniformly in ``[mean*(1-r), mean*(1+r)]`` (vLLM's random dataset)."""
        low = max(1, int(mean * (1 - range_ratio)))
        high = max(low, int(mean * (1 + range_ratio)))
        return self.rng(f"{key}/len").randint(low, high)

    def text(self, key: str, n_words: int) -> str:
        rng = self.rng(key)
        return " ".join(rng.choice(self.words) for _ in range(max(1, n_words)))

    def chat_messages(self, key: str, tokens: int) -> list[dict[str, Any]]:
        """System prompt plus a user message of about ``tokens`` prompt tokens in all."""
        words = self.text(key, tokens - CHAT_OVERHEAD)
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{INSTRUCTION} {words}"},
        ]

    def completion_prompt(self, key: str, tokens: int) -> str:
        """A raw prompt of about ``tokens`` tokens for /v1/completions."""
        return f"{INSTRUCTION} {self.text(key, tokens - COMPLETION_OVERHEAD)}"

    def embedding_input(self, key: str, tokens: int) -> str:
        """One /v1/embeddings input of about ``tokens`` tokens (no instruction around it)."""
        return self.text(key, tokens - EMBEDDING_OVERHEAD)
