"""What tests/e2e/test_15_models.py and test_85_model_removal.py look at: the local
deploy's supervised vLLM programs, one per model, and the embedding model's server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests

from tests.e2e.conftest import EMBED_MODEL, SUPERVISORCTL

EMBED_SERVICE = f"llf-vllm-{EMBED_MODEL}"
EMBED_CONFIG = Path(f"/etc/llf/vllm-{EMBED_MODEL}.yaml")
EMBED_FILES = [EMBED_CONFIG, Path(f"/etc/llf/vllm-{EMBED_MODEL}.env"), Path(f"/opt/llf/bin/{EMBED_SERVICE}")]


def supervised() -> str:
    return subprocess.run([*SUPERVISORCTL, "status"], capture_output=True, text=True, check=False).stdout


def program_pid(name: str) -> int | None:
    status = subprocess.run([*SUPERVISORCTL, "status", name], capture_output=True, text=True, check=False).stdout
    return int(status.split("pid ")[1].split(",")[0]) if "RUNNING" in status else None


def env_value(path: Path, name: str) -> str:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(name + "=")]
    return lines[0].split("=", 1)[1].strip("'") if lines else ""


def embed(url: str, key: str | None, texts: list[str]) -> requests.Response:
    return requests.post(f"{url}/embeddings", json={"model": EMBED_MODEL, "input": texts},
                         headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)


def embed_url() -> str:
    """The embedding model's server, from the port in its vLLM configuration."""
    config = EMBED_CONFIG.read_text(encoding="utf-8")
    port = [line.split(":")[1].strip() for line in config.splitlines() if line.startswith("port:")][0]
    return f"http://127.0.0.1:{port}/v1"
