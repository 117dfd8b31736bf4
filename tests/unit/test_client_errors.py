"""llf_client.errors and the error mapping, metrics parsing and helpers of client.py."""

from __future__ import annotations

import socket
import ssl

import httpx2
import openai
import pytest
import requests

from llf_client import errors
from llf_client.client import (
    GenParams,
    Reply,
    build_messages,
    estimate_tokens,
    queue_depth,
    status_error,
    translate_error,
)
from llf_client.config import Endpoint
from llf_client.errors import (
    AuthFailed,
    ConfigError,
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
from llf_client.metrics import MetricsParseError

EP = Endpoint("local", "http://127.0.0.1:8000/v1")
KEYED = Endpoint("lab", "https://lab:8443/v1", api_key="k")
WHERE = "local (http://127.0.0.1:8000/v1)"


# --- the error classes ----------------------------------------------------------------


def test_exit_codes_are_the_documented_ones() -> None:
    codes = {
        ConfigError: 2,
        ConnectionFailed: 3,
        ConnectionRefused: 3,
        UnknownHost: 3,
        TLSFailure: 3,
        AuthFailed: 4,
        RequestRejected: 5,
        ModelNotFound: 5,
        ContextLengthExceeded: 5,
        RequestTimeout: 6,
        ServerError: 7,
        RateLimited: 7,
        StreamBroken: 7,
    }
    for cls, code in codes.items():
        assert issubclass(cls, LLFError)
        assert cls.exit_code == code, cls
    table = errors.exit_code_table()
    for code, meaning in errors.EXIT_CODES:
        assert f"{code:>3}  {meaning}" in table
        assert str(code) in (errors.__doc__ or "")


def test_burstable_errors() -> None:
    burstable = {
        c.__name__
        for c in (
            ConnectionRefused,
            UnknownHost,
            TLSFailure,
            RequestTimeout,
            ServerError,
            RateLimited,
            ContextLengthExceeded,
        )
    }
    for cls in (
        ConfigError,
        AuthFailed,
        ModelNotFound,
        RequestRejected,
        StreamBroken,
        *[getattr(errors, n) for n in burstable],
    ):
        assert cls.burstable == (cls.__name__ in burstable), cls


def test_one_line_names_where_and_hint() -> None:
    err = ConnectionRefused("connection refused", where=WHERE)
    assert err.one_line() == (
        f"{WHERE}: connection refused "
        "(hint: nothing listens on that port: start the server or fix the URL)"
    )
    assert ServerError("a\nb   c", hint="").one_line() == "a b c"
    assert err.to_dict() == {
        "type": "ConnectionRefused",
        "exit_code": 3,
        "message": "connection refused",
        "hint": err.hint,
    }


# --- mapping HTTP statuses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "cls", "text"),
    [
        (401, "Unauthorized", AuthFailed, "HTTP 401: Unauthorized"),
        (403, "Forbidden", AuthFailed, "HTTP 403: Forbidden"),
        (
            404,
            "The model `x` does not exist.",
            ModelNotFound,
            "unknown model: The model `x` does not exist.",
        ),
        (404, "Not Found", RequestRejected, "HTTP 404: Not Found"),
        (
            400,
            "This model's maximum context length is 4096 tokens.",
            ContextLengthExceeded,
            "prompt too long: This model's maximum context length is 4096 tokens.",
        ),
        (400, "temperature must be >= 0", RequestRejected, "HTTP 400: temperature must be >= 0"),
        (429, "slow down", RateLimited, "HTTP 429: slow down"),
        (500, "", ServerError, "HTTP 500"),
        (503, "Service Unavailable", ServerError, "HTTP 503: Service Unavailable"),
    ],
)
def test_status_error(status: int, message: str, cls: type[LLFError], text: str) -> None:
    err = status_error(status, message, EP)
    assert type(err) is cls
    assert err.message == text
    assert err.where == WHERE


def test_401_hint_depends_on_whether_a_key_was_sent() -> None:
    assert "pass --api-key" in status_error(401, "", EP).hint
    assert "the key was refused" in status_error(401, "", KEYED).hint


# --- mapping SDK and requests exceptions ----------------------------------------------

REQUEST = httpx2.Request("POST", "http://127.0.0.1:8000/v1/chat/completions")


def sdk_connection_error(cause: BaseException) -> openai.APIConnectionError:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise httpx2.ConnectError(str(inner)) from inner
    except httpx2.ConnectError as outer:
        error = openai.APIConnectionError(request=REQUEST)
        error.__cause__ = outer
        return error


