"""The embedding endpoint check (tests/e2e/embeddings.py) against a fake endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e import embeddings

# unit vectors in 4 dimensions: the two similar sentences close, the unrelated ones apart
GOOD = [[1.0, 0.1, 0.0, 0.0], [0.9, 0.2, 0.1, 0.0], [0.0, 0.0, 1.0, 0.2], [0.1, 0.0, 0.0, 1.0]]


def turned(vector: list[float], angle: float) -> list[float]:
    """The vector turned by `angle` radians in the plane of its first two numbers."""
    x, y = vector[0], vector[1]
    return [x * np.cos(angle) - y * np.sin(angle), x * np.sin(angle) + y * np.cos(angle), *vector[2:]]


def test_matching_vectors_give_their_figures() -> None:
    scaled = [[3 * n for n in row] for row in GOOD]  # the length does not matter, the direction does
    figures = embeddings.compare(scaled, GOOD, dimensions=4)
    assert figures.dimensions == 4
    assert figures.max_deviation == pytest.approx(0.0, abs=1e-12)
    assert figures.max_abs_difference == pytest.approx(0.0, abs=1e-12)
    assert figures.similar == pytest.approx(0.92 / np.sqrt(1.01 * 0.86))  # cat and kitten
    assert figures.unrelated == pytest.approx(0.1 / np.sqrt(0.86 * 1.04))  # kitten and tax report


def test_a_vector_off_by_more_than_the_tolerance_is_named() -> None:
    served = [turned(GOOD[0], 0.05), *GOOD[1:]]  # cosine cos(0.05) = 0.99875: 1.25e-3 off
    with pytest.raises(embeddings.EmbeddingMismatch,
                       match=r"^the endpoint's vector for 'a cat sat on the mat' has cosine 0\.99875"):
        embeddings.compare(served, GOOD)
    assert embeddings.compare(served, GOOD, tolerance=2e-3).max_deviation == pytest.approx(1.25e-3, rel=1e-3)
    served = [turned(GOOD[0], 0.04), *GOOD[1:]]  # 0.8e-3 off: within the default tolerance
    assert embeddings.compare(served, GOOD).max_deviation == pytest.approx(0.8e-3, rel=1e-3)


def test_similar_sentences_must_score_above_unrelated_ones() -> None:
    flat = [GOOD[0], GOOD[2], GOOD[2], GOOD[3]]
    with pytest.raises(embeddings.EmbeddingMismatch, match=r"^similar sentences score 0\.0\d+, not above"):
        embeddings.compare(flat, flat)


def test_shapes_and_dimensions_are_checked() -> None:
    with pytest.raises(embeddings.EmbeddingMismatch, match=r"shape \(3, 4\), sentence-transformers \(4, 4\)"):
        embeddings.compare(GOOD[:3], GOOD)
    with pytest.raises(embeddings.EmbeddingMismatch, match="^the endpoint returned 4 numbers per input, expected 384$"):
        embeddings.compare(GOOD, GOOD, dimensions=384)


class FakeEndpoint:
    """/v1/embeddings answering with the vectors it holds, in reverse order of index."""

    def __init__(self, vectors: list[list[float]], key: str) -> None:
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                if self.path != "/v1/embeddings" or self.headers.get("Authorization") != f"Bearer {key}":
                    self.send_response(401)
                    self.end_headers()
                    return
                data = [{"object": "embedding", "index": i, "embedding": vectors[i]}
                        for i in range(len(body["input"]))]
                payload = json.dumps({"object": "list", "model": body["model"], "data": data[::-1],
                                      "usage": {"prompt_tokens": 8, "total_tokens": 8}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    fake = FakeEndpoint(GOOD, "k")
    thread = threading.Thread(target=fake.httpd.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def test_check_embeddings_asks_the_endpoint_and_the_reference(endpoint: FakeEndpoint, tmp_path: Path) -> None:
    asked: list[tuple[str | Path, list[str]]] = []

    def reference(model_dir: str | Path, texts: Any) -> list[list[float]]:
        asked.append((model_dir, list(texts)))
        return GOOD

    figures = embeddings.check_embeddings(endpoint.base_url, "k", "emb", tmp_path, dimensions=4, reference=reference)
    assert figures.max_deviation == pytest.approx(0.0, abs=1e-12)
    assert endpoint.requests == [{"model": "emb", "input": list(embeddings.SENTENCES), "encoding_format": "float"}]
    assert asked == [(tmp_path, list(embeddings.SENTENCES))]


def test_check_embeddings_fails_when_the_endpoint_serves_another_model(endpoint: FakeEndpoint) -> None:
    other = [GOOD[1], GOOD[0], GOOD[3], GOOD[2]]
    with pytest.raises(embeddings.EmbeddingMismatch,
                       match=r"^the endpoint's vector for 'quarterly tax report' has cosine 0\.195"):
        embeddings.check_embeddings(endpoint.base_url, "k", "emb", "/m", reference=lambda _d, _t: other)


def test_a_reference_that_cannot_be_computed_is_one_clear_error(tmp_path: Path) -> None:
    """sentence-transformers runs in a process of its own; its failure names the directory."""
    with pytest.raises(embeddings.EmbeddingMismatch, match=f"sentence-transformers failed on {tmp_path}"):
        embeddings.reference_embeddings(tmp_path, ["x"])
