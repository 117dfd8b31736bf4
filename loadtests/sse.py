"""Server-sent events: an incremental parser and the per-request timing of a stream.

The timing follows LOADTEST.md (vLLM's definitions):

- TTFT: the first ``data:`` message whose JSON has a non-empty ``choices`` list
  (the role-only first delta of a chat stream counts), minus ``st``;
- ``ttft_content``: the first chunk that carries text (content, reasoning or a tool
  call);
- ITL: the gaps between consecutive chunks that carry ``choices`` (chunks, not
  tokens); the usage-only chunk and ``[DONE]`` do not count;
- E2EL: the last chunk with ``choices`` minus ``st``;
- output tokens: ``usage.completion_tokens`` of the final usage chunk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One dispatched server-sent event."""

    data: str
    event: str = "message"


class SSEParser:
    """Incremental parser of a ``text/event-stream`` body (WHATWG rules).

    Feed it the bytes as they arrive; it returns the events completed so far. Lines
    end with LF, CRLF or CR; a blank line dispatches the event; ``data`` lines are
    joined with LF; lines starting with ``:`` are comments.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two reads
        self._pending_cr = False
        self._buffer += chunk
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                break
            end, width = cut
            if width == 1 and self._buffer[end : end + 1] == b"\r" and end + 1 == len(self._buffer):
                self._pending_cr = True  # maybe CRLF; the LF may come in the next read
            line = self._buffer[:end].decode("utf-8", errors="replace")
            self._buffer = self._buffer[end + width :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = Event(data="\n".join(self._data), event=self._event or "message")
            self._data = []
            self._event = ""
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Position and width of the first line terminator in ``buffer``."""
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r")
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, 1
    if buffer[cr + 1 : cr + 2] == b"\n":
        return cr, 2
    return cr, 1


def chunk_text(choice: dict[str, Any]) -> str:
    """The text a ``choices`` item carries: content, reasoning, tool calls or text."""
    delta = choice.get("delta")
    parts: list[str] = []
    if isinstance(delta, dict):
        for key in ("content", "reasoning_content", "reasoning"):
            value = delta.get(key)
            if isinstance(value, str):
                parts.append(value)
        for call in delta.get("tool_calls") or []:
            function = (call.get("function") or {}) if isinstance(call, dict) else {}
            for key in ("name", "arguments"):
                value = function.get(key)
                if isinstance(value, str):
                    parts.append(value)
    text = choice.get("text")
    if isinstance(text, str):
        parts.append(text)
    return "".join(parts)


@dataclass
class StreamTiming:
    """Accumulates the events of one streamed response; times are seconds after ``st``."""

    ttft: float | None = None
    ttft_content: float | None = None
    last: float | None = None
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    content_chunks: int = 0
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    done: bool = False
    error: str | None = None
    text_parts: list[str] = field(default_factory=list)

    def add(self, event: Event, at: float) -> None:
        """Account for one event that arrived ``at`` seconds after ``st``."""
        data = event.data.strip()
        if data == "[DONE]":
            self.done = True
            return
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"invalid JSON in stream: {data[:80]!r}"
            return
        if not isinstance(message, dict):
            self.error = f"unexpected stream message: {data[:80]!r}"
            return
        if event.event == "error" or "error" in message:
            error = message.get("error", message)
            detail = error.get("message", error) if isinstance(error, dict) else error
            self.error = f"error in stream: {str(detail)[:200]}"
            return
        usage = message.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                self.completion_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.prompt_tokens = usage["prompt_tokens"]
        choices = message.get("choices")
        if not choices:
            return
        if self.ttft is None:
            self.ttft = at
        elif self.last is not None:
            self.itl.append(at - self.last)
        self.last = at
        self.chunks += 1
        text = "".join(chunk_text(c) for c in choices if isinstance(c, dict))
        if text:
            self.content_chunks += 1
            self.text_parts.append(text)
            if self.ttft_content is None:
                self.ttft_content = at

    @property
    def text(self) -> str:
        return "".join(self.text_parts)
