"""Errors of llf-client, each with the exit code the CLI returns for it.

Every error is an `LLFError`. The CLI prints it as one line on stderr that names the
endpoint (or the file) it is about and ends with a hint, and exits with its code:

    code  meaning
    ----  -------------------------------------------------------------------------
       0  ok
       1  a check failed (smoke, health)
       2  usage or configuration error (bad option, endpoints file, inventory)
       3  connection error: connection refused, unknown host, TLS failure
       4  authentication: the server answered 401 or 403
       5  model or request rejected: unknown model, prompt over the context length,
          any other 4xx
       6  timeout: no answer (or no first token) in time
       7  server error: 5xx, 429, or an error in the middle of a streamed reply
     130  interrupted (Ctrl-C)

`burstable` marks the errors after which a request may move on to the next endpoint,
as long as nothing of the reply has been shown yet.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_AUTH = 4
EXIT_REJECTED = 5
EXIT_TIMEOUT = 6
EXIT_SERVER = 7
EXIT_INTERRUPTED = 130

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "ok"),
    (EXIT_CHECK_FAILED, "a check failed (smoke, health)"),
    (EXIT_USAGE, "usage or configuration error"),
    (EXIT_CONNECTION, "connection error: refused, unknown host, TLS failure"),
    (EXIT_AUTH, "authentication failed (401/403)"),
    (EXIT_REJECTED, "model or request rejected: unknown model, prompt too long, 4xx"),
    (EXIT_TIMEOUT, "timeout (no answer or no first token in time)"),
    (EXIT_SERVER, "server error: 5xx, 429, error in the middle of a stream"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


def exit_code_table() -> str:
    """The exit codes as aligned text (for `--help`)."""
    return "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)


class LLFError(Exception):
    """Base class: a failure the CLI reports as one line and an exit code."""

    exit_code: ClassVar[int] = EXIT_CHECK_FAILED
    default_hint: ClassVar[str] = ""
    burstable: ClassVar[bool] = False

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = self.default_hint if hint is None else hint

    @property
    def kind(self) -> str:
        return type(self).__name__

    def one_line(self) -> str:
        """The message the CLI prints: where, what, and a hint."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        text = " ".join(text.split())  # one line, whatever the server sent
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "type": self.kind,
            "exit_code": self.exit_code,
            "message": self.message,
            "hint": self.hint,
        }


class ConfigError(LLFError):
    """Bad options, endpoints file or inventory."""

    exit_code = EXIT_USAGE
    default_hint = "see llf-client --help"


class ConnectionFailed(LLFError):
    """The server could not be reached."""

    exit_code = EXIT_CONNECTION
    default_hint = "is the server running there? check the URL (llf-client health)"
    burstable = True


class ConnectionRefused(ConnectionFailed):
    default_hint = "nothing listens on that port: start the server or fix the URL"


class UnknownHost(ConnectionFailed):
    default_hint = "the host name does not resolve: check the URL or the inventory"


class TLSFailure(ConnectionFailed):
    default_hint = (
        "check that the scheme matches the server (http:// or https://) and that "
        "its certificate is trusted"
    )


class AuthFailed(LLFError):
    """The server refused the API key (401) or the access (403)."""

    exit_code = EXIT_AUTH
    default_hint = "pass the server's key with --api-key or LLF_API_KEY"


class RequestRejected(LLFError):
    """The server rejected the request (4xx other than 401/403/429)."""

    exit_code = EXIT_REJECTED
    default_hint = "check the request options"


class ModelNotFound(RequestRejected):
    default_hint = "list the served models with: llf-client models"


class ContextLengthExceeded(RequestRejected):
    default_hint = "shorten the prompt or lower --max-tokens, or burst to a larger model"
    burstable = True


class RequestTimeout(LLFError):
    exit_code = EXIT_TIMEOUT
    default_hint = "the server is busy or stalled: raise --timeout/--first-token-timeout"
    burstable = True


class ServerError(LLFError):
    """5xx, or an error the server reported in a stream."""

    exit_code = EXIT_SERVER
    default_hint = "see the server's log (journalctl -u on the host)"
    burstable = True


class RateLimited(ServerError):
    default_hint = "the server is overloaded (429): retry later or add a burst endpoint"


class StreamBroken(ServerError):
    """The reply broke off after tokens were shown: never re-sent elsewhere."""

    default_hint = "the reply above is incomplete; ask again"
    burstable = False
