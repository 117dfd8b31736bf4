"""``python -m loadtests bench``: a server's capacity as a curve over a concurrency ladder.

Each repeat is one load test of the step shape (``run --shape step``) over the whole
ladder, every step run even when one misses its targets; the figures of a step are the
mean over the repeats and their spread is the noise. The report (``bench.json``,
``summary.txt``, PNG plots against concurrency) gives the curves, the capacity (highest
step of an unbroken run of steps that met every SLO target on the pooled samples of its
repeats), the server's memory and start, and the host profile. It is compared with the
stored baseline of the same host profile (exit 1 on a regression); ``--save`` stores it
as that baseline. ``--vs vllm-defaults`` runs the same ladder against a bare vLLM
server with its own defaults and reports both curves and their ratios.

Exit codes: 0 no regression (or no baseline), 1 a regression, 2 usage error, 3 a curve
without any completed request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shlex
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests import EXIT_INVALID, EXIT_MISSED, EXIT_PASS, hostinfo
from loadtests import baseline as bl
from loadtests.collect import Collector
from loadtests.config import file_endpoints, parse_duration
from loadtests.errors import NoResultError, UsageError
from loadtests.plan import MIN_STEP_SECONDS, step_levels
from loadtests.slo import EMBEDDINGS, evaluate, exit_code, load_slo

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_BASELINES = REPO / "bench" / "baselines"
DEFAULT_LADDER = "1,2,4,8,16"
VS_CHOICES = ("vllm-defaults",)
STATUS = {EXIT_PASS: "pass", EXIT_MISSED: "miss", EXIT_INVALID: "inconclusive"}
SCENARIO = {bl.CHAT: "short", bl.EMBEDDINGS: "embeddings"}


def add_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="capacity curve over a concurrency ladder, compared with a baseline")
    bench.add_argument("--host", help="server root or OpenAI base URL (default: as for run)")
    bench.add_argument("--api-key", help="API key (default: $LLF_API_KEY, $OPENAI_API_KEY, endpoints file)")
    bench.add_argument("--model", help="chat model (default: as for run)")
    bench.add_argument("--ca-cert", metavar="PEM", help="CA certificate to trust for https (default: as for run)")
    bench.add_argument(
        "--embed-host",
        help="server of the embedding curve (default: the endpoints file's kind: embedding entry when --host "
        "is not given; else none)",
    )
    bench.add_argument("--no-embeddings", dest="embeddings", action="store_false", help="chat curve only")
    bench.add_argument("--ladder", default=DEFAULT_LADDER, help=f"concurrency steps (default {DEFAULT_LADDER})")
    bench.add_argument("--step", default="30s", help="measured time per step and repeat (default 30s)")
    bench.add_argument("--repeats", type=int, default=3, help="runs of the whole ladder, for the noise (default 3)")
    bench.add_argument("--warmup", default="5s", help="warm-up before each repeat (default 5s)")
    bench.add_argument("--slo", default=str(HERE / "slo.yaml"), help="SLO file of the capacity (default slo.yaml)")
    bench.add_argument("--out", help="results folder (default loadtests/results/bench-<UTC timestamp>)")
    bench.add_argument("--seed", type=int, help="prompt seed of the first repeat (default random, recorded)")
    bench.add_argument(
        "--baselines", default=str(DEFAULT_BASELINES), help="baseline folder (default bench/baselines)"
    )
    bench.add_argument(
        "--min-effect",
        type=float,
        default=bl.DEFAULT_MIN_EFFECT,
        help=f"smallest change in percent that can be a regression (default {bl.DEFAULT_MIN_EFFECT:g})",
    )
    bench.add_argument("--save", action="store_true", help="store the run as the baseline of its host profile")
    bench.add_argument(
        "--from", dest="from_dir", metavar="DIR", help="judge (or --save) the bench already in DIR, without load"
    )
    bench.add_argument("--vs", choices=VS_CHOICES, help="also bench a bare vLLM server with its own defaults")
    bench.add_argument("--vs-args", default="", help="extra vllm serve options of the --vs server")
    bench.add_argument("--vs-port", type=int, default=8100, help="port of the --vs server (default 8100)")


def parse_ladder(text: str) -> list[int]:
    try:
        ladder = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--ladder {text!r}: use rising concurrencies, e.g. 1,2,4,8") from None
    if not ladder:
        raise UsageError(f"--ladder {text!r}: use rising concurrencies, e.g. 1,2,4,8")
    return step_levels(ladder[-1], ladder)


# -- one curve ----------------------------------------------------------------------


RunOne = Callable[[list[str], dict[str, str], Path], int]


def run_one(argv: list[str], env: dict[str, str], log: Path) -> int:
    """One ``run`` of the load tests (every step, even past a miss); its summary goes to ``log``."""
    from loadtests import cli

    args = cli.build_parser().parse_args(argv)
    config, api_key = cli.make_config(args, env)
    config.all_steps = True
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        return cli.run(config, api_key, env)


def curve(
    name: str,
    target: list[str],
    ladder: list[int],
    step: float,
    repeats: int,
    warmup: str,
    slo_path: str,
    seed: int,
    out: Path,
    env: dict[str, str],
    runner: RunOne = run_one,
) -> dict[str, Any]:
    """Run the ladder ``repeats`` times against ``target`` (run options) and sum it up."""
    docs = []
    for r in range(repeats):
        rep = out / f"repeat-{r + 1}"
        print(f"[bench] {name}: repeat {r + 1} of {repeats}, steps {ladder}, {step:g} s each", file=sys.stderr)
        argv = [
            "run", *target, "--scenario", SCENARIO[name], "--shape", "step",
            "--step-users", ",".join(map(str, ladder)), "--duration", f"{step * len(ladder):g}s",
            "--warmup", warmup, "--slo", slo_path, "--out", str(rep), "--seed", str(seed + r),
        ]  # fmt: skip
        runner(argv, env, rep / "bench-run.txt")
        result = rep / "result.json"
        if not result.is_file():
            raise NoResultError(f"repeat {r + 1} of the {name} curve left no result; see {rep}")
        docs.append(json.loads(result.read_text(encoding="utf-8")))
    return summarize_curve(name, docs, [out / f"repeat-{r + 1}" for r in range(repeats)], slo_path)


def summarize_curve(name: str, docs: Sequence[dict[str, Any]], dirs: Sequence[Path], slo_path: str) -> dict[str, Any]:
    """Per step: the repeats' figures, their mean and noise, the SLO verdict on the pooled samples."""
    slo = load_slo(slo_path)
    group = EMBEDDINGS if name == bl.EMBEDDINGS else "chat"
    collectors = []
    for d in dirs:
        c = Collector(d / "raw")
        c.poll()
        collectors.append(c)
    users = sorted({s["users"] for doc in docs for s in doc["stages"]})
    steps = []
    capacity, broken = 0, False
    for u in users:
        stages = [(doc, s) for doc in docs for s in doc["stages"] if s["users"] == u]
        repeats = [{k: s.get(k) for k, _, _ in bl.FIGURES[name]} | {"completed": s["completed"]} for _, s in stages]
        samples, duration = [], 0.0
        for c, (_, s) in zip(collectors, stages, strict=False):
            if s.get("start") is not None:
                samples += c.in_window(s["start"], s["end"])
                duration += s.get("duration") or 0.0
        targets = evaluate(slo, samples, duration or None, group)
        code = exit_code(targets, [])
        if any(c.get("status") == "invalid" for _, s in stages for c in s.get("checks", [])):
            code = EXIT_INVALID
        status = "invalid" if code == EXIT_INVALID and any(
            c.get("status") == "invalid" for _, s in stages for c in s.get("checks", [])
        ) else STATUS[code]
        if code == EXIT_PASS and not broken:
            capacity = u
        else:
            broken = True
        steps.append(
            {
                "users": u,
                "repeats": repeats,
                **bl.step_figures(name, repeats),
                "completed": sum(r["completed"] for r in repeats),
                "slo": status,
                "targets": [t.row() for t in targets],
            }
        )
    model = docs[0].get("model_id") if docs else None
    return {"model": model, "host": docs[0].get("host") if docs else None, "steps": steps, "capacity_users": capacity}


