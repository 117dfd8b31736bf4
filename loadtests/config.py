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
    model: str
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
    ca_cert: str | None = None  # a PEM file trusted for https, every request (the gateway's CA)

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


def chat_endpoints(env: Mapping[str, str]) -> list[Endpoint]:
    """The chat entries of the endpoints file the deploy writes (none without the file).

    Read by llf_client's reader, the one reader of that file.
    """
    path = default_endpoints_path(env)
    if not path.is_file():
        return []
    try:
        return [e for e in load_endpoints_file(path) if e.kind == "chat"]
    except ConfigError as e:
        raise UsageError(e.one_line()) from None


def verify(ca_cert: str | None) -> str | bool:
    """requests' ``verify``: the CA file to trust for https, else the default bundle."""
    return ca_cert or True


def first_model(root: str, api_key: str | None, timeout: float = 10.0, ca_cert: str | None = None) -> str:
    """The first model the server lists at /v1/models."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = requests.get(f"{root}/v1/models", headers=headers, timeout=timeout, verify=verify(ca_cert))
    except requests.RequestException as e:
        reason = "certificate not trusted (pass --ca-cert)" if isinstance(e, requests.exceptions.SSLError) else ""
        raise ServerError(f"cannot reach {root}/v1/models: {reason or type(e).__name__}") from None
    if response.status_code != 200:
        raise ServerError(f"{root}/v1/models answered HTTP {response.status_code}")
    try:
        models = response.json()["data"]
        return str(models[0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise ServerError(f"{root}/v1/models lists no model") from None