@pytest.mark.parametrize(
    ("cause", "cls", "text"),
    [
        (
            ConnectionRefusedError(111, "Connection refused"),
            ConnectionRefused,
            "connection refused",
        ),
        (
            socket.gaierror(-2, "Name or service not known"),
            UnknownHost,
            "unknown host 127.0.0.1 (Name or service not known)",
        ),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            TLSFailure,
            "TLS failure ([SSL: WRONG_VERSION_NUMBER] wrong version number)",
        ),
        (OSError("No route to host"), ConnectionFailed, "connection error (No route to host)"),
    ],
)
def test_sdk_connection_errors(cause: BaseException, cls: type[LLFError], text: str) -> None:
    err = translate_error(sdk_connection_error(cause), EP)
    assert type(err) is cls
    assert err is not None and err.message == text and err.where == WHERE


def test_requests_errors_nest_their_causes_in_args() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    wrapped = requests.ConnectionError(OSError("pool", refused))
    assert isinstance(translate_error(wrapped, EP), ConnectionRefused)
    assert isinstance(translate_error(requests.ConnectTimeout("slow"), EP), RequestTimeout)
    other = translate_error(requests.TooManyRedirects("loop"), EP)
    assert type(other) is ConnectionFailed and other.message == "request failed (loop)"


def test_sdk_status_timeout_and_stream_errors() -> None:
    response = httpx2.Response(404, request=REQUEST)
    body = {"message": "The model `nope` does not exist.", "type": "NotFoundError", "code": 404}
    err = translate_error(openai.NotFoundError("Error code: 404", response=response, body=body), EP)
    assert isinstance(err, ModelNotFound)
    nested = {"error": {"message": "overloaded"}}
    response = httpx2.Response(503, request=REQUEST)
    err = translate_error(openai.InternalServerError("x", response=response, body=nested), EP)
    assert isinstance(err, ServerError) and err.message == "HTTP 503: overloaded"
    err = translate_error(openai.APIStatusError("raw", response=response, body="text"), EP)
    assert err is not None and err.message == "HTTP 503: raw"
    err = translate_error(
        openai.APIStatusError("raw", response=response, body={"error": "flat"}), EP
    )
    assert err is not None and err.message == "HTTP 503: flat"

    err = translate_error(openai.APITimeoutError(request=REQUEST), EP, timeout=2.5)
    assert isinstance(err, RequestTimeout) and err.message == "no answer within 2.5 s"
    assert translate_error(openai.APITimeoutError(request=REQUEST), EP).message == (  # type: ignore[union-attr]
        "no answer in time"
    )
    err = translate_error(openai.APIError("engine died", REQUEST, body=None), EP)
    assert isinstance(err, ServerError)
    assert err.message == "the server reported an error: engine died"


def test_other_exceptions_are_not_translated() -> None:
    assert translate_error(ValueError("bug"), EP) is None
    own = ServerError("x")
    assert translate_error(own, EP) is own


# --- Prometheus metrics ---------------------------------------------------------------

METRICS = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smol"} 3.0
vllm:num_requests_waiting{engine="1",model_name="smol"} 2.0 1700000000000
vllm:num_requests_waiting{engine="0",model_name="other"} 7
vllm:num_requests_running{engine="0",model_name="smol"} 1.0
process_open_fds 12
"""


def test_queue_depth_sums_engines_of_the_model() -> None:
    assert queue_depth(METRICS) == 12.0
    assert queue_depth(METRICS, "smol") == 5.0
    assert queue_depth(METRICS, "absent") == 12.0  # no label matches: all of them
    assert queue_depth("process_open_fds 1\n") is None
    assert queue_depth("vllm:num_requests_waiting NaN\n") == 0.0


def test_queue_depth_of_text_that_is_not_prometheus() -> None:
    with pytest.raises(MetricsParseError, match="line 1 '<html>'"):
        queue_depth("<html>\n")


# --- small helpers --------------------------------------------------------------------


def test_estimate_tokens_rounds_up_a_third_of_the_length() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 2
    assert estimate_tokens("x" * 300) == 100


def test_build_messages() -> None:
    assert build_messages("q") == [{"role": "user", "content": "q"}]
    assert build_messages("q", "s")[0] == {"role": "system", "content": "s"}


def test_tokens_per_s() -> None:
    streamed = Reply("a", EP, "m", total_s=1.1, ttft_s=0.1, completion_tokens=11)
    assert streamed.tokens_per_s == pytest.approx(10.0)
    whole = Reply("a", EP, "m", total_s=2.0, completion_tokens=10)
    assert whole.tokens_per_s == pytest.approx(5.0)
    assert Reply("", EP, "m", total_s=1.0).tokens_per_s is None
    assert Reply("", EP, "m", total_s=0.0, completion_tokens=3).tokens_per_s is None
    data = streamed.to_dict()
    assert data["endpoint"] == "local" and data["base_url"] == EP.base_url
    assert GenParams().temperature is None