# -- the report ---------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def curve_table(name: str, data: dict[str, Any]) -> list[str]:
    figures = bl.FIGURES[name]
    head = f"{'users':>6}" + "".join(f"{label:>15}" for _, label, _ in figures) + f"{'noise max':>11}  SLO"
    lines = [f"{name} ({data['model']} at {data['host']}):", head]
    for s in data["steps"]:
        noise = max((v for v in s["noise_pct"].values() if v is not None), default=None)
        cells = "".join(f"{_fmt(s['mean'].get(k)):>15}" for k, _, _ in figures)
        lines.append(f"{s['users']:>6}{cells}{_fmt(noise):>10}%  {s['slo']}")
    lines.append(f"capacity: {data['capacity_users']} concurrent users met every SLO target")
    short = [s["users"] for s in data["steps"] if s["slo"] == "inconclusive" and s["users"] > data["capacity_users"]]
    if short:  # too few samples ends the run of passing steps as a miss would
        lines.append(f"  inconclusive at {', '.join(map(str, short))} users (too few samples for a target): "
                     "a longer STEP or more REPEATS gives a verdict")  # fmt: skip
    return lines


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Per curve and step: our figure over theirs."""
    out: dict[str, Any] = {}
    for name, data in ours.items():
        other = {s["users"]: s for s in (theirs.get(name) or {}).get("steps", [])}
        rows = []
        for s in data["steps"]:
            o = other.get(s["users"])
            if o is None:
                continue
            row: dict[str, Any] = {"users": s["users"]}
            for k, _, _ in bl.FIGURES[name]:
                a, b = s["mean"].get(k), o["mean"].get(k)
                row[k] = a / b if a is not None and b else None
            rows.append(row)
        if rows:
            out[name] = rows
    return out


def _memory_line(server: dict[str, Any]) -> str:
    mem = server.get("memory")
    text = "memory unknown (not on this machine)" if not isinstance(mem, dict) else (
        f"memory RSS {mem['rss_mib']:.0f} MiB, PSS {_fmt(mem.get('pss_mib'), 0)} MiB over {mem['processes']} processes"
    )
    start = server.get("startup_seconds")
    at = server.get("started_at")
    up = server.get("uptime_seconds")
    if start is not None:  # measured only for a server the bench starts
        text += f"; started in {start:.1f} s"
    if at is not None:
        text += f"; running since {datetime.fromtimestamp(at, UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    elif start is None:
        text += "; start time unknown"
    if up is not None:
        text += f" (up {up:.0f} s)"
    return text


def summary_text(doc: dict[str, Any]) -> str:
    p = doc["profile"]
    s = doc["settings"]
    lines = [
        f"LLF bench {doc['date']}: ladder {s['ladder']}, {s['step_seconds']:g} s per step, {s['repeats']} repeats",
        f"host profile {p['key']}: {p['cpu_model']}, {p['cores']} cores, {p['memory_gib']} GiB, GPU {p['gpu']}; "
        f"engine {p['engine_version']}, model {p['model']}",
        f"server: {_memory_line(doc['server'])}",
        "",
    ]
    for name, data in doc["curves"].items():
        lines += curve_table(name, data) + [""]
    vs = doc.get("vs")
    if vs:
        lines.append(f"== {vs['name']}: {' '.join(vs['command'])}")
        lines.append(f"server: {_memory_line(vs['server'])}")
        for name, data in vs["curves"].items():
            lines += curve_table(name, data)
        for name, rows in vs["ratios"].items():
            lines.append(f"ratio LLF / {vs['name']} ({name}):")
            lines.append(f"{'users':>6}" + "".join(f"{label:>15}" for _, label, _ in bl.FIGURES[name]))
            for row in rows:
                lines.append(f"{row['users']:>6}" + "".join(f"{_fmt(row[k], 2):>15}" for k, _, _ in bl.FIGURES[name]))
        lines.append("")
    comparison = doc.get("comparison")
    if comparison:
        lines.append(comparison["message"])
        lines += comparison.get("table", [])
    return "\n".join(lines) + "\n"


def write_plots(out: Path, doc: dict[str, Any]) -> list[Path]:
    """Throughput and latency against concurrency (error bars: the repeats' range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [("LLF", doc["curves"])]
    if doc.get("vs"):
        runs.append((doc["vs"]["name"], doc["vs"]["curves"]))
    panels = {
        bl.CHAT: [
            ("chat_throughput.png", [("output_throughput", "output tok/s"), ("total_token_throughput", "total tok/s")]),
            (
                "chat_latency.png",
                [("p50_ttft_ms", "TTFT p50"), ("p95_ttft_ms", "TTFT p95"), ("p50_itl_ms", "ITL p50"),
                 ("p95_itl_ms", "ITL p95"), ("p50_e2el_ms", "E2EL p50"), ("p95_e2el_ms", "E2EL p95")],
            ),
        ],
        bl.EMBEDDINGS: [
            ("embeddings.png", [("request_throughput", "req/s"), ("p50_e2el_ms", "E2EL p50"),
                                ("p95_e2el_ms", "E2EL p95")]),
        ],
    }  # fmt: skip
    paths = []
    for name, files in panels.items():
        if name not in doc["curves"]:
            continue
        for filename, figures in files:
            cols = min(2, len(figures))
            rows = (len(figures) + cols - 1) // cols
            fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
            for ax, (key, label) in zip(axes.flat, figures, strict=False):
                for run_name, curves in runs:
                    data = curves.get(name)
                    if not data:
                        continue
                    xs, ys, lo, hi = [], [], [], []
                    for s in data["steps"]:
                        values = [r[key] for r in s["repeats"] if r.get(key) is not None]
                        if not values:
                            continue
                        m = s["mean"][key]
                        xs.append(s["users"])
                        ys.append(m)
                        lo.append(m - min(values))
                        hi.append(max(values) - m)
                    if xs:
                        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=run_name)
                ax.set_xscale("log", base=2)
                ladder = sorted({s["users"] for _, c in runs for s in (c.get(name) or {}).get("steps", [])})
                ax.set_xticks(ladder, [str(u) for u in ladder])
                ax.set_xlabel("concurrent users")
                ax.set_ylabel(label + ("" if "/s" in label else " (ms)"))
                ax.set_title(f"{name}: {label}")
                if len(runs) > 1 and ax.get_legend_handles_labels()[0]:
                    ax.legend()
            for ax in list(axes.flat)[len(figures) :]:
                ax.set_visible(False)
            fig.tight_layout()
            fig.savefig(out / filename, dpi=100)
            plt.close(fig)
            paths.append(out / filename)
    return paths


