"""Talking to OpenAI-compatible servers (vLLM): chat, bursting, probes, smoke checks.

Chat completions go through the official `openai` SDK with an explicit timeout and an
explicit retry count (0 by default: moving to the next endpoint is the failover).
vLLM's other routes (/health, /version, /metrics, /tokenize) live at the server root,
outside the SDK, and are read with `requests`.

Every failure leaves this module as an `LLFError` (see errors.py) naming the endpoint.
"""

from __future__ import annotations

import math
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import openai
import requests
from openai.types.chat import ChatCompletionMessageParam

from .config import Endpoint
from .errors import (
    AuthFailed,
    ConnectionFailed,
    ConnectionRefused,
    ContextLengthExceeded,
    LLFError,
    ModelNotFound,
    RateLimited,
    RequestRejected,
    RequestTimeout,
    ServerError,
    StreamBroken,
    TLSFailure,
    UnknownHost,
)
from .metrics import Metrics, MetricsParseError

DEFAULT_TIMEOUT = 120.0  # seconds: connect + the longest wait for the server
CONNECT_TIMEOUT = 5.0
PROBE_TIMEOUT = 10.0  # /health, /version, /metrics, /tokenize
NO_KEY = "EMPTY"  # the SDK insists on a key; vLLM without --api-key ignores it

SMOKE_SYSTEM_PROMPT = "You are a helpful assistant."
SMOKE_QUESTION = "What is the capital of France?"

Message = dict[str, str]
_Result = TypeVar("_Result", "Reply", "Embeddings")
TokenSink = Callable[[str], None]
Notify = Callable[[str], None]


# --- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    id: str
    max_model_len: int | None  # the context length, when the server says it


@dataclass(frozen=True)
class GenParams:
    """Sampling options; None leaves the server's default."""

    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    # without max_tokens: at most this many, or the room left in the context if less
    default_max_tokens: int | None = None


@dataclass
class Embeddings:
    """The vectors of some texts, and who computed them."""

    texts: list[str]
    vectors: list[list[float]]
    endpoint: Endpoint
    model: str
    total_s: float
    prompt_tokens: int | None = None
    skipped: list[tuple[Endpoint, LLFError]] = field(default_factory=list)

    def similarities(self) -> list[list[float]]:
        """The cosine similarity of every pair of vectors."""
        return [[cosine(a, b) for b in self.vectors] for a in self.vectors]

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint.name,
            "base_url": self.endpoint.base_url,
            "model": self.model,
            "total_s": round(self.total_s, 4),
            "prompt_tokens": self.prompt_tokens,
            "embeddings": [
                {"text": t, "dimensions": len(v), "embedding": v}
                for t, v in zip(self.texts, self.vectors, strict=True)
            ],
            "similarity": [[round(x, 6) for x in row] for row in self.similarities()]
            if len(self.vectors) > 1
            else None,
            "skipped": [
                {"endpoint": e.name, "base_url": e.base_url, "reason": err.message}
                for e, err in self.skipped
            ],
        }


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0 for a zero vector."""
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


@dataclass
class Reply:
    """One answer, and who served it."""

    answer: str
    endpoint: Endpoint
    model: str
    total_s: float
    ttft_s: float | None = None  # first content token; None when not streamed
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    skipped: list[tuple[Endpoint, LLFError]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first token.

        Without a first-token time (not streamed): all tokens over the total time.
        """
        tokens = self.completion_tokens
        if not tokens:
            return None
        if self.ttft_s is not None and tokens > 1 and self.total_s > self.ttft_s:
            return (tokens - 1) / (self.total_s - self.ttft_s)
        return tokens / self.total_s if self.total_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "answer": self.answer,
            "endpoint": self.endpoint.name,
            "base_url": self.endpoint.base_url,
            "model": self.model,
            "ttft_s": r(self.ttft_s),
            "total_s": r(self.total_s),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": r(self.tokens_per_s),
            "finish_reason": self.finish_reason,
            "skipped": [
                {"endpoint": e.name, "base_url": e.base_url, "reason": err.message}
                for e, err in self.skipped
            ],
        }


# --- error translation --------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it was caused by (requests nests them in args)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        nested += [a for a in current.args if isinstance(a, BaseException)]
        todo += [n for n in nested if isinstance(n, BaseException)]


