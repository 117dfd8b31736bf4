"""A fake OpenAI-compatible streaming server with known timing (stdlib, in a thread).

It answers /v1/chat/completions and /v1/completions with a chunked SSE stream: it
waits ``ttft`` seconds, sends the first chunk (a chat stream sends the role-only
delta and the first token together, as vLLM does), then one chunk per token every
``itl`` seconds, a usage-only chunk and ``[DONE]``. It also serves /v1/models,
/tokenize (one token per word), /v1/embeddings (for the models in ``embed_models``,
after ``ttft`` seconds, one token per word plus two) and /metrics with vLLM's histogram names, filled with
its own server-side timing, so the load tests' cross-check can be calibrated too.

    with FakeSSEServer(ttft=0.2, itl=0.04) as fake:
        requests.get(fake.base_url + "/models")

Run alone: ``python -m tests.fakes.fake_sse --port 8010 --ttft 0.2 --itl 0.04``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fakes.tls import server_context

MODEL = "fake-model"
EMBED_MODEL = "fake-embed"
BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Behaviour:
    """What the fake does; change it between requests as a test needs."""

    ttft: float = 0.05  # seconds from the request to the first chunk
    itl: float = 0.01  # seconds between token chunks
    tokens: int | None = None  # tokens per answer (default: the request's max_tokens)
    usage: bool = True  # send the usage chunk
    status: int = 200  # anything else: an error body, no stream
    error_after: int | None = None  # send an error event after this many token chunks
    stall: float = 0.0  # sleep this long after the first chunk (for timeouts)
    empty: bool = False  # a 200 stream with no choices at all
    api_key: str | None = None  # when set, /v1 demands "Authorization: Bearer <key>"
    chunked: bool = True  # False: no Transfer-Encoding, the body ends when the socket closes
    serial: bool = False  # serve one stream at a time (a server with a capacity of one)
    plain_error: bool = False  # error bodies as plain text rather than JSON
    models: tuple[str, ...] = (MODEL,)  # what /v1/models lists
    embed_models: tuple[str, ...] = (EMBED_MODEL,)  # the models /v1/embeddings answers for


@dataclass
class Stats:
    requests: int = 0
    authorizations: list[str | None] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _histogram(name: str, values: list[float]) -> list[str]:
    labels = f'engine="0",model_name="{MODEL}"'
    lines = [f"# HELP {name} fake", f"# TYPE {name} histogram"]
    for le in BUCKETS:
        count = sum(1 for v in values if v <= le)
        lines.append(f'{name}_bucket{{engine="0",le="{le}",model_name="{MODEL}"}} {float(count)}')
    lines.append(f'{name}_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} {float(len(values))}')
    lines.append(f"{name}_count{{{labels}}} {float(len(values))}")
    lines.append(f"{name}_sum{{{labels}}} {sum(values)}")
    return lines


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path == "/v1/models":
            models = self.server.behaviour.models
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})
        elif self.path == "/metrics":
            with self.server.lock:
                stats = self.server.stats
                lines = _histogram("vllm:time_to_first_token_seconds", stats.ttft)
                lines += _histogram("vllm:e2e_request_latency_seconds", stats.e2e)
                lines += _histogram("vllm:request_queue_time_seconds", [0.0] * len(stats.e2e))
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._json(404, {"error": {"message": "not found"}})

    def _chunk(self, data: bytes) -> None:
        if self.server.behaviour.chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        elif data:
            self.wfile.write(data)

    def _event(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(f"data: {text}\n\n".encode())

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        t0 = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        behaviour = self.server.behaviour
        if self.path == "/tokenize":
            self._json(200, {"count": len(str(body.get("prompt", "")).split())})
            return
        auth = self.headers.get("Authorization")
        with self.server.lock:
            self.server.stats.requests += 1
            self.server.stats.authorizations.append(auth)
            self.server.stats.bodies.append(body)
        if behaviour.api_key and auth != f"Bearer {behaviour.api_key}":
            self._json(401, {"error": {"message": "invalid API key"}})
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            self._json(404, {"error": {"message": "not found"}})
            return
        if behaviour.status != 200:
            if behaviour.plain_error:
                text = b"upstream exploded"
                self.send_response(behaviour.status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)
                return
            self._json(behaviour.status, {"error": {"message": "fake failure"}})
            return
        if self.path == "/v1/embeddings":
            self._embeddings(body, behaviour)
            return
        if behaviour.serial:
            with self.server.serial_lock:
                self._stream(body, behaviour, t0)
        else:
            self._stream(body, behaviour, t0)

    def _embeddings(self, body: dict[str, Any], behaviour: Behaviour) -> None:
        if body.get("model") not in behaviour.embed_models:  # as vLLM answers for a chat model
            self._json(400, {"error": {"message": "The model does not support Embeddings API"}})
            return
        time.sleep(behaviour.ttft)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [] if behaviour.empty else [{"index": i, "embedding": [0.5, -0.5, 0.25]} for i in range(len(inputs))]
        tokens = sum(len(str(x).split()) + 2 for x in inputs)
        self._json(200, {"object": "list", "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _stream(self, body: dict[str, Any], behaviour: Behaviour, t0: float) -> None:
        chat = self.path.endswith("chat/completions")
        n = behaviour.tokens or int(body.get("max_tokens") or 16)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if behaviour.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        time.sleep(behaviour.ttft)
        if behaviour.empty:
            self._event({"id": "x", "choices": [], "usage": None})
            self._event("[DONE]")
            self._chunk(b"")
            return
        first: float | None = None
        for i in range(n):
            if i > 0:
                time.sleep(behaviour.itl)
            if behaviour.error_after is not None and i == behaviour.error_after:
                self._event({"error": {"message": "fake error mid-stream", "code": 500}})
                break
            if chat:
                if i == 0:
                    self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                choice: dict[str, Any] = {"index": 0, "delta": {"content": f" w{i}"}}
            else:
                choice = {"index": 0, "text": f" w{i}"}
            self._event({"id": "x", "choices": [choice]})
            if first is None:
                first = time.perf_counter() - t0
                if behaviour.stall:
                    time.sleep(behaviour.stall)
        end = time.perf_counter() - t0
        if behaviour.usage:
            usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
            self._event({"id": "x", "choices": [], "usage": usage})
        self._event("[DONE]")
        self._chunk(b"")
        with self.server.lock:
            if first is not None:
                self.server.stats.ttft.append(first)
            self.server.stats.e2e.append(end)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour
    stats: Stats
    lock: threading.Lock
    serial_lock: threading.Lock

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up mid-stream (timeouts, stopped users) are not errors here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeSSEServer:
    """The fake on 127.0.0.1 and a free port, served from a daemon thread."""

    def __init__(self, port: int = 0, tls: tuple[Path, Path] | None = None, **behaviour: Any) -> None:
        """``tls``: (certificate, key) PEM files to serve https with (see tests/fakes/tls.py)."""
        self._server = _Server(("127.0.0.1", port), _Handler)
        self.scheme = "http"
        if tls is not None:
            self._server.socket = server_context(*tls).wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._server.behaviour = Behaviour(**behaviour)
        self._server.stats = Stats()
        self._server.lock = threading.Lock()
        self._server.serial_lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def behaviour(self) -> Behaviour:
        return self._server.behaviour

    @property
    def stats(self) -> Stats:
        return self._server.stats

    @property
    def root_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def start(self) -> FakeSSEServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeSSEServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--ttft", type=float, default=0.2)
    parser.add_argument("--itl", type=float, default=0.04)
    args = parser.parse_args()
    server = FakeSSEServer(port=args.port, ttft=args.ttft, itl=args.itl).start()
    print(f"fake SSE server at {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