# -- the whole bench ------------------------------------------------------------------


def targets(args: argparse.Namespace, env: dict[str, str]) -> dict[str, list[str]]:
    """The run options of each curve: chat, and embeddings where an embedding model is served."""
    common: list[str] = []
    if args.api_key:
        common += ["--api-key", args.api_key]
    if args.ca_cert:
        common += ["--ca-cert", args.ca_cert]
    chat = [*common, *(["--host", args.host] if args.host else []), *(["--model", args.model] if args.model else [])]
    out = {bl.CHAT: chat}
    if args.embeddings:
        if args.embed_host:
            out[bl.EMBEDDINGS] = [*common, "--host", args.embed_host]
        elif not args.host and file_endpoints(env, "embedding"):
            out[bl.EMBEDDINGS] = list(common)
    return out


def run_curves(
    args: argparse.Namespace,
    env: dict[str, str],
    which: dict[str, list[str]],
    out: Path,
    seed: int,
    runner: RunOne,
) -> dict[str, Any]:
    ladder = parse_ladder(args.ladder)
    step = parse_duration(args.step)
    return {
        name: curve(name, target, ladder, step, args.repeats, args.warmup, args.slo, seed, out / name, env, runner)
        for name, target in which.items()
    }


def judge(doc: dict[str, Any], directory: Path, min_effect: float) -> int:
    """Compare with the stored baseline of the same profile; the message and table go in ``doc``."""
    base = bl.load_baseline(directory, doc["profile"]["key"])
    path = bl.baseline_path(directory, doc["profile"]["key"])
    if base is None:
        doc["comparison"] = {
            "baseline": None,
            "message": f"no baseline for host profile {doc['profile']['key']} in {directory}: "
            "nothing to compare with (make bench-save stores this run as the baseline)",
        }
        return EXIT_PASS
    deltas = bl.compare(doc, base, min_effect)
    bad = bl.regressed(deltas)
    n_bad = sum(d.verdict == bl.REGRESSION for d in deltas)
    message = (
        f"REGRESSION against the baseline {path} ({base['date']}): {n_bad} figure(s) worse beyond the noise band"
        if bad
        else f"no regression against the baseline {path} ({base['date']})"
    )
    if not deltas:
        message = f"the baseline {path} has no step in common with this run: nothing compared"
    doc["comparison"] = {
        "baseline": str(path),
        "baseline_date": base["date"],
        "min_effect_pct": min_effect,
        "regression": bad,
        "deltas": [d.row() for d in deltas],
        "message": message,
        "table": bl.delta_table(deltas) if deltas else [],
    }
    return EXIT_MISSED if bad else EXIT_PASS


