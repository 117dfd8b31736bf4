"""The `llf-client` command: parses options, calls client.py, prints.

Errors arrive as LLFError and leave as one line on stderr plus an exit code (see
errors.py); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from . import __version__, top
from .client import (
    DEFAULT_TIMEOUT,
    Embeddings,
    EndpointClient,
    GenParams,
    Message,
    Reply,
    Router,
    build_messages,
    probe,
    smoke,
)
from .config import (
    DEFAULT_BASE_URL,
    Endpoint,
    history_path,
    load_inventory,
    resolve_endpoints,
)
from .errors import EXIT_CHECK_FAILED, EXIT_INTERRUPTED, ConfigError, LLFError, exit_code_table

PROG = "llf-client"
DEFAULT_MAX_TOKENS = 512  # ask and chat, unless --max-tokens: a small model can ramble for minutes

EPILOG = f"""\
endpoints, first match wins:
  --url, or --endpoints FILE / --endpoint NAME, or LLF_BASE_URL (OPENAI_BASE_URL),
  or the file the deploy writes: $LLF_CONFIG, else
  ${{XDG_CONFIG_HOME:-~/.config}}/llf/endpoints.yml, or {DEFAULT_BASE_URL}.
  API key: --api-key, the entry's api_key, LLF_API_KEY (OPENAI_API_KEY).
  Model: --model (LLF_MODEL), the entry's model, else the first the server lists.
  Kind: ask and chat use the file's chat entries, embed its embedding entries, those
  serving --model (else the first entry's model); models, health, smoke, top use all.

bursting: endpoints are tried in order (the local server first); a request moves on
  when one is unreachable, times out before the first token, answers 429/5xx, cannot
  fit the prompt, or has more requests waiting than --burst-queue-threshold.

exit codes:
{exit_code_table()}
"""

CHAT_HELP = """\
commands:
  /help          this help
  /clear         forget the conversation (the system prompt stays)
  /model NAME    ask another model (/model alone shows the current one)
  /system TEXT   set the system prompt (/system alone shows it, /system - removes it)
  /info          endpoints, model, system prompt, the last reply
  exit, quit     leave (Ctrl-D too); Ctrl-C stops a reply, not the session"""


# --- argument parsing ---------------------------------------------------------------


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _common_options() -> argparse.ArgumentParser:
    """Options accepted before or after the command (defaults applied in _opt)."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("endpoint options")
    group.add_argument("--url", help="OpenAI base URL (env LLF_BASE_URL, OPENAI_BASE_URL)")
    group.add_argument("--api-key", help="API key (env LLF_API_KEY, OPENAI_API_KEY)")
    group.add_argument("--model", help="model name (env LLF_MODEL; default: first listed)")
    group.add_argument(
        "--endpoints", metavar="FILE", help="endpoints file (default: the deploy's, see below)"
    )
    group.add_argument("--endpoint", metavar="NAME", help="use only this entry of the file")
    group.add_argument(
        "--timeout",
        type=_positive,
        metavar="S",
        help=f"seconds to wait for the server (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--first-token-timeout",
        type=_positive,
        metavar="S",
        help="seconds to wait for the first token of a stream, then burst "
        "(also the longest pause allowed between tokens; default: --timeout)",
    )
    group.add_argument(
        "--max-retries",
        type=_count,
        metavar="N",
        help="retries per request on the same endpoint (default 0: burst instead)",
    )
    group.add_argument("--no-burst", action="store_true", help="use only the first endpoint")
    group.add_argument(
        "--burst-queue-threshold",
        type=_non_negative,
        metavar="N",
        help="move on when more than N requests wait on an endpoint (vLLM /metrics)",
    )
    group.add_argument("--debug", action="store_true", help="tracebacks and details")
    return common


def _generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation options")
    group.add_argument("--system", help="system prompt")
    group.add_argument("--temperature", type=float)
    group.add_argument(
        "--max-tokens",
        type=_count,
        metavar="N",
        help=f"longest answer in tokens (default {DEFAULT_MAX_TOKENS}, or the room left in the context)",
    )
    group.add_argument("--top-p", type=float)
    group.add_argument("--seed", type=int)


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask, chat with, list, check and smoke-test LLF's vLLM servers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, run: Callable[[argparse.Namespace], int]) -> Any:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=run)
        return sub

    ask = command("ask", "ask one question; the answer streams as it comes", cmd_ask)
    ask.add_argument("prompt", nargs="?", help="the question; '-' or absent: read stdin")
    ask.add_argument("--no-stream", action="store_true", help="print the answer when complete")
    ask.add_argument("--json", action="store_true", help="print one JSON object with timings")
    _generation_options(ask)

    chat = command("chat", "interactive chat that keeps the conversation", cmd_chat)
    _generation_options(chat)

    embed = command(
        "embed",
        "embeddings of texts from an embedding endpoint: dimension and first numbers, "
        "and with 2+ texts their cosine similarities",
        cmd_embed,
    )
    embed.add_argument("texts", nargs="+", metavar="TEXT", help="a text to embed ('-': read stdin)")
    embed.add_argument("--json", action="store_true", help="print the vectors as JSON")

    models = command("models", "the models of each endpoint, with kind and context length", cmd_models)
    models.add_argument("--json", action="store_true")

    health = command("health", "health, version, models and latency of each endpoint", cmd_health)
    health.add_argument("--json", action="store_true")

    check = command(
        "smoke", "smoke-test one endpoint, the endpoints file, or an inventory", cmd_smoke
    )
    check.add_argument(
        "--inventory", metavar="DIR", help="test every host of group llf_servers in DIR"
    )
    check.add_argument(
        "--expect", default="Paris", help="text the answer must contain (default Paris)"
    )
    check.add_argument(
        "--ttft-target-ms",
        type=_positive,
        default=2000.0,
        metavar="MS",
        help="time-to-first-token target (default 2000)",
    )
    check.add_argument("--json", action="store_true")
    top_cmd = command(
        "top",
        "live view of every endpoint from its /metrics: requests, KV cache, TTFT, ITL, "
        f"tokens/s (--timeout defaults to {top.READ_TIMEOUT:g} s here)",
        cmd_top,
    )
    top_cmd.add_argument(
        "--interval",
        type=_positive,
        default=top.DEFAULT_INTERVAL,
        metavar="S",
        help=f"seconds between refreshes (default {top.DEFAULT_INTERVAL:g}); with --once, "
        "between the two readings",
    )
    top_cmd.add_argument(
        "--window",
        type=_positive,
        default=top.DEFAULT_WINDOW,
        metavar="S",
        help=f"latencies over the last S seconds (default {top.DEFAULT_WINDOW:g})",
    )
    top_cmd.add_argument(
        "--once", action="store_true", help="read twice --interval apart, print once, exit"
    )
    top_cmd.add_argument(
        "--json", action="store_true", help="print one JSON snapshot (implies --once)"
    )
    return parser


def _opt(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


# --- shared helpers -----------------------------------------------------------------


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _report(err: LLFError, debug: bool) -> None:
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    _err(f"{PROG}: error: {err.one_line()}")


def _endpoints(
    args: argparse.Namespace, kind: str | None = None, model: str | None = None
) -> list[Endpoint]:
    return resolve_endpoints(
        url=_opt(args, "url"),
        api_key=_opt(args, "api_key"),
        model=model or _opt(args, "model"),
        endpoints_file=_opt(args, "endpoints"),
        endpoint_name=_opt(args, "endpoint"),
        queue_threshold=_opt(args, "burst_queue_threshold"),
        kind=kind,
    )


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "timeout": _opt(args, "timeout", DEFAULT_TIMEOUT),
        "first_token_timeout": _opt(args, "first_token_timeout"),
        "max_retries": _opt(args, "max_retries", 0),
    }


def _router(args: argparse.Namespace, kind: str = "chat") -> Router:
    return Router(
        _endpoints(args, kind),
        burst=not _opt(args, "no_burst", False),
        notify=_err,
        **_client_options(args),
    )


def _params(args: argparse.Namespace) -> GenParams:
    return GenParams(
        system=_opt(args, "system"),
        temperature=_opt(args, "temperature"),
        max_tokens=_opt(args, "max_tokens"),
        top_p=_opt(args, "top_p"),
        seed=_opt(args, "seed"),
        default_max_tokens=DEFAULT_MAX_TOKENS,
    )


def _write(out: TextIO) -> Callable[[str], None]:
    def write(text: str) -> None:
        out.write(text)
        out.flush()

    return write


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _served_by(reply: Reply) -> str:
    return f"[served by {reply.endpoint.label}]"


# --- commands -----------------------------------------------------------------------


def cmd_ask(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            raise ConfigError(
                "no prompt", hint='give one: llf-client ask "...", or pipe it on stdin'
            )
        prompt = sys.stdin.read().strip()  # not the newline echo or a here-doc ends with
    if not prompt.strip():
        raise ConfigError("the prompt is empty", hint="give a question")
    router = _router(args)
    params = _params(args)
    as_json = args.json
    write = _write(sys.stdout)
    shown = False

    def on_token(token: str) -> None:
        nonlocal shown
        shown = True
        write(token)

    try:
        reply = router.ask(
            build_messages(prompt, params.system),
            params,
            stream=not args.no_stream,
            on_token=None if as_json else on_token,
        )
    except LLFError:
        if shown:
            print(flush=True)  # end the partial answer before the error line
        raise
    if as_json:
        print(json.dumps(reply.to_dict(), ensure_ascii=False))
    else:
        if not reply.answer.endswith("\n"):
            print(flush=True)
        _err(_served_by(reply))
    return 0


class ChatSession:
    """The state of `llf-client chat`: the conversation and the options."""

    def __init__(
        self,
        router: Router,
        params: GenParams,
        debug: bool = False,
        endpoints_for: Callable[[str], list[Endpoint]] | None = None,
    ):
        self.router = router
        self.params = params
        self.debug = debug
        self.endpoints_for = endpoints_for  # the chat endpoints serving a model
        self.messages: list[Message] = []
        self.last: Reply | None = None

    def request_messages(self) -> list[Message]:
        system = [{"role": "system", "content": self.params.system}] if self.params.system else []
        return [*system, *self.messages]

    def turn(self, text: str) -> None:
        """Send one user message and stream the reply."""
        self.messages.append({"role": "user", "content": text})
        shown: list[str] = []
        write = _write(sys.stdout)

        def on_token(token: str) -> None:
            shown.append(token)
            write(token)

        try:
            reply = self.router.ask(self.request_messages(), self.params, on_token=on_token)
        except KeyboardInterrupt:
            print(flush=True)
            _err("[reply stopped]")
            self._keep_partial("".join(shown))
            return
        except LLFError as err:
            if shown:
                print(flush=True)
            _report(err, self.debug)
            self.messages.pop()
            return
        if not reply.answer.endswith("\n"):
            print(flush=True)
        _err(_served_by(reply))
        self.messages.append({"role": "assistant", "content": reply.answer})
        self.last = reply

    def _keep_partial(self, partial: str) -> None:
        if partial:
            self.messages.append({"role": "assistant", "content": partial})
        else:
            self.messages.pop()

    def command(self, line: str) -> None:
        """Run a /command."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name == "/help":
            print(CHAT_HELP)
        elif name == "/clear":
            self.messages.clear()
            print("conversation cleared")
        elif name == "/model":
            if rest:
                try:
                    endpoints = self.endpoints_for(rest) if self.endpoints_for else self.router.endpoints
                except LLFError as err:
                    _report(err, self.debug)
                    return
                self.router.endpoints = endpoints if self.router.burst else endpoints[:1]
                self.router.model_override = rest
            print(f"model: {self._model()}")
        elif name == "/system":
            if rest:
                self.params = replace(self.params, system=None if rest == "-" else rest)
            print(f"system prompt: {self.params.system or '(none)'}")
        elif name == "/info":
            self.info()
        else:
            print(f"unknown command {name}; /help lists them")

    def _model(self) -> str:
        if self.router.model_override:
            return self.router.model_override
        try:
            return self.router.model_for(self.router.endpoints[0])
        except LLFError as err:
            return f"(unknown: {err.message})"

    def info(self) -> None:
        endpoints = ", ".join(e.label for e in self.router.endpoints)
        print(f"endpoints: {endpoints}{'' if self.router.burst else ' (no burst)'}")
        print(f"model: {self._model()}")
        print(f"system prompt: {self.params.system or '(none)'}")
        print(f"messages: {len(self.messages)}")
        if self.last:
            data = self.last.to_dict()
            speed = data["tokens_per_s"]
            print(
                f"last reply: served by {self.last.endpoint.label}, model {self.last.model}, "
                f"TTFT {data['ttft_s']} s, {data['completion_tokens']} tokens, "
                f"{'-' if speed is None else f'{speed:.1f}'} tokens/s"
            )


def _readline_history(path: Path) -> Callable[[], None]:
    """Line editing and history for input(); returns the function that saves it."""
    try:
        import readline
    except ImportError:  # pragma: no cover - not on every platform
        return lambda: None
    try:
        readline.read_history_file(path)
    except OSError:
        pass  # no history yet
    readline.set_history_length(1000)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
            path.chmod(0o600)  # prompts can be private
        except OSError as err:
            _err(f"{PROG}: chat history not saved to {path}: {err.strerror or err}")

    return save


def cmd_chat(args: argparse.Namespace) -> int:
    router = _router(args)
    session = ChatSession(
        router,
        _params(args),
        debug=_opt(args, "debug", False),
        endpoints_for=lambda model: _endpoints(args, "chat", model),
    )
    save_history = _readline_history(history_path())
    first = router.endpoints[0]
    more = len(router.endpoints) - 1
    _err(
        f"llf-client chat: {first.label}{f' (+{more} to burst to)' if more else ''}. "
        "/help for commands; exit or Ctrl-D to leave."
    )
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                print()
                break
            except KeyboardInterrupt:
                print()
                _err("(exit or Ctrl-D to leave)")
                continue
            line = line.strip()
            if not line:
                continue
            if line in ("exit", "quit", "/exit", "/quit"):
                break
            if line.startswith("/"):
                session.command(line)
            else:
                session.turn(line)
    finally:
        save_history()
    return 0


def _probe_all(args: argparse.Namespace) -> list[Any]:
    options = _client_options(args)
    return [probe(EndpointClient(e, **options)) for e in _endpoints(args)]


def _probe_exit(infos: Sequence[Any], debug: bool) -> int:
    failed = [i for i in infos if not i.ok]
    for info in failed:
        _report(info.error, debug)
    return failed[0].error.exit_code if failed else 0


def _read_texts(texts: Sequence[str]) -> list[str]:
    read = [sys.stdin.read().strip() if t == "-" else t for t in texts]
    if any(not t.strip() for t in read):
        raise ConfigError("a text is empty", hint="give non-empty texts to embed")
    return read


def _numbers(vector: Sequence[float], count: int = 4) -> str:
    head = ", ".join(f"{x:.4f}" for x in vector[:count])
    return f"[{head}{', ...' if len(vector) > count else ''}]"


def cmd_embed(args: argparse.Namespace) -> int:
    texts = _read_texts(args.texts)
    result: Embeddings = _router(args, "embedding").embed(texts)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    width = len(str(len(texts)))
    for index, (text, vector) in enumerate(zip(texts, result.vectors, strict=True), start=1):
        short = text if len(text) <= 40 else text[:37] + "..."
        print(f"{index:>{width}}  {len(vector)} dimensions  {_numbers(vector)}  {short!r}")
    if len(texts) > 1:
        print()
        print("cosine similarity")
        labels = [str(i) for i in range(1, len(texts) + 1)]
        rows = [[labels[i], *(f"{x:.4f}" for x in row)] for i, row in enumerate(result.similarities())]
        print(_table(["", *labels], rows))
    _err(f"[{result.model}, served by {result.endpoint.label}]")
    return 0


def _by_url(endpoints: Sequence[Endpoint]) -> list[list[Endpoint]]:
    """Entries grouped by server (the gateway's entries share one URL), in order."""
    groups: dict[tuple[str, str | None], list[Endpoint]] = {}
    for e in endpoints:
        groups.setdefault((e.base_url, e.api_key), []).append(e)
    return list(groups.values())


def _model_rows(entries: Sequence[Endpoint], info: Any) -> list[dict[str, Any]]:
    """One row per model the server lists: the entry that names it, its kind (None: unknown)."""
    rows = []
    for m in info.models:
        entry = next((e for e in entries if e.model == m.id), None)
        rows.append(
            {
                "endpoint": (entry or entries[0]).name,
                "id": m.id,
                "kind": entry.kind if entry else None,
                "max_model_len": m.max_model_len,
            }
        )
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    options = _client_options(args)
    groups = _by_url(_endpoints(args))
    infos = [probe(EndpointClient(entries[0], **options)) for entries in groups]
    if args.json:
        document = {
            "endpoints": [
                {**info.to_dict(), "models": _model_rows(entries, info)}
                for entries, info in zip(groups, infos, strict=True)
            ]
        }
        print(json.dumps(document, ensure_ascii=False))
    else:
        rows: list[list[object]] = []
        for entries, info in zip(groups, infos, strict=True):
            if info.error:
                rows.append(
                    [
                        info.endpoint.name,
                        info.endpoint.base_url,
                        "(unreachable)" if info.health_status is None else "(error)",
                        None,
                        None,
                    ]
                )
            rows += [
                [r["endpoint"], info.endpoint.base_url, r["id"], r["kind"], r["max_model_len"]]
                for r in _model_rows(entries, info)
            ]
        print(_table(["ENDPOINT", "URL", "MODEL", "KIND", "CONTEXT"], rows))
    return _probe_exit(infos, _opt(args, "debug", False))


def cmd_health(args: argparse.Namespace) -> int:
    infos = _probe_all(args)
    if args.json:
        document = {"ok": all(i.ok for i in infos), "endpoints": [i.to_dict() for i in infos]}
        print(json.dumps(document, ensure_ascii=False))
    else:
        rows = []
        for info in infos:
            status = "ok" if info.ok else (info.error.kind if info.error else "unhealthy")
            models = ", ".join(f"{m.id} ({m.max_model_len})" for m in info.models)
            latency = None if info.latency_s is None else f"{info.latency_s * 1000:.0f} ms"
            rows.append(
                [
                    info.endpoint.name,
                    info.endpoint.base_url,
                    status,
                    info.health_status,
                    info.version,
                    models or None,
                    latency,
                ]
            )
        print(
            _table(
                ["ENDPOINT", "URL", "STATUS", "HEALTH", "VERSION", "MODELS (CONTEXT)", "LATENCY"],
                rows,
            )
        )
    return _probe_exit(infos, _opt(args, "debug", False))


def cmd_smoke(args: argparse.Namespace) -> int:
    notes: list[str] = []
    if args.inventory:
        if any(_opt(args, o) for o in ("url", "endpoints", "endpoint")):
            raise ConfigError(
                "--inventory cannot be combined with --url/--endpoints/--endpoint",
                hint="choose the servers one way",
            )
        key = (
            _opt(args, "api_key")
            or os.environ.get("LLF_API_KEY")
            or os.environ.get("OPENAI_API_KEY")
        )
        inventory = load_inventory(args.inventory, api_key=key)
        model = _opt(args, "model") or os.environ.get("LLF_MODEL")
        endpoints = [replace(e, model=model or e.model) for e in inventory.endpoints]
        notes = inventory.notes
        for note in notes:
            _err(f"{PROG}: {note}")
    else:
        endpoints = _endpoints(args)
    options = _client_options(args)
    results = [
        (
            e,
            smoke(
                EndpointClient(e, **options), expect=args.expect, ttft_target_ms=args.ttft_target_ms
            ),
        )
        for e in endpoints
    ]
    failed = sum(c.failed for _, checks in results for c in checks)
    if args.json:
        document = {
            "ok": failed == 0,
            "expect": args.expect,
            "ttft_target_ms": args.ttft_target_ms,
            "notes": notes,
            "endpoints": [
                {
                    "endpoint": e.name,
                    "base_url": e.base_url,
                    "ok": not any(c.failed for c in checks),
                    "checks": [c.to_dict() for c in checks],
                }
                for e, checks in results
            ],
        }
        print(json.dumps(document, ensure_ascii=False))
    else:
        rows = [
            [
                e.name,
                c.name,
                c.status.upper(),
                None if c.elapsed_s is None else f"{c.elapsed_s * 1000:.0f} ms",
                c.detail,
            ]
            for e, checks in results
            for c in checks
        ]
        print(_table(["ENDPOINT", "CHECK", "RESULT", "TIME", "DETAIL"], rows))
        total = sum(len(checks) for _, checks in results)
        verdict = "all passed" if not failed else f"{failed} failed"
        print(f"smoke: {len(results)} endpoint(s), {total} checks, {verdict}")
    return EXIT_CHECK_FAILED if failed else 0


def cmd_top(args: argparse.Namespace) -> int:
    timeout = _opt(args, "timeout", top.READ_TIMEOUT)
    watches = [
        top.Watch(EndpointClient(e, timeout=timeout), window=args.window) for e in _endpoints(args)
    ]
    if args.once or args.json:
        document = top.once(watches, args.interval, args.window)
        if args.json:
            print(json.dumps(document, ensure_ascii=False))
        else:
            top.print_view(document)
        failed = [w.readings[-1].error for w in watches if w.readings[-1].error is not None]
        for err in failed:
            _report(err, _opt(args, "debug", False))
        return failed[0].exit_code if failed else 0
    try:
        top.run_live(watches, args.interval, args.window)
    except KeyboardInterrupt:
        pass  # Ctrl-C leaves top like q does
    return 0


# --- entry point --------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    debug = _opt(args, "debug", False)
    try:
        code: int = args.run(args)
    except LLFError as err:
        _report(err, debug)
        return err.exit_code
    except KeyboardInterrupt:
        print(flush=True)
        _err(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    return code
