"""A tiny OpenAI-compatible server for the failures a real vLLM cannot produce on demand.

It speaks just enough of vLLM's API (/health, /version, /metrics, /v1/models,
/v1/chat/completions) on 127.0.0.1 to make a server answer 429 or 503, stall before
its first byte, break off in the middle of a stream, demand a key, or report a long
queue. Tests that need a working server use the real one (tests/e2e).

    with FakeOpenAI(chat_status=503) as fake:
        main(["ask", "--url", fake.base_url, "hi"])
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    model: str = "fake-model"
    max_model_len: int | None = 4096
    api_key: str | None = None  # when set, /v1/* answers 401 without it
    health_status: int = 200
    chat_status: int = 200  # e.g. 429, 500, 503
    stall_s: float = 0.0  # wait this long before answering a chat (released on stop)
    break_after: int | None = None  # stream this many chunks, then fail
    # "error": an SSE error event; "close": end the body early (no finish_reason, no
    # [DONE]); "cut": close the socket short of the Content-Length it announced
    break_with: str = "error"
    tokens: tuple[str, ...] = ("The capital", " of France", " is Paris.")
    waiting: float = 0.0  # vllm:num_requests_waiting
    # /metrics: these texts one after the other (the last one stays), instead of the queue
    metrics: list[str] = field(default_factory=list)
    metrics_status: int = 200  # e.g. 404, as a gateway answers
    requests: list[str] = field(default_factory=list)  # "METHOD /path" seen
    bodies: list[dict[str, Any]] = field(default_factory=list)  # the JSON bodies of POSTs
    dimensions: int = 8  # /v1/embeddings: vectors of this size (0: empty vectors)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass  # keep pytest's output clean

    # helpers

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._json(
            status,
            {"object": "error", "message": message, "type": "Error", "param": None, "code": status},
        )

    def _authorized(self) -> bool:
        key = self.server.behaviour.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._error(401, "Unauthorized")
            return False
        return True

    # routes

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        b = self.server.behaviour
        b.requests.append(f"GET {self.path}")
        if self.path == "/health":
            self.send_response(b.health_status)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/version":
            self._json(200, {"version": "fake"})
        elif self.path == "/metrics":
            if b.metrics_status != 200:
                self._error(b.metrics_status, "Not Found")
                return
            if b.metrics:
                text = (b.metrics.pop(0) if len(b.metrics) > 1 else b.metrics[0]).encode()
            else:
                text = (
                    "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    f'vllm:num_requests_waiting{{engine="0",model_name="{b.model}"}} {b.waiting}\n'
                ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
        elif self.path == "/v1/models":
            if self._authorized():
                entry: dict[str, Any] = {"id": b.model, "object": "model", "owned_by": "fake"}
                if b.max_model_len is not None:
                    entry["max_model_len"] = b.max_model_len
                self._json(200, {"object": "list", "data": [entry]})
        else:
            self._error(404, "Not Found")

    def do_POST(self) -> None:  # noqa: N802 - stdlib's name
        b = self.server.behaviour
        b.requests.append(f"POST {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        b.bodies.append(body)
        if self.path == "/v1/embeddings" and self._authorized():
            self._embeddings(body)
            return
        if self.path != "/v1/chat/completions":
            self._error(404, "Not Found")
            return
        if not self._authorized():
            return
        if b.stall_s:
            self.server.released.wait(b.stall_s)
        if b.chat_status != 200:
            self._error(b.chat_status, f"fake failure {b.chat_status}")
            return
        if body.get("model") != b.model:
            self._error(404, f"The model `{body.get('model')}` does not exist.")
            return
        if body.get("stream"):
            self._stream()
        else:
            self._json(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": b.model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "".join(b.tokens)},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 5,
                        "completion_tokens": len(b.tokens),
                        "total_tokens": 5 + len(b.tokens),
                    },
                },
            )

    def _embeddings(self, body: dict[str, Any]) -> None:
        """A vector per input: its letters counted into `dimensions` buckets (alike texts, alike vectors)."""
        b = self.server.behaviour
        if body.get("model") != b.model:
            self._error(404, f"The model `{body.get('model')}` does not exist.")
            return
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for index, text in enumerate(texts):
            vector = [0.0] * b.dimensions
            for char in str(text).lower():
                if char.isalpha() and b.dimensions:
                    vector[ord(char) % b.dimensions] += 1.0
            data.append({"object": "embedding", "index": index, "embedding": vector})
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        self._json(200, {"object": "list", "model": b.model, "data": data, "usage": usage})

    def _stream(self) -> None:
        b = self.server.behaviour
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if b.break_with == "cut":
            self.send_header("Content-Length", "100000")
        self.end_headers()  # else no length: HTTP/1.0, the body ends when the socket closes

        def send(data: object) -> None:
            self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": b.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        send(chunk({"role": "assistant", "content": ""}))
        for index, token in enumerate(b.tokens):
            if b.break_after is not None and index == b.break_after:
                if b.break_with == "error":
                    send(
                        {
                            "error": {
                                "object": "error",
                                "message": "engine died",
                                "type": "InternalServerError",
                                "code": 500,
                            }
                        }
                    )
                return  # "close" and "cut": just close the connection
            send(chunk({"content": token}))
        send(chunk({"content": ""}, "stop"))
        send(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": b.model,
                "choices": [],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": len(b.tokens),
                    "total_tokens": 5 + len(b.tokens),
                },
            }
        )
        self.wfile.write(b"data: [DONE]\n\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: Behaviour):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.released = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client hung up first: expected when it gives up on a reply
        super().handle_error(request, client_address)


class FakeOpenAI:
    """Run a fake server in a thread; use as a context manager."""

    def __init__(self, **behaviour: Any):
        self.behaviour = Behaviour(**behaviour)
        self._server = _Server(self.behaviour)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[str]:
        return self.behaviour.requests

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
