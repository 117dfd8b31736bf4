"""An embedding endpoint serves its model: the same vectors as sentence-transformers.

Runs when LLF_TEST_EMBED_BASE_URL names a deployed embedding endpoint and
LLF_TEST_EMBED_MODEL_DIR its staged model directory on this machine (optional:
LLF_TEST_EMBED_MODEL, default all-minilm-l6-v2; LLF_TEST_EMBED_API_KEY).
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import record_figure
from tests.e2e.embeddings import check_embeddings

pytestmark = pytest.mark.e2e


def test_embedding_endpoint_matches_sentence_transformers() -> None:
    base_url, model_dir = os.environ.get("LLF_TEST_EMBED_BASE_URL"), os.environ.get("LLF_TEST_EMBED_MODEL_DIR")
    if not base_url or not model_dir:
        pytest.skip("set LLF_TEST_EMBED_BASE_URL and LLF_TEST_EMBED_MODEL_DIR to check an embedding endpoint")
    figures = check_embeddings(base_url, os.environ.get("LLF_TEST_EMBED_API_KEY") or None,
                               os.environ.get("LLF_TEST_EMBED_MODEL", "all-minilm-l6-v2"), model_dir, dimensions=384)
    record_figure(f"embeddings: {figures.dimensions} dims, max deviation from sentence-transformers "
                  f"{figures.max_deviation:.2e}, similar {figures.similar:.3f} vs unrelated {figures.unrelated:.3f}")
