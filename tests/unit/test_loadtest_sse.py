"""SSE parsing and the per-request timing of a stream (LOADTEST.md definitions)."""

from __future__ import annotations

import json

import pytest

from loadtests.sse import Event, SSEParser, StreamTiming, chunk_text


def feed_all(parser: SSEParser, pieces: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_parser_line_endings(eol: bytes) -> None:
    body = b"data: one" + eol + eol + b"data: two" + eol + eol
    assert [e.data for e in SSEParser().feed(body)] == ["one", "two"]


def test_parser_events_split_across_reads_at_every_byte() -> None:
    body = b'data: {"a": 1}\r\n\r\n: comment\r\ndata: [DONE]\r\n\r\n'
    parser = SSEParser()
    events = feed_all(parser, [body[i : i + 1] for i in range(len(body))])
    assert [e.data for e in events] == ['{"a": 1}', "[DONE]"]


def test_parser_utf8_split_inside_a_character() -> None:
    body = "data: caf\u00e9 \u2603\n\n".encode()
    cut = body.index(b"\xc3") + 1
    assert [e.data for e in feed_all(SSEParser(), [body[:cut], body[cut:]])] == ["caf\u00e9 \u2603"]


def test_parser_multiline_data_event_field_and_comments() -> None:
    body = b": keep-alive\nevent: error\ndata: line1\ndata:line2\nid: 7\n\n"
    assert SSEParser().feed(body) == [Event(data="line1\nline2", event="error")]


def test_parser_needs_the_blank_line_to_dispatch() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: pending\n") == []
    assert parser.feed(b"\n") == [Event("pending")]
    assert parser.feed(b"\n\n") == []  # blank lines alone dispatch nothing


def chat(delta: dict[str, object]) -> Event:
    return Event(json.dumps({"choices": [{"index": 0, "delta": delta}]}))


def test_timing_role_chunk_counts_for_ttft_not_for_content() -> None:
    t = StreamTiming()
    t.add(chat({"role": "assistant", "content": ""}), 0.100)
    t.add(chat({"content": "Hel"}), 0.130)
    t.add(chat({"content": "lo"}), 0.180)
    t.add(Event(json.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})), 0.2)
    t.add(Event("[DONE]"), 0.25)
    assert t.ttft == 0.100
    assert t.ttft_content == 0.130
    assert t.last == 0.180  # E2EL: the last chunk with choices, not the usage chunk or [DONE]
    assert t.itl == pytest.approx([0.030, 0.050])
    assert (t.chunks, t.content_chunks) == (3, 2)
    assert (t.completion_tokens, t.prompt_tokens) == (2, 9)
    assert t.done and t.error is None
    assert t.text == "Hello"


def test_timing_completions_text_and_reasoning_and_tool_calls() -> None:
    t = StreamTiming()
    t.add(Event(json.dumps({"choices": [{"text": " a"}]})), 0.05)
    assert t.ttft == t.ttft_content == 0.05
    assert chunk_text({"delta": {"reasoning_content": "think"}}) == "think"
    assert chunk_text({"delta": {"reasoning": "r"}}) == "r"
    call = {"delta": {"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}
    assert chunk_text(call) == "f{}"
    assert chunk_text({"delta": {"tool_calls": ["junk"]}}) == ""
    assert chunk_text({"delta": None}) == ""


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (Event('{"error": {"message": "boom"}}'), "error in stream: boom"),
        (Event('{"message": "x"}', event="error"), "error in stream: x"),
        (Event("{not json"), "invalid JSON in stream: '{not json'"),
        (Event("[1, 2]"), "unexpected stream message: '[1, 2]'"),
    ],
)
def test_timing_errors(event: Event, message: str) -> None:
    t = StreamTiming()
    t.add(event, 0.1)
    assert t.error == message
    assert t.ttft is None