def _connection_error(exc: BaseException, endpoint: Endpoint) -> ConnectionFailed:
    where = endpoint.label
    chain = list(_causes(exc))
    for cause in chain:
        if isinstance(cause, ssl.SSLError):
            reason = (
                getattr(cause, "verify_message", None)
                or getattr(cause, "reason", None)
                or cause.strerror
                or str(cause)
            )
            return TLSFailure(f"TLS failure ({reason})", where=where)
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            host = endpoint.base_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
            return UnknownHost(f"unknown host {host} ({cause.strerror or cause})", where=where)
        if isinstance(cause, ConnectionRefusedError):
            return ConnectionRefused("connection refused", where=where)
    innermost = str(chain[-1]) or type(chain[-1]).__name__
    return ConnectionFailed(f"connection error ({innermost})", where=where)


def _body_message(body: object) -> str | None:
    """The human message in an error body (vLLM's or OpenAI's shape)."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            body = inner
        elif isinstance(inner, str):
            return inner
    if isinstance(body, dict):
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


def status_error(status: int, message: str, endpoint: Endpoint) -> LLFError:
    """The error for an HTTP error status."""
    where = endpoint.label
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    lowered = message.lower()
    if status == 401:
        hint = (
            "the key was refused: check --api-key or LLF_API_KEY"
            if endpoint.api_key
            else "the server wants an API key: pass --api-key or set LLF_API_KEY"
        )
        return AuthFailed(text, where=where, hint=hint)
    if status == 403:
        return AuthFailed(text, where=where, hint="this key may not use this server or route")
    if status == 404 and "model" in lowered:
        return ModelNotFound(f"unknown model: {message}", where=where)
    if status == 404:
        return RequestRejected(text, where=where, hint="check that the URL ends in /v1")
    if status in (400, 413) and "context length" in lowered:
        return ContextLengthExceeded(f"prompt too long: {message}", where=where)
    if status == 429:
        return RateLimited(text, where=where)
    if status >= 500:
        return ServerError(text, where=where)
    return RequestRejected(text, where=where)


def translate_error(
    exc: BaseException, endpoint: Endpoint, *, timeout: float | None = None
) -> LLFError | None:
    """The LLFError for an exception of the SDK or of requests; None for others."""
    where = endpoint.label
    if isinstance(exc, LLFError):
        return exc
    if isinstance(exc, openai.APITimeoutError | requests.Timeout):
        waited = f" within {timeout:g} s" if timeout else " in time"
        return RequestTimeout(f"no answer{waited}", where=where)
    if isinstance(exc, openai.APIConnectionError | requests.ConnectionError):
        return _connection_error(exc, endpoint)
    if isinstance(exc, openai.APIStatusError):
        message = _body_message(exc.body) or exc.message
        return status_error(exc.status_code, message, endpoint)
    if isinstance(exc, openai.APIError):
        return ServerError(f"the server reported an error: {exc.message}", where=where)
    if isinstance(exc, requests.RequestException):
        return ConnectionFailed(f"request failed ({exc})", where=where)
    return None


# --- Prometheus metrics -------------------------------------------------------------

QUEUE_METRIC = "vllm:num_requests_waiting"


def queue_depth(text: str, model: str | None = None) -> float | None:
    """Requests waiting in vLLM's queue (`vllm:num_requests_waiting`), all engines.

    With `model`, only that model's series count, unless none carries its name.
    Raises MetricsParseError when the text is not Prometheus text.
    """
    metrics = Metrics.parse(text)
    if model and metrics.get(QUEUE_METRIC, {"model_name": model}):
        return metrics.value(QUEUE_METRIC, {"model_name": model})
    return metrics.value(QUEUE_METRIC)


def estimate_tokens(text: str) -> int:
    """Rough prompt size when the server cannot count: a token per 3 characters."""
    return math.ceil(len(text) / 3)


# --- one endpoint -------------------------------------------------------------------


class EndpointClient:
    """Requests to one endpoint; every failure becomes an LLFError naming it."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        first_token_timeout: float | None = None,
        max_retries: int = 0,
    ):
        self.endpoint = endpoint
        self.timeout = timeout
        self.first_token_timeout = first_token_timeout
        self.sdk = openai.OpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key or NO_KEY,
            timeout=self._timeout(timeout),
            max_retries=max_retries,
            http_client=(openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=endpoint.ca_cert))
                         if endpoint.ca_cert else None),
        )
        self.http = requests.Session()
        if endpoint.ca_cert:
            self.http.verify = endpoint.ca_cert
        self._models: list[ModelInfo] | None = None

    def _timeout(self, read: float) -> openai.Timeout:
        return openai.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout), read=read)

    def _fail(self, exc: BaseException, timeout: float | None = None) -> LLFError:
        err = translate_error(exc, self.endpoint, timeout=timeout or self.timeout)
        if err is None:  # pragma: no cover - callers only pass translatable errors
            raise exc
        return err

    # raw routes at the server root

    def request(
        self, method: str, path: str, *, auth: bool = True, json: Any = None
    ) -> requests.Response:
        headers = {}
        if auth and self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
        timeout = min(PROBE_TIMEOUT, self.timeout)
        try:
            return self.http.request(
                method,
                self.endpoint.root_url + path,
                headers=headers,
                json=json,
                timeout=(min(CONNECT_TIMEOUT, timeout), timeout),
                # per request: requests lets REQUESTS_CA_BUNDLE override a session's verify
                verify=self.endpoint.ca_cert or True,
            )
        except requests.RequestException as exc:
            raise self._fail(exc, timeout) from exc

    def health(self) -> tuple[int, float]:
        """The status of GET /health and its round-trip time in seconds."""
        start = time.perf_counter()
        response = self.request("GET", "/health")
        return response.status_code, time.perf_counter() - start

    def version(self) -> str | None:
        response = self.request("GET", "/version")
        if response.status_code != 200:
            return None
        try:
            value = response.json().get("version")
        except (ValueError, AttributeError):
            return None
        return str(value) if value else None

    def queue_depth(self, model: str | None = None) -> float | None:
        """Requests waiting, from /metrics; None when the server does not say."""
        response = self.request("GET", "/metrics")
        if response.status_code != 200:
            return None
        try:
            return queue_depth(response.text, model)
        except MetricsParseError:
            return None

    def count_prompt_tokens(self, model: str, messages: Sequence[Message]) -> tuple[int, bool]:
        """Prompt tokens from the server's /tokenize, else an estimate: (count, exact)."""
        response = self.request("POST", "/tokenize", json={"model": model, "messages": messages})
        if response.status_code == 200:
            try:
                return int(response.json()["count"]), True
            except (ValueError, KeyError, TypeError):
                pass
        return estimate_tokens("\n".join(m["content"] for m in messages)), False

    def unauthenticated_status(self) -> int:
        """The status of GET /v1/models sent without a key."""
        return self.request("GET", "/v1/models", auth=False).status_code

    # the OpenAI API

    def models(self, *, refresh: bool = False) -> list[ModelInfo]:
        if self._models is None or refresh:
            try:
                page = self.sdk.models.list()
            except openai.APIError as exc:
                raise self._fail(exc) from exc
            found = []
            for model in page.data:
                length = (model.model_extra or {}).get("max_model_len")
                found.append(ModelInfo(model.id, length if isinstance(length, int) else None))
            self._models = found
        return self._models

    def model_name(self) -> str:
        """The model to ask: the configured one, else the first the server lists."""
        if self.endpoint.model:
            return self.endpoint.model
        models = self.models()
        if not models:
            raise ModelNotFound("the server lists no models", where=self.endpoint.label)
        return models[0].id

    def max_model_len(self, model: str) -> int | None:
        return next((m.max_model_len for m in self.models() if m.id == model), None)

    def embed(self, model: str, texts: Sequence[str]) -> Embeddings:
        """One /v1/embeddings request; a reply without a float vector per text is a ServerError."""
        start = time.perf_counter()
        try:
            response = self.sdk.embeddings.create(model=model, input=list(texts), encoding_format="float")
        except (openai.APIError, requests.RequestException) as exc:
            raise self._fail(exc) from exc
        data = sorted(response.data or [], key=lambda d: d.index)
        vectors = [list(d.embedding) for d in data]
        if len(vectors) != len(texts) or not all(
            v and all(isinstance(x, float | int) and math.isfinite(x) for x in v) for v in vectors
        ):
            raise ServerError(
                f"the server sent {len(vectors)} embedding(s) for {len(texts)} text(s), or an empty vector",
                where=self.endpoint.label,
            )
        usage = response.usage.prompt_tokens if response.usage else None
        return Embeddings(
            list(texts), [[float(x) for x in v] for v in vectors], self.endpoint, model,
            time.perf_counter() - start, usage,
        )

    def chat(
        self,
        model: str,
        messages: Sequence[Message],
        params: GenParams,
        *,
        stream: bool = True,
        on_token: TokenSink | None = None,
    ) -> Reply:
        """One chat completion. Failures after tokens were shown raise StreamBroken."""
        options: dict[str, Any] = {
            "temperature": openai.omit if params.temperature is None else params.temperature,
            "max_tokens": _max_tokens(params),
            "top_p": openai.omit if params.top_p is None else params.top_p,
            "seed": openai.omit if params.seed is None else params.seed,
        }
        sdk_messages = cast(list[ChatCompletionMessageParam], list(messages))
        reply = Reply(answer="", endpoint=self.endpoint, model=model, total_s=0.0)
        parts: list[str] = []
        start = time.perf_counter()
        wait = self.first_token_timeout if stream and self.first_token_timeout else self.timeout
        try:
            if not stream:
                completion = self.sdk.chat.completions.create(
                    model=model, messages=sdk_messages, stream=False, **options
                )
                choice = completion.choices[0] if completion.choices else None
                parts.append(choice.message.content or "" if choice else "")
                reply.finish_reason = choice.finish_reason if choice else None
                if completion.usage:
                    reply.prompt_tokens = completion.usage.prompt_tokens
                    reply.completion_tokens = completion.usage.completion_tokens
                if on_token and parts[0]:
                    on_token(parts[0])
            else:
                chunks = self.sdk.chat.completions.create(
                    model=model,
                    messages=sdk_messages,
                    stream=True,
                    stream_options={"include_usage": True},
                    timeout=self._timeout(wait),
                    **options,
                )
                first_choice: float | None = None
                with chunks:
                    for chunk in chunks:
                        if chunk.usage:
                            reply.prompt_tokens = chunk.usage.prompt_tokens
                            reply.completion_tokens = chunk.usage.completion_tokens
                        if not chunk.choices:
                            continue
                        now = time.perf_counter()
                        first_choice = first_choice or now
                        choice_chunk = chunk.choices[0]
                        reply.finish_reason = choice_chunk.finish_reason or reply.finish_reason
                        text = choice_chunk.delta.content or ""
                        if text:
                            if reply.ttft_s is None:
                                reply.ttft_s = now - start
                            parts.append(text)
                            if on_token:
                                on_token(text)
                if reply.ttft_s is None and first_choice is not None:
                    reply.ttft_s = first_choice - start
                if reply.finish_reason is None:  # vLLM always ends with one
                    raise openai.APIError(
                        "the stream ended early", chunks.response.request, body=None
                    )
        except (openai.APIError, requests.RequestException) as exc:
            err = self._fail(exc, wait)
            if parts:
                raise StreamBroken(
                    f"the reply broke off after {len(parts)} chunks: {err.message}",
                    where=self.endpoint.label,
                ) from exc
            raise err from exc
        reply.total_s = time.perf_counter() - start
        reply.answer = "".join(parts)
        return reply


