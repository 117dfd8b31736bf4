"""Send one request with plain requests and time it: a stream from its SSE events, an
embeddings request (not streamed) from the POST to the end of its response body.

Not Locust's ``response_time`` (it stops at the response headers, which vLLM sends
before prefill), not FastHttpUser (it buffers streamed reads) and not the openai SDK
(7x the client CPU, hidden retries): ``requests`` hands over each HTTP chunk as it
arrives, and every event is stamped with ``time.perf_counter()`` when its chunk came.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import requests

from loadtests.config import verify
from loadtests.metrics import Sample
from loadtests.sse import SSEParser, StreamTiming

ERROR_BODY_LIMIT = 300


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: one item per HTTP chunk (or per socket read)."""
    raw = response.raw
    if getattr(raw, "chunked", False):
        yield from response.iter_content(chunk_size=None)
        return
    while True:
        data = raw.read1(65536)
        if not data:
            return
        yield data


def _error_text(response: requests.Response) -> str:
    try:
        body = response.raw.read(ERROR_BODY_LIMIT, decode_content=True) or b""
    except Exception:  # noqa: BLE001 - best effort: the status code is the message
        body = b""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        message = json.loads(text)
        err = message.get("error", message) if isinstance(message, dict) else message
        text = str(err.get("message", err) if isinstance(err, dict) else err)
    except ValueError:
        pass
    return f"HTTP {response.status_code}: {text[:200]}" if text else f"HTTP {response.status_code}"


def send_streamed(
    session: requests.Session,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    clock: Callable[[], float] = time.perf_counter,
    wall: Callable[[], float] = time.time,
) -> tuple[Sample, int]:
    """POST a streaming request; return its sample and the number of body bytes read.

    ``timeout`` bounds both the wait for any byte and the whole request.
    """
    payload = json.dumps(body).encode("utf-8")
    all_headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    all_headers.update(headers or {})
    timing = StreamTiming()
    parser = SSEParser()
    received = 0
    status = 0
    error: str | None = None
    start = wall()
    st = clock()
    try:
        response = session.request(
            "POST",
            url,
            data=payload,
            headers=all_headers,
            stream=True,
            timeout=(min(timeout, 10.0), timeout),
        )
    except requests.RequestException as e:
        elapsed = clock() - st
        return Sample(start=start, success=False, error=_describe(e), elapsed=elapsed), 0
    try:
        status = response.status_code
        if status != 200:
            error = _error_text(response)
        else:
            for chunk in _chunks(response):
                at = clock() - st
                received += len(chunk)
                for event in parser.feed(chunk):
                    timing.add(event, at)
                if timing.error or timing.done:
                    break
                if at > timeout:
                    error = f"timeout: stream still open after {timeout:g} s"
                    break
    except requests.RequestException as e:
        error = _describe(e)
    finally:
        response.close()
    elapsed = clock() - st
    error = error or timing.error
    if error is None and timing.ttft is None:
        error = "no choices in the stream"
    success = error is None
    tokens = timing.completion_tokens
    source = "usage"
    text = None
    if tokens is None:
        tokens, source = timing.content_chunks, "chunks"
        text = timing.text
    sample = Sample(
        start=start,
        success=success,
        status=status,
        error=error,
        ttft=timing.ttft,
        ttft_content=timing.ttft_content,
        e2el=timing.last,
        elapsed=elapsed,
        itl=timing.itl,
        output_tokens=tokens if success else None,
        prompt_tokens=timing.prompt_tokens,
        chunks=timing.chunks,
        tokens_source=source,
        text=text if success else None,
    )
    return sample, received


def send_embedding(
    session: requests.Session,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    clock: Callable[[], float] = time.perf_counter,
    wall: Callable[[], float] = time.time,
) -> tuple[Sample, int]:
    """POST a (non-streamed) /v1/embeddings request; return its sample and the body bytes.

    Its latency (``e2el``) runs from ``st`` to the end of the response body. Success:
    HTTP 200 and one embedding per input; ``usage.prompt_tokens`` gives the input tokens.
    """
    payload = json.dumps(body).encode("utf-8")
    all_headers = {"Content-Type": "application/json", "Accept": "application/json"}
    all_headers.update(headers or {})
    start = wall()
    st = clock()
    try:
        response = session.request(
            "POST", url, data=payload, headers=all_headers, stream=True, timeout=(min(timeout, 10.0), timeout)
        )
    except requests.RequestException as e:
        return Sample(start=start, success=False, error=_describe(e), elapsed=clock() - st), 0
    status = response.status_code
    try:
        if status != 200:
            return Sample(
                start=start, success=False, status=status, error=_error_text(response), elapsed=clock() - st
            ), 0
        content = response.content  # the whole body: the latency ends when it is read
    except requests.RequestException as e:
        return Sample(start=start, success=False, status=status, error=_describe(e), elapsed=clock() - st), 0
    finally:
        response.close()
    latency = clock() - st
    error = None
    prompt_tokens = None
    try:
        data = json.loads(content)
        items = data["data"]
        inputs = body.get("input")
        expected = len(inputs) if isinstance(inputs, list) else 1
        if not isinstance(items, list) or len(items) != expected or not all(item.get("embedding") for item in items):
            error = f"expected {expected} embedding(s) in the answer"
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        error = "the answer is not an embeddings list"
    sample = Sample(
        start=start,
        success=error is None,
        status=200,
        error=error,
        e2el=latency if error is None else None,
        elapsed=latency,
        prompt_tokens=prompt_tokens,
    )
    return sample, len(content)


def recount_tokens(
    samples: list[Sample],
    root: str,
    model: str,
    headers: Mapping[str, str] | None = None,
    limit: int = 2000,
    timeout: float = 10.0,
    ca_cert: str | None = None,
) -> int:
    """Count output tokens with the server's tokenizer where the stream had no usage.

    Uses vLLM's ``/tokenize``; where that fails the chunk count stays (``chunks``).
    Returns how many samples were recounted.
    """
    recounted = 0
    session = requests.Session()
    session.verify = verify(ca_cert)
    for sample in samples:
        if sample.text is None or sample.tokens_source != "chunks" or recounted >= limit:
            continue
        body: dict[str, Any] = {
            "model": model,
            "prompt": sample.text,
            "add_special_tokens": False,
        }
        try:
            response = session.post(
                f"{root}/tokenize", json=body, headers=dict(headers or {}), timeout=timeout, verify=verify(ca_cert)
            )
            data = response.json() if response.status_code == 200 else None
            count = data.get("count") if isinstance(data, dict) else None
        except (requests.RequestException, ValueError):
            count = None
        if not isinstance(count, int):
            break  # no tokenizer endpoint: keep the chunk counts
        sample.output_tokens = count
        sample.tokens_source = "tokenizer"
        sample.text = None
        recounted += 1
    return recounted


def _describe(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
