"""Check a deployed embedding endpoint against sentence-transformers' own output.

    from tests.e2e.embeddings import check_embeddings
    figures = check_embeddings("http://127.0.0.1:8100/v1", None, "all-minilm-l6-v2",
                               "/var/lib/llf/models/all-minilm-l6-v2/model")

asserts that the endpoint's vectors point where sentence-transformers' vectors for the
same model directory point (cosine >= 1 - TOLERANCE for every sentence), and that two
similar sentences score higher than unrelated ones; returns the figures measured.
sentence-transformers runs on the CPU here, in this process, from the model directory
only (no Hub).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai

# the first two say the same thing in other words; the rest are about other things
SIMILAR = ("a cat sat on the mat", "a kitten sat on the rug")
UNRELATED = ("quarterly tax report", "the train to Berlin leaves at noon")
SENTENCES = (*SIMILAR, *UNRELATED)
TOLERANCE = 1e-3

Embedder = Callable[[str | Path, Sequence[str]], list[list[float]]]


@dataclass(frozen=True)
class EmbeddingFigures:
    dimensions: int
    max_deviation: float  # max over the sentences of 1 - cosine(endpoint, reference)
    max_abs_difference: float  # largest difference of one number, both vectors normalised
    similar: float  # cosine of the two similar sentences (endpoint's vectors)
    unrelated: float  # highest cosine of a similar sentence and an unrelated one


class EmbeddingMismatch(AssertionError):
    """The endpoint's embeddings are not the model's."""


def endpoint_embeddings(base_url: str, api_key: str | None, model: str, texts: Sequence[str],
                        timeout: float = 60) -> list[list[float]]:
    """One vector per text from the endpoint's /v1/embeddings, in the order of the texts."""
    client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=2)
    response = client.embeddings.create(model=model, input=list(texts), encoding_format="float")
    ordered = sorted(response.data, key=lambda item: item.index)
    if [item.index for item in ordered] != list(range(len(texts))):
        raise EmbeddingMismatch(f"{base_url}/embeddings returned {len(ordered)} vectors for {len(texts)} inputs")
    return [list(item.embedding) for item in ordered]


_REFERENCE = """
import json, sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu", local_files_only=True)
vectors = model.encode(json.load(sys.stdin), convert_to_numpy=True)
print(json.dumps([[float(x) for x in row] for row in vectors]))
"""


def reference_embeddings(model_dir: str | Path, texts: Sequence[str]) -> list[list[float]]:
    """sentence-transformers' vectors for the texts, from the model directory alone.

    In a process of its own: torch's compiler cannot be imported into a process where
    Ansible has patched sys.intern (pytest's, once a test has run ansible-playbook's code).
    """
    proc = subprocess.run([sys.executable, "-c", _REFERENCE, str(model_dir)], input=json.dumps(list(texts)),
                          capture_output=True, text=True, timeout=600, check=False,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    if proc.returncode != 0:
        raise EmbeddingMismatch(f"sentence-transformers failed on {model_dir}: {proc.stderr.strip()[-2000:]}")
    vectors: list[list[float]] = json.loads(proc.stdout)
    return vectors


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def compare(served: Sequence[Sequence[float]], reference: Sequence[Sequence[float]],
            tolerance: float = TOLERANCE, dimensions: int | None = None) -> EmbeddingFigures:
    """The figures of the endpoint's vectors for SENTENCES against the reference's; raise if off."""
    got, want = np.asarray(served, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if got.ndim != 2 or got.shape != want.shape:
        raise EmbeddingMismatch(f"the endpoint returned vectors of shape {got.shape}, "
                                f"sentence-transformers {want.shape}")
    if dimensions is not None and got.shape[1] != dimensions:
        raise EmbeddingMismatch(f"the endpoint returned {got.shape[1]} numbers per input, expected {dimensions}")
    got, want = unit_rows(got), unit_rows(want)
    cosines = np.sum(got * want, axis=1)
    gram = got @ got.T
    figures = EmbeddingFigures(
        dimensions=int(got.shape[1]),
        max_deviation=float(np.max(1.0 - cosines)),
        max_abs_difference=float(np.max(np.abs(got - want))),
        similar=float(gram[0, 1]),
        unrelated=float(np.max(gram[: len(SIMILAR), len(SIMILAR):])),
    )
    if figures.max_deviation > tolerance:
        worst = int(np.argmin(cosines))
        raise EmbeddingMismatch(f"the endpoint's vector for {SENTENCES[worst]!r} has cosine {cosines[worst]:.6f} "
                                f"to sentence-transformers' (at least {1 - tolerance} expected)")
    if figures.similar <= figures.unrelated:
        raise EmbeddingMismatch(f"similar sentences score {figures.similar:.3f}, "
                                f"not above unrelated ones ({figures.unrelated:.3f})")
    return figures


def check_embeddings(base_url: str, api_key: str | None, model: str, model_dir: str | Path,
                     dimensions: int | None = None, tolerance: float = TOLERANCE,
                     reference: Embedder = reference_embeddings) -> EmbeddingFigures:
    """Assert the endpoint serves the model in MODEL_DIR; return the figures measured."""
    served = endpoint_embeddings(base_url, api_key, model, SENTENCES)
    return compare(served, reference(model_dir, SENTENCES), tolerance, dimensions)