# --- bursting over several endpoints ------------------------------------------------


class Router:
    """Sends a request to the first endpoint that can take it, in priority order.

    A request moves on when an endpoint is unreachable, times out before the first
    token, answers 429 or 5xx, cannot fit the prompt in its context, or (with a
    threshold) has too many requests waiting. Nothing is re-sent once tokens were
    shown.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        burst: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        first_token_timeout: float | None = None,
        max_retries: int = 0,
        notify: Notify | None = None,
    ):
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = list(endpoints) if burst else list(endpoints)[:1]
        self.burst = burst
        self.notify = notify or (lambda message: None)
        self.model_override: str | None = None
        self.timeout = timeout
        self.first_token_timeout = first_token_timeout
        self.max_retries = max_retries
        self._clients: dict[str, EndpointClient] = {}

    def client(self, endpoint: Endpoint) -> EndpointClient:
        if endpoint.name not in self._clients:
            self._clients[endpoint.name] = EndpointClient(
                endpoint,
                timeout=self.timeout,
                first_token_timeout=self.first_token_timeout,
                max_retries=self.max_retries,
            )
        return self._clients[endpoint.name]

    def model_for(self, endpoint: Endpoint) -> str:
        return self.model_override or self.client(endpoint).model_name()

    def _preflight(
        self,
        client: EndpointClient,
        model: str,
        messages: Sequence[Message],
        params: GenParams,
        has_next: bool,
    ) -> GenParams:
        """Refuse what cannot fit or should burst; the params to send (a default max_tokens
        shrinks to the room the context has left)."""
        endpoint = client.endpoint
        try:
            limit = client.max_model_len(model)
        except RequestRejected:  # no /v1/models here: nothing to check against
            limit = None
        if limit:
            text = "\n".join(m["content"] for m in messages)
            room = params.max_tokens or 1
            wanted = params.max_tokens or params.default_max_tokens or 1
            # Tokens never outnumber bytes: only count when the prompt could be too long.
            if len(text.encode()) + 16 * len(messages) + 64 + wanted > limit:
                count, exact = client.count_prompt_tokens(model, messages)
                if count + room > limit:
                    how = "" if exact else " (estimated)"
                    raise ContextLengthExceeded(
                        f"prompt of {count} tokens{how} + {room} to generate does not fit "
                        f"the context length {limit} of {model}",
                        where=endpoint.label,
                    )
                if params.max_tokens is None and params.default_max_tokens:
                    params = replace(params, default_max_tokens=min(params.default_max_tokens, limit - count))
        if has_next and endpoint.queue_threshold is not None:
            waiting = client.queue_depth(model)
            if waiting is not None and waiting > endpoint.queue_threshold:
                raise RateLimited(
                    f"{waiting:g} requests waiting (threshold {endpoint.queue_threshold:g})",
                    where=endpoint.label,
                )
        return params

    def ask(
        self,
        messages: Sequence[Message],
        params: GenParams,
        *,
        stream: bool = True,
        on_token: TokenSink | None = None,
    ) -> Reply:
        def attempt(client: EndpointClient, model: str, has_next: bool) -> Reply:
            used = self._preflight(client, model, messages, params, has_next)
            return client.chat(model, messages, used, stream=stream, on_token=on_token)

        return self._first(attempt)

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """The embeddings of `texts` from the first endpoint that can compute them."""
        return self._first(lambda client, model, has_next: client.embed(model, texts))

    def _first(self, attempt: Callable[[EndpointClient, str, bool], _Result]) -> _Result:
        """`attempt` on each endpoint in order until one succeeds (bursting)."""
        skipped: list[tuple[Endpoint, LLFError]] = []
        for index, endpoint in enumerate(self.endpoints):
            has_next = index + 1 < len(self.endpoints)
            client = self.client(endpoint)
            try:
                result = attempt(client, self.model_for(endpoint), has_next)
            except LLFError as err:
                if not (has_next and err.burstable):
                    raise
                skipped.append((endpoint, err))
                following = self.endpoints[index + 1]
                self.notify(f"[{endpoint.label} skipped: {err.message}; trying {following.name}]")
                continue
            result.skipped = skipped
            return result
        raise AssertionError("unreachable: the last endpoint returns or raises")


def _max_tokens(params: GenParams) -> int | openai.Omit:
    if params.max_tokens is not None:
        return params.max_tokens
    return openai.omit if params.default_max_tokens is None else params.default_max_tokens


def build_messages(prompt: str, system: str | None = None) -> list[Message]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


# --- health, models and smoke checks ------------------------------------------------


@dataclass
class ServerInfo:
    """What `health` and `models` show for one endpoint."""

    endpoint: Endpoint
    health_status: int | None = None
    latency_s: float | None = None
    version: str | None = None
    models: list[ModelInfo] = field(default_factory=list)
    error: LLFError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.health_status == 200

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint.name,
            "base_url": self.endpoint.base_url,
            "ok": self.ok,
            "health_status": self.health_status,
            "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 1),
            "version": self.version,
            "models": [{"id": m.id, "max_model_len": m.max_model_len} for m in self.models],
            "error": self.error.to_dict() if self.error else None,
        }


def probe(client: EndpointClient) -> ServerInfo:
    """Health, version and models of one endpoint; a failure is kept in `.error`."""
    info = ServerInfo(client.endpoint)
    try:
        info.health_status, info.latency_s = client.health()
        info.version = client.version()
        info.models = client.models()
        if info.health_status != 200:
            info.error = ServerError(
                f"/health answered {info.health_status}",
                where=client.endpoint.label,
                hint="the server is starting or unwell: see its log",
            )
    except LLFError as err:
        info.error = err
    return info


@dataclass
class Check:
    """One row of a smoke test."""

    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str
    elapsed_s: float | None = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict[str, Any]:
        elapsed = None if self.elapsed_s is None else round(self.elapsed_s * 1000, 1)
        return {
            "check": self.name,
            "status": self.status,
            "detail": self.detail,
            "elapsed_ms": elapsed,
        }


SMOKE_CHECKS = ("health", "models", "answer", "stream", "auth")  # chat; embedding: "embedding" for answer, stream


def smoke(
    client: EndpointClient,
    *,
    expect: str = "Paris",
    ttft_target_ms: float = 2000.0,
    max_tokens: int = 32,
) -> list[Check]:
    """The smoke checks of one endpoint, in order; later ones skip when it is down.

    A chat endpoint answers a question, streamed and not; an embedding endpoint
    returns a non-empty float vector for it (/v1/embeddings).
    """
    endpoint = client.endpoint
    checks: list[Check] = []
    params = GenParams(system=SMOKE_SYSTEM_PROMPT, temperature=0, seed=0, max_tokens=max_tokens)
    messages = build_messages(SMOKE_QUESTION, SMOKE_SYSTEM_PROMPT)
    model: str | None = None
    down: str | None = None

    def run(name: str, body: Callable[[], tuple[bool, str]]) -> None:
        nonlocal down
        if down is not None:
            checks.append(Check(name, "skip", f"not run: {down}"))
            return
        start = time.perf_counter()
        try:
            ok, detail = body()
        except LLFError as err:
            ok, detail = False, err.one_line().removeprefix(f"{endpoint.label}: ")
            if isinstance(err, ConnectionFailed | AuthFailed):
                down = err.message
        checks.append(Check(name, "pass" if ok else "fail", detail, time.perf_counter() - start))

    def health() -> tuple[bool, str]:
        status, _ = client.health()
        return status == 200, f"/health answered {status}"

    def models() -> tuple[bool, str]:
        nonlocal model
        served = client.models()
        names = ", ".join(f"{m.id} (context {m.max_model_len})" for m in served) or "none"
        if endpoint.model:
            model = endpoint.model if any(m.id == endpoint.model for m in served) else None
            verdict = "lists" if model else "does not list"
            return model is not None, f"{verdict} {endpoint.model}; served: {names}"
        model = served[0].id if served else None
        return model is not None, f"served: {names}"

    def answer() -> tuple[bool, str]:
        if model is None:
            raise ModelNotFound("no model to ask", where=endpoint.label)
        reply = client.chat(model, messages, params, stream=False)
        ok = expect.casefold() in reply.answer.casefold()
        return ok, f"{'contains' if ok else 'lacks'} {expect!r}: {reply.answer.strip()[:80]!r}"

    def streamed() -> tuple[bool, str]:
        if model is None:
            raise ModelNotFound("no model to ask", where=endpoint.label)
        reply = client.chat(model, messages, params, stream=True)
        if reply.ttft_s is None:
            return False, "no token streamed"
        ttft_ms = reply.ttft_s * 1000
        ok = ttft_ms <= ttft_target_ms
        return ok, f"TTFT {ttft_ms:.0f} ms ({'<=' if ok else '>'} target {ttft_target_ms:g} ms)"

    def auth() -> tuple[bool, str]:
        status = client.unauthenticated_status()
        return status == 401, f"a request without the key got {status} (expected 401)"

    def embedding() -> tuple[bool, str]:
        if model is None:
            raise ModelNotFound("no model to ask", where=endpoint.label)
        vectors = client.embed(model, [SMOKE_QUESTION]).vectors
        head = ", ".join(f"{x:.4f}" for x in vectors[0][:3])
        return True, f"{len(vectors[0])} dimensions: [{head}, ...]"

    run("health", health)
    run("models", models)
    if endpoint.kind == "embedding":
        run("embedding", embedding)
    else:
        run("answer", answer)
        run("stream", streamed)
    if endpoint.api_key:
        run("auth", auth)
    else:
        checks.append(Check("auth", "skip", "no API key configured"))
    return checks
