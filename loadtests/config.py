"""The run configuration shared by the CLI, the Locust master and its workers.

The CLI resolves every default, writes ``run-config.json`` into the results folder
and hands its path to Locust in ``LLF_LOADTEST_CONFIG``. The API key never goes into
that file nor onto a command line: it travels in ``LLF_LOADTEST_API_KEY``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import requests

from llf_client.config import Endpoint, default_endpoints_path, load_endpoints_file
from llf_client.errors import ConfigError
from loadtests.errors import ServerError, UsageError

CONFIG_ENV = "LLF_LOADTEST_CONFIG"
API_KEY_ENV = "LLF_LOADTEST_API_KEY"
DEFAULT_HOST = "http://127.0.0.1:8000"
SHAPES = ("closed", "open", "step")

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?$")


@dataclass
class RunConfig:
    host: str  # the server root, without /v1
    model: str  # the chat model (scenario embeddings: the embedding model)
    out: str
    slo_path: str
    scenario: str = "short"
    shape: str = "closed"
    users: int = 4  # closed: concurrency; open: most requests in flight; step: the top step
    rate: float | None = None  # open loop: requests per second
    burstiness: float = 1.0
    duration: float = 120.0  # seconds measured (step: split evenly over the steps)
    warmup: float = 10.0
    step_users: list[int] = field(default_factory=list)
    workers: int = 0
    seed: int = 0
    request_timeout: float = 120.0
    max_requests: int = 100_000  # per process, a hard bound on the request loop
    ignore_eos: bool = True
    metrics_urls: list[str] = field(default_factory=list)  # server roots to scrape; empty: host
    embed_model: str = ""  # the embedding model of the scenarios embeddings and rag
    embed_tokens: int = 128  # tokens per /v1/embeddings input
    ca_cert: str | None = None  # a PEM file trusted for https, every request (the gateway's CA)
    all_steps: bool = False  # step shape: run every step, even after one that did not pass (make bench)

    def scrape_urls(self) -> list[str]:
        """Where the server-side figures come from: --metrics-url, else the target."""
        return list(self.metrics_urls) or [self.host]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def parse_duration(text: str) -> float:
    """``2m``, ``90s``, ``1m30s``, ``1h``, or plain seconds (``45``)."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        m = _DURATION.match(value)
        if not value or not m or not any(m.groups()):
            raise UsageError(f"invalid duration {text!r} (use e.g. 90s, 2m, 1m30s)") from None
        h, mins, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mins * 60 + s
    if seconds < 0:
        raise UsageError(f"invalid duration {text!r}: negative")
    return seconds


def root_url(url: str) -> str:
    """The server root from either form: ``http://h:8000`` or ``http://h:8000/v1``."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise UsageError(f"invalid host {url!r}: use http://HOST:PORT or http://HOST:PORT/v1")
    return url.removesuffix("/v1")


def file_endpoints(env: Mapping[str, str], kind: str = "chat") -> list[Endpoint]:
    """The entries of ``kind`` (chat, embedding) of the endpoints file the deploy writes
    (none without the file).

    Read by llf_client's reader, the one reader of that file.
    """
    path = default_endpoints_path(env)
    if not path.is_file():
        return []
    try:
        return [e for e in load_endpoints_file(path) if e.kind == kind]
    except ConfigError as e:
        raise UsageError(e.one_line()) from None


def chat_endpoints(env: Mapping[str, str]) -> list[Endpoint]:
    """The chat entries of the endpoints file (see :func:`file_endpoints`)."""
    return file_endpoints(env, "chat")


def verify(ca_cert: str | None) -> str | bool:
    """requests' ``verify``: the CA file to trust for https, else the default bundle."""
    return ca_cert or True


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def served_models(root: str, api_key: str | None, timeout: float = 10.0, ca_cert: str | None = None) -> list[str]:
    """The model ids the server lists at /v1/models, in its order."""
    try:
        response = requests.get(f"{root}/v1/models", headers=_headers(api_key), timeout=timeout, verify=verify(ca_cert))
    except requests.RequestException as e:
        reason = "certificate not trusted (pass --ca-cert)" if isinstance(e, requests.exceptions.SSLError) else ""
        raise ServerError(f"cannot reach {root}/v1/models: {reason or type(e).__name__}") from None
    if response.status_code != 200:
        raise ServerError(f"{root}/v1/models answered HTTP {response.status_code}")
    try:
        ids = [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        ids = []
    if not ids:
        raise ServerError(f"{root}/v1/models lists no model")
    return ids


def first_model(root: str, api_key: str | None, timeout: float = 10.0, ca_cert: str | None = None) -> str:
    """The first model the server lists at /v1/models."""
    return served_models(root, api_key, timeout, ca_cert)[0]


def serves_embeddings(
    root: str, api_key: str | None, model: str, timeout: float = 30.0, ca_cert: str | None = None
) -> bool:
    """True when a one-input /v1/embeddings request to ``model`` returns a vector.

    A chat model answers 4xx (vLLM: the model does not support the Embeddings API);
    that, or no answer, is False.
    """
    body = {"model": model, "input": "probe", "encoding_format": "float"}
    try:
        response = requests.post(
            f"{root}/v1/embeddings", json=body, headers=_headers(api_key), timeout=timeout, verify=verify(ca_cert)
        )
        return response.status_code == 200 and bool(response.json()["data"][0]["embedding"])
    except (requests.RequestException, ValueError, KeyError, IndexError, TypeError):
        return False


def find_models(
    root: str, api_key: str | None, chat: bool, embed: bool, ca_cert: str | None = None
) -> tuple[str | None, str | None]:
    """The first chat model and the first embedding model of /v1/models, as asked for.

    Which kind a model is comes from one probe per model (:func:`serves_embeddings`),
    made only when it matters: a lone model needed as a chat model is not probed.
    """
    ids = served_models(root, api_key, ca_cert=ca_cert)
    if chat and not embed and len(ids) == 1:
        return ids[0], None
    chat_model = embed_model = None
    for model in ids:
        if serves_embeddings(root, api_key, model, ca_cert=ca_cert):
            embed_model = embed_model or model
        else:
            chat_model = chat_model or model
        if (chat_model or not chat) and (embed_model or not embed):
            break
    if chat and chat_model is None:
        raise ServerError(f"{root}/v1/models lists no chat model (all answer /v1/embeddings); pass --model")
    if embed and embed_model is None:
        listed = ", ".join(ids)
        raise ServerError(f"no model of {root}/v1/models ({listed}) answers /v1/embeddings; pass --embed-model NAME")
    return (chat_model if chat else None), (embed_model if embed else None)
