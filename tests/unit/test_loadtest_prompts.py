"""The prompt generator (lengths, seeding), scenarios and open-loop arrivals."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from loadtests.arrivals import ArrivalSchedule
from loadtests.prompts import (
    CHAT_OVERHEAD,
    COMPLETION_OVERHEAD,
    EMBEDDING_OVERHEAD,
    INSTRUCTION,
    PromptGenerator,
    load_words,
)
from loadtests.scenarios import (
    DEFAULT_EMBED_TOKENS,
    EMBED_KIND,
    SCENARIOS,
    build_request,
    has_chat,
    has_embeddings,
    pick_part,
)


def test_vocabulary_ships_with_the_repo() -> None:
    words = load_words()
    assert len(words) >= 1000
    assert len(set(words)) == len(words)
    assert all(w.isalpha() and w.islower() for w in words)


def test_same_seed_and_key_give_the_same_prompt() -> None:
    a, b = PromptGenerator(7), PromptGenerator(7)
    assert a.text("k1", 50) == b.text("k1", 50)
    assert a.text("k1", 50) != a.text("k2", 50)  # every request its own prompt
    assert a.text("k1", 50) != PromptGenerator(8).text("k1", 50)  # a new seed, new prompts


def test_distinct_keys_share_no_prefix_beyond_the_instruction() -> None:
    gen = PromptGenerator(1)
    first = [gen.completion_prompt(str(i), 200).removeprefix(INSTRUCTION).split()[:4] for i in range(50)]
    assert len({tuple(words) for words in first}) == 50


def test_word_counts_follow_the_token_target() -> None:
    gen = PromptGenerator(3)
    assert len(gen.text("k", 100).split()) == 100
    user = gen.chat_messages("k", 1000)[1]["content"]
    assert len(user.removeprefix(INSTRUCTION).split()) == 1000 - CHAT_OVERHEAD
    prompt = gen.completion_prompt("k", 128)
    assert len(prompt.removeprefix(INSTRUCTION).split()) == 128 - COMPLETION_OVERHEAD
    assert len(gen.text("k", 0).split()) == 1  # never empty


def test_lengths_stay_in_the_range_ratio() -> None:
    gen = PromptGenerator(5)
    lengths = [gen.length(str(i), 1000, 0.1) for i in range(300)]
    assert min(lengths) >= 900 and max(lengths) <= 1100
    assert len(set(lengths)) > 50
    assert gen.length("x", 1, 0.5) == 1


def test_generator_needs_words() -> None:
    with pytest.raises(ValueError, match="empty"):
        PromptGenerator(1, words=[])


@pytest.mark.parametrize("name", sorted(n for n in SCENARIOS if n != "embeddings"))
def test_requests_stream_with_usage(name: str) -> None:
    gen = PromptGenerator(1)
    # rag draws an embedding or a chat request per key: take its first chat one
    spec = next(s for s in (build_request(name, "m", gen, key=str(i)) for i in range(50)) if not s.part.embedding)
    body = spec.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "m" and body["ignore_eos"] is True
    assert body["max_tokens"] == spec.part.output_tokens
    if spec.part.endpoint == "chat":
        assert spec.path == "/v1/chat/completions"
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
    else:
        assert spec.path == "/v1/completions" and isinstance(body["prompt"], str)


def test_embedding_requests_go_to_the_embedding_model() -> None:
    gen = PromptGenerator(1)
    spec = build_request("embeddings", "m", gen, key="0", embed_model="e", embed_tokens=200)
    assert spec.path == "/v1/embeddings" and spec.part.name == EMBED_KIND
    assert spec.body.keys() == {"model", "input", "encoding_format"}  # not streamed, no max_tokens
    assert spec.body["model"] == "e"
    words = [
        len(build_request("embeddings", "m", gen, key=str(i), embed_tokens=200).body["input"].split())
        for i in range(200)
    ]
    # 200 tokens +-10 %, less [CLS] and [SEP]
    assert min(words) == 180 - EMBEDDING_OVERHEAD and max(words) == 220 - EMBEDDING_OVERHEAD
    default = build_request("embeddings", "m", gen, key="0")
    assert default.body["model"] == "m"  # without an embedding model: the run's model
    assert len(default.body["input"].split()) <= DEFAULT_EMBED_TOKENS * 1.1
    assert has_embeddings("embeddings") and not has_chat("embeddings")
    assert has_embeddings("rag") and has_chat("rag")
    assert has_chat("mixed") and not has_embeddings("mixed")


def test_rag_draws_embeddings_and_chat_one_to_one() -> None:
    gen = PromptGenerator(5)
    specs = [build_request("rag", "chat-m", gen, key=str(i), embed_model="embed-m") for i in range(1000)]
    models = Counter((s.path, s.body["model"]) for s in specs)
    assert set(models) == {("/v1/embeddings", "embed-m"), ("/v1/chat/completions", "chat-m")}
    assert 0.42 < models[("/v1/embeddings", "embed-m")] / 1000 < 0.58


def test_scenario_shapes() -> None:
    assert SCENARIOS["long"][0].input_tokens == 1000 and SCENARIOS["long"][0].output_tokens == 128
    assert SCENARIOS["completions"][0].endpoint == "completions"
    spec = build_request("short", "m", PromptGenerator(1), key="0", ignore_eos=False)
    assert "ignore_eos" not in spec.body


def test_mixed_scenario_draws_parts_by_weight() -> None:
    gen = PromptGenerator(11)
    kinds = Counter(build_request("mixed", "m", gen, key=str(i)).part.name for i in range(1000))
    assert 0.72 < kinds["short"] / 1000 < 0.88  # weights 4:1
    assert pick_part(SCENARIOS["short"], random.Random(0)).name == "short"


def test_arrivals_poisson_mean_and_seed() -> None:
    clock = iter(np.arange(0, 10, 0.5)).__next__
    s = ArrivalSchedule(rate=4.0, burstiness=1.0, seed=3, clock=clock)
    times = [s.claim() for _ in range(4001)]
    assert times[0] == 0.0  # the schedule starts at the first claim
    gaps = np.diff(np.asarray(times, dtype=float))
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)
    assert (gaps.std() / gaps.mean()) ** 2 == pytest.approx(1.0, rel=0.1)  # exponential: CV^2 = 1
    again = ArrivalSchedule(rate=4.0, seed=3, clock=lambda: 0.0)
    assert [again.claim() for _ in range(5)] == times[:5]


def test_arrivals_burstiness_sets_the_variance() -> None:
    bursty = ArrivalSchedule(rate=2.0, burstiness=0.25, seed=1)
    gaps = np.array([bursty.gap() for _ in range(20000)])
    assert gaps.mean() == pytest.approx(0.5, rel=0.05)
    assert (gaps.std() / gaps.mean()) ** 2 == pytest.approx(4.0, rel=0.1)  # CV^2 = 1 / burstiness


def test_arrivals_are_bounded() -> None:
    s = ArrivalSchedule(rate=1.0, limit=2, clock=lambda: 0.0)
    assert s.claim() is not None and s.claim() is not None
    assert s.claim() is None
    with pytest.raises(ValueError):
        ArrivalSchedule(rate=0.0)