def write_report(out: Path, doc: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    text = summary_text(doc)
    (out / "summary.txt").write_text(text, encoding="utf-8")
    write_plots(out, doc)
    return text


def bench(args: argparse.Namespace, env: dict[str, str], runner: RunOne = run_one) -> int:
    if args.from_dir:
        out = Path(args.from_dir)
        try:
            doc = json.loads((out / "bench.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"--from {out}: no readable bench.json there ({e.__class__.__name__})") from None
    else:
        if args.repeats < 1:
            raise UsageError("--repeats must be at least 1")
        if parse_duration(args.step) < MIN_STEP_SECONDS:
            raise UsageError(f"--step {args.step}: give at least {MIN_STEP_SECONDS:g} s per step")
        if args.vs_args and args.vs is None:
            raise UsageError("--vs-args applies to --vs")
        load_slo(args.slo)  # a bad SLO file fails before any load
        out = Path(args.out) if args.out else HERE / "results" / datetime.now(UTC).strftime("bench-%Y%m%dT%H%M%SZ")
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
        which = targets(args, env)
        curves = run_curves(args, env, which, out, seed, runner)
        chat = curves[bl.CHAT]
        run_config = json.loads((out / bl.CHAT / "repeat-1" / "run-config.json").read_text(encoding="utf-8"))
        root, ca = run_config["host"], run_config.get("ca_cert")
        from loadtests.cli import resolve_endpoint

        api_key = resolve_endpoint(args.host, args.api_key, chat["model"], env, args.ca_cert)[1]
        doc = {
            "kind": "llf-bench",
            "version": bl.BASELINE_VERSION,
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": {
                "ladder": parse_ladder(args.ladder),
                "step_seconds": parse_duration(args.step),
                "repeats": args.repeats,
                "warmup": args.warmup,
                "slo": str(Path(args.slo).resolve()),
                "seed": seed,
                "scenarios": {name: SCENARIO[name] for name in curves},
            },
            "profile": hostinfo.host_profile(root, api_key, chat["model"], ca),
            "server": hostinfo.server_resources(root),
            "curves": curves,
        }
        if args.vs:
            doc["vs"] = versus(args, env, root, api_key, ca, out, seed, runner, curves)
    code = EXIT_PASS
    if args.save:
        path = bl.save_baseline(Path(args.baselines), doc)
        doc["comparison"] = {"baseline": str(path), "message": f"stored as the baseline of host profile "
                             f"{doc['profile']['key']}: {path}"}  # fmt: skip
    else:
        code = judge(doc, Path(args.baselines), args.min_effect)
    empty = [name for name, data in doc["curves"].items() if not any(s["completed"] for s in data["steps"])]
    text = write_report(out, doc)
    print(text, end="")
    print(f"results: {out}")
    if empty:
        print(f"bench: no request completed in the {', '.join(empty)} curve", file=sys.stderr)
        return EXIT_INVALID
    return code


def versus(
    args: argparse.Namespace,
    env: dict[str, str],
    root: str,
    api_key: str | None,
    ca: str | None,
    out: Path,
    seed: int,
    runner: RunOne,
    ours: dict[str, Any],
) -> dict[str, Any]:
    """The same chat ladder against a bare vLLM server with its own defaults (stopped after)."""
    from loadtests import bare

    engine = bare.deployed_engine(root)
    server = bare.BareServer(engine, args.vs_port, shlex.split(args.vs_args), out / "vllm-defaults")
    with server:
        started = server.start()
        which = {bl.CHAT: ["--host", server.root, "--model", engine.served_name]}
        curves = run_curves(args, env, which, out / "vllm-defaults", seed, runner)
        resources = hostinfo.server_resources(server.root, pid=server.pid, startup_seconds=started)
    return {
        "name": "vllm-defaults",
        "command": server.command_line(),
        "server": resources,
        "curves": curves,
        "ratios": ratios({bl.CHAT: ours[bl.CHAT]}, curves),
    }
