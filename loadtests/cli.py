"""``python -m loadtests run``: resolve the defaults, run Locust headless, exit with the verdict
(``python -m loadtests bench``: see bench.py).

Exit codes: 0 every target met, 1 a target missed, 2 usage or configuration error,
3 invalid (the load generator was the bottleneck) or inconclusive (too few samples).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from loadtests import EXIT_INVALID, EXIT_MEANINGS, EXIT_USAGE
from loadtests.config import (
    API_KEY_ENV,
    CONFIG_ENV,
    DEFAULT_HOST,
    SHAPES,
    RunConfig,
    file_endpoints,
    find_models,
    parse_duration,
    root_url,
)
from loadtests.errors import LoadtestError, NoResultError, UsageError
from loadtests.plan import build_plan
from loadtests.scenarios import DEFAULT_EMBED_TOKENS, SCENARIOS, has_chat, has_embeddings
from loadtests.slo import load_slo

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
DEFAULT_SLO = HERE / "slo.yaml"
DEFAULT_RESULTS = HERE / "results"
PROGRESS = "[loadtest]"
STREAMS_PER_PROCESS = 100  # LOADTEST.md trap 4: 50-100 streams per generator core
DEFAULT_USERS = {"closed": 4, "open": 64, "step": 16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests",
        description="Load-test an OpenAI-compatible LLM server against SLO targets.",
        epilog="Exit codes: " + ", ".join(f"{k} {v}" for k, v in EXIT_MEANINGS.items()),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a load test and judge it against an SLO file")
    run.add_argument(
        "--host",
        help="server root or OpenAI base URL (default: $LLF_BASE_URL, $OPENAI_BASE_URL, "
        f"the first chat entry of the endpoints file (serving --model), else {DEFAULT_HOST})",
    )
    run.add_argument("--api-key", help="API key (default: $LLF_API_KEY, $OPENAI_API_KEY, endpoints file)")
    run.add_argument(
        "--model",
        help="chat model (default: endpoints file, else the first chat model of /v1/models); "
        "scenario embeddings: the embedding model",
    )
    run.add_argument(
        "--embed-model",
        help="embedding model of the scenarios embeddings and rag (default: the endpoints file's "
        "kind: embedding entry, else the first model of /v1/models that answers /v1/embeddings)",
    )
    run.add_argument(
        "--embed-tokens",
        type=int,
        default=DEFAULT_EMBED_TOKENS,
        help=f"tokens per /v1/embeddings input, +-10 %% (default {DEFAULT_EMBED_TOKENS})",
    )
    run.add_argument(
        "--ca-cert",
        metavar="PEM",
        help="CA certificate to trust for https, on every request (default: $LLF_CA_CERT, the endpoints "
        "file's ca_cert for its server, $REQUESTS_CA_BUNDLE)",
    )
    run.add_argument("--scenario", choices=sorted(SCENARIOS), default="short")
    run.add_argument(
        "--shape",
        choices=SHAPES,
        help="closed: N users back to back; open: arrivals at --rate; step: rising "
        "concurrency up to --users (default: open with --rate, else closed)",
    )
    run.add_argument(
        "--users",
        type=int,
        help="closed: concurrency (4); open: most requests in flight (64); step: top step (16)",
    )
    run.add_argument("--rate", type=float, help="open loop: requests per second (Poisson/Gamma)")
    run.add_argument("--burstiness", type=float, default=1.0, help="Gamma shape of the arrivals; 1 is Poisson")
    run.add_argument("--duration", default="2m", help="measured time, e.g. 90s, 2m (default 2m)")
    run.add_argument("--warmup", default="10s", help="warm-up before measuring (default 10s; 0 for none)")
    run.add_argument("--step-users", help="step shape: comma-separated concurrency steps (default 1,2,4,...)")
    run.add_argument("--slo", default=str(DEFAULT_SLO), help="SLO file (default loadtests/slo.yaml)")
    run.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Locust worker processes under one master (0: one process)",
    )
    run.add_argument("--out", help="results folder (default loadtests/results/<UTC timestamp>)")
    run.add_argument("--seed", type=int, help="prompt and arrival seed (default: random, recorded)")
    run.add_argument("--request-timeout", default="120s", help="bound on one request (default 120s)")
    run.add_argument("--max-requests", type=int, default=100_000, help="bound on requests per process")
    run.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        metavar="URL",
        help="a server whose /metrics gives the server-side figures (repeat for each server "
        "behind a gateway: their figures are summed; default: the --host)",
    )
    run.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="let the model stop early (default: exactly max_tokens out, vLLM's ignore_eos)",
    )
    from loadtests import bench

    bench.add_parser(sub)
    return parser


def resolve_endpoint(
    host: str | None,
    api_key: str | None,
    model: str | None,
    env: dict[str, str],
    ca_cert: str | None = None,
    kind: str = "chat",
) -> tuple[str, str | None, str | None, str | None]:
    """Host, key, model and CA file from the options, the environment, the endpoints file.

    Without a host, the file's first entry of ``kind`` serving ``model`` (else its first
    entry of ``kind``) is the target. An entry's key, model and ``ca_cert`` belong to its
    own server only.
    """
    entries = file_endpoints(env, kind)
    host = host or env.get("LLF_BASE_URL") or env.get("OPENAI_BASE_URL")
    root = root_url(host) if host else None
    candidates = [e for e in entries if root is None or root_url(e.base_url) == root]
    entry = next((e for e in candidates if model and e.model == model), None) or next(
        (e for e in candidates if not model or e.model is None), None
    )
    if entry is None and root is None and candidates:
        entry = candidates[0]  # --model names a model the file does not: its first server
    if root is None:
        root = root_url(entry.base_url if entry is not None else DEFAULT_HOST)
    api_key = api_key or env.get("LLF_API_KEY") or env.get("OPENAI_API_KEY")
    if entry is not None:
        api_key = api_key or entry.api_key
        model = model or entry.model
    ca_cert = ca_cert or env.get("LLF_CA_CERT") or (entry.ca_cert if entry else None) or env.get("REQUESTS_CA_BUNDLE")
    return root, api_key, model, ca_cert or None


def resolve_models(
    args: argparse.Namespace, env: dict[str, str]
) -> tuple[str, str | None, str, str | None, str | None]:
    """Host, key, chat model, embedding model and CA file of the run.

    Scenario embeddings sends to one model: ``--embed-model``, else ``--model``, else the
    endpoints file's ``kind: embedding`` entry (which, without ``--host``, also gives the
    URL, key and ``ca_cert``; a file without such entries gives only its chat server's),
    else the first model of /v1/models that answers /v1/embeddings. Scenario rag needs
    both: the chat model as for a chat scenario, and ``--embed-model``, else the model of
    the file's ``kind: embedding`` entry at the same server, else found the same way.
    Chat scenarios take ``--model``, the file's chat entry, else the first model that
    does not answer /v1/embeddings (no probe when the server lists a single model).
    Every request, the probes too, trusts the CA file.
    """
    chat, embed = has_chat(args.scenario), has_embeddings(args.scenario)
    if not chat:
        wanted = args.embed_model or args.model
        # A file without embedding entries still names the server (URL, key, CA), not the model.
        kind = "embedding" if file_endpoints(env, "embedding") else "chat"
        root, api_key, embed_model, ca_cert = resolve_endpoint(
            args.host, args.api_key, wanted, env, args.ca_cert, kind=kind
        )
        embed_model = embed_model if kind == "embedding" else wanted
        _check_ca(ca_cert)
        if not embed_model:
            embed_model = find_models(root, api_key, chat=False, embed=True, ca_cert=ca_cert)[1]
        assert embed_model is not None
        return root, api_key, embed_model, embed_model, ca_cert
    root, api_key, model, ca_cert = resolve_endpoint(args.host, args.api_key, args.model, env, args.ca_cert)
    _check_ca(ca_cert)
    embed_model = args.embed_model
    if embed and not embed_model:
        same = (e.model for e in file_endpoints(env, "embedding") if e.model and root_url(e.base_url) == root)
        embed_model = next(same, None)
    if not model or (embed and not embed_model):
        found_chat, found_embed = find_models(
            root, api_key, chat=not model, embed=embed and not embed_model, ca_cert=ca_cert
        )
        model = model or found_chat
        embed_model = embed_model or found_embed
    assert model is not None
    return root, api_key, model, embed_model, ca_cert


def _check_ca(ca_cert: str | None) -> None:
    if ca_cert and not Path(ca_cert).is_file():
        raise UsageError(f"CA certificate {ca_cert} is not a file: fix --ca-cert, LLF_CA_CERT or the endpoints file")


def make_config(args: argparse.Namespace, env: dict[str, str]) -> tuple[RunConfig, str | None]:
    """Validate the options and build the run configuration (and the key, kept apart)."""
    shape = args.shape or ("open" if args.rate is not None else "closed")
    if shape == "open" and (args.rate is None or args.rate <= 0):
        raise UsageError("--shape open needs --rate > 0 (requests per second)")
    if shape != "open" and args.rate is not None:
        raise UsageError(f"--rate applies to --shape open, not {shape}")
    if args.burstiness <= 0:
        raise UsageError("--burstiness must be > 0")
    users = args.users if args.users is not None else DEFAULT_USERS[shape]
    if users < 1:
        raise UsageError("--users must be at least 1")
    if args.workers < 0:
        raise UsageError("--workers must be 0 or more")
    if shape == "open" and users < args.workers:
        raise UsageError("--users (the most requests in flight) must be at least --workers")
    if args.max_requests < 1:
        raise UsageError("--max-requests must be at least 1")
    duration = parse_duration(args.duration)
    if duration <= 0:
        raise UsageError("--duration must be more than 0")
    step_users: list[int] = []
    if args.step_users:
        if shape != "step":
            raise UsageError("--step-users applies to --shape step")
        try:
            step_users = [int(x) for x in args.step_users.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--step-users {args.step_users!r}: use e.g. 1,2,4,8") from None
        if not step_users:
            raise UsageError(f"--step-users {args.step_users!r}: use e.g. 1,2,4,8")
        users = step_users[-1]
    metrics_urls: list[str] = []
    for url in args.metrics_url:
        try:
            root = root_url(url.strip().rstrip("/").removesuffix("/metrics"))
        except UsageError:
            raise UsageError(f"--metrics-url {url!r}: use a server's http://HOST:PORT") from None
        if root not in metrics_urls:
            metrics_urls.append(root)
    chat, embed = has_chat(args.scenario), has_embeddings(args.scenario)
    if args.embed_model and not embed:
        raise UsageError(f"--embed-model applies to the scenarios embeddings and rag, not {args.scenario}")
    if args.embed_tokens < 1:
        raise UsageError("--embed-tokens must be at least 1")
    slo = load_slo(args.slo)
    if embed and slo.embeddings is None:
        raise UsageError(f"{slo.path} has no 'embeddings' section, which --scenario {args.scenario} is judged by")
    if chat and not slo.targets:
        raise UsageError(f"{slo.path} has no chat 'targets', which --scenario {args.scenario} is judged by")
    root, api_key, model, embed_model, ca_cert = resolve_models(args, env)
    out = Path(args.out) if args.out else DEFAULT_RESULTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    config = RunConfig(
        host=root,
        model=model,
        out=str(out.resolve()),
        slo_path=str(Path(slo.path).resolve()),
        scenario=args.scenario,
        shape=shape,
        users=users,
        rate=args.rate,
        burstiness=args.burstiness,
        duration=duration,
        warmup=parse_duration(args.warmup),
        step_users=step_users,
        workers=args.workers,
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000),
        request_timeout=parse_duration(args.request_timeout),
        max_requests=args.max_requests,
        ignore_eos=args.ignore_eos,
        metrics_urls=metrics_urls,
        embed_model=embed_model or "",
        embed_tokens=args.embed_tokens,
        ca_cert=str(Path(ca_cert).resolve()) if ca_cert else None,
    )
    if config.request_timeout <= 0:
        raise UsageError("--request-timeout must be more than 0")
    build_plan(config)  # raises on a plan that cannot run (steps too short)
    return config, api_key


def locust_command(config: RunConfig) -> list[str]:
    """The locust command line: no secret on it (the key travels in the environment)."""
    out = Path(config.out)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        config.host,
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--html",
        str(out / "locust.html"),
        "--stop-timeout",
        str(int(config.request_timeout) + 5),
        "--logfile",
        str(out / "locust.log"),
        "--loglevel",
        "INFO",
        "--only-summary",
    ]
    if config.workers > 0:
        cmd += ["--processes", str(config.workers)]
    return cmd


def _run_locust(cmd: list[str], env: dict[str, str], log: Path, budget: float) -> int:
    """Run locust; keep its output in ``log`` and echo only our progress lines.

    Bounded by ``budget`` seconds; if this process is interrupted or terminated,
    locust (and its workers) are stopped too rather than left running.
    """
    deadline = time.monotonic() + budget
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    with log.open("w", encoding="utf-8") as sink:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        assert proc.stdout is not None
        timer = threading.Timer(budget, _stop, args=(proc,))
        timer.start()
        try:
            for line in proc.stdout:
                sink.write(line)
                if line.startswith(PROGRESS):
                    print(line, end="", file=sys.stderr, flush=True)
            returncode = proc.wait()
        finally:
            timer.cancel()
            _stop(proc)
            signal.signal(signal.SIGTERM, previous)
    if time.monotonic() > deadline:
        raise NoResultError(f"locust did not end within {budget:g} s; see {log}")
    return returncode


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop locust and its worker processes (its own process group), if still running."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run(config: RunConfig, api_key: str | None, env: dict[str, str]) -> int:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "run-config.json"
    config.save(config_path)
    # The locustfile needs gevent's monkey patching: never inherit a request to skip it.
    dropped = (API_KEY_ENV, CONFIG_ENV, "LOCUST_SKIP_MONKEY_PATCH")
    child_env = {k: v for k, v in env.items() if k not in dropped}
    child_env[CONFIG_ENV] = str(config_path)
    child_env.setdefault("PYTHONPATH", "")
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), child_env["PYTHONPATH"]) if p)
    if api_key:
        child_env[API_KEY_ENV] = api_key
    planned = sum(s.duration for s in build_plan(config))
    per_process = config.users / max(1, config.workers)
    if per_process > STREAMS_PER_PROCESS:
        print(
            f"[loadtest] warning: {per_process:g} concurrent streams per load-generator process; "
            f"above about {STREAMS_PER_PROCESS} the client skews latency (use --workers)",
            file=sys.stderr,
        )
    models = config.model
    if config.embed_model and config.embed_model != config.model:
        models = f"chat {config.model}, embeddings {config.embed_model}"
    print(
        f"[loadtest] {config.scenario}/{config.shape} against {config.host} ({models}), "
        f"about {planned:g} s; results in {out}",
        file=sys.stderr,
        flush=True,
    )
    budget = planned + 2 * config.request_timeout + 120
    returncode = _run_locust(locust_command(config), child_env, out / "locust-output.txt", budget)
    result_path = out / "result.json"
    if not result_path.is_file():
        raise NoResultError(f"locust exited with {returncode} without a verdict; see {out}/locust.log")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    code = int(result["exit_code"])
    print((out / "summary.txt").read_text(encoding="utf-8"), end="")
    print(f"results: {out}")
    if returncode != code:
        print(f"[loadtest] note: locust exited with {returncode}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            from loadtests import bench

            return bench.bench(args, env)
        config, api_key = make_config(args, env)
        return run(config, api_key, env)
    except LoadtestError as e:
        print(f"loadtest: error: {e}", file=sys.stderr)
        return e.exit_code if e.exit_code in (EXIT_USAGE, EXIT_INVALID) else EXIT_USAGE
