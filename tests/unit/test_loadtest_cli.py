"""The CLI: defaults from the endpoints file, option checks, the locust subprocess."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests import cli
from loadtests.config import (
    API_KEY_ENV,
    CONFIG_ENV,
    RunConfig,
    chat_endpoints,
    first_model,
    parse_duration,
    root_url,
)
from loadtests.errors import ServerError, UsageError
from loadtests.metrics import Sample
from loadtests.plan import build_plan, step_levels
from loadtests.prom import scrape, scrape_all
from loadtests.stream import recount_tokens
from tests.fakes.fake_sse import MODEL, FakeSSEServer
from tests.fakes.tls import self_signed

SECRET = "sk-test-not-printed"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2m", 120.0), ("90s", 90.0), ("1m30s", 90.0), ("1h", 3600.0), ("45", 45.0), ("0.5s", 0.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2 minutes", "5ms", "m", "-3"])
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_root_url_accepts_both_forms() -> None:
    assert root_url("http://h:8000/v1/") == "http://h:8000"
    assert root_url(" https://h ") == "https://h"
    with pytest.raises(UsageError, match="invalid host"):
        root_url("h:8000")


def write_endpoints(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_chat_endpoints_read_by_llf_clients_reader(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert chat_endpoints(env) == []
    write_endpoints(
        tmp_path / "llf" / "endpoints.yml",
        "endpoints:\n  - {name: e, base_url: 'http://127.0.0.1:8002/v1', kind: embedding, model: mini}\n"
        "  - {name: a, base_url: 'http://127.0.0.1:8001/v1', model: m1}\n",
    )
    ((entry),) = chat_endpoints(env)
    assert (entry.name, entry.base_url, entry.model, entry.kind) == ("a", "http://127.0.0.1:8001/v1", "m1", "chat")
    for text, message in [
        ("endpoints: [unclosed\n", "not valid YAML at line 2"),
        ("endpoints: []\n", "the 'endpoints' list is empty"),
        ("endpoints: [{name: a}]\n", "name and base_url are required"),
    ]:
        write_endpoints(tmp_path / "bad.yml", text)
        with pytest.raises(UsageError, match=message) as info:
            chat_endpoints({"LLF_CONFIG": str(tmp_path / "bad.yml")})
        assert f"endpoints file {tmp_path / 'bad.yml'}" in str(info.value)


def test_resolve_endpoint_precedence(tmp_path: Path) -> None:
    file = write_endpoints(
        tmp_path / "e.yml",
        f"endpoints:\n  - {{name: a, base_url: 'http://127.0.0.1:8001/v1', api_key: {SECRET}, model: m1}}\n"
        "  - {name: a-emb, base_url: 'http://127.0.0.1:8002/v1', api_key: k-e, model: emb, kind: embedding}\n"
        "  - {name: a-m2, base_url: 'http://127.0.0.1:8003/v1', api_key: k-m2, model: m2}\n",
    )
    env = {"LLF_CONFIG": str(file)}
    assert cli.resolve_endpoint(None, None, None, env) == ("http://127.0.0.1:8001", SECRET, "m1", None)
    # --model picks the entry serving it, with that entry's key
    assert cli.resolve_endpoint(None, None, "m2", env) == ("http://127.0.0.1:8003", "k-m2", "m2", None)
    # an embedding entry is never a load-test target
    assert cli.resolve_endpoint(None, None, "emb", env)[:2] == ("http://127.0.0.1:8001", SECRET)
    # An explicit host that is the file's server still takes its key and model.
    assert cli.resolve_endpoint("http://127.0.0.1:8001", None, None, env)[1:] == (SECRET, "m1", None)
    # Another host never receives the file's key.
    assert cli.resolve_endpoint("http://10.0.0.9:8000/v1", None, None, env) == (
        "http://10.0.0.9:8000",
        None,
        None,
        None,
    )
    env_vars = {**env, "OPENAI_BASE_URL": "http://127.0.0.1:9000/v1", "OPENAI_API_KEY": "k2"}
    assert cli.resolve_endpoint(None, None, "m9", env_vars) == ("http://127.0.0.1:9000", "k2", "m9", None)
    assert cli.resolve_endpoint(None, "k3", None, {"XDG_CONFIG_HOME": str(tmp_path)}) == (
        "http://127.0.0.1:8000",
        "k3",
        None,
        None,
    )
    no_file = {"XDG_CONFIG_HOME": str(tmp_path), "REQUESTS_CA_BUNDLE": "/b.pem"}
    assert cli.resolve_endpoint(None, None, None, no_file)[3] == "/b.pem"
    assert cli.resolve_endpoint(None, None, None, {**no_file, "LLF_CA_CERT": "/l.pem"})[3] == "/l.pem"
    assert cli.resolve_endpoint(None, None, None, no_file, "/o.pem")[3] == "/o.pem"


# --- TLS with a private CA: a real local https server and a certificate made here ---


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[FakeSSEServer, Path]]:
    cert, key = self_signed(tmp_path / "ca")
    with FakeSSEServer(tls=(cert, key), ttft=0.0, itl=0.0) as fake:
        yield fake, cert


def test_https_target_is_verified_with_the_endpoint_files_ca_cert(
    tmp_path: Path, tls_server: tuple[FakeSSEServer, Path]
) -> None:
    fake, cert = tls_server
    file = write_endpoints(tmp_path / "e.yml", f"endpoints:\n  - {{name: gw, base_url: '{fake.base_url}'}}\n")
    env = {"LLF_CONFIG": str(file)}
    # without the CA: the model lookup fails on the certificate, in one clear line
    with pytest.raises(ServerError, match="certificate not trusted \\(pass --ca-cert\\)"):
        cli.make_config(cli.build_parser().parse_args(["run", "--out", str(tmp_path / "r")]), env)
    write_endpoints(file, f"endpoints:\n  - {{name: gw, base_url: '{fake.base_url}', ca_cert: '{cert}'}}\n")
    config, _ = cli.make_config(cli.build_parser().parse_args(["run", "--out", str(tmp_path / "r")]), env)
    assert (config.host, config.model, config.ca_cert) == (fake.root_url, MODEL, str(cert))  # via /v1/models
    assert RunConfig.load(_saved(config, tmp_path)).ca_cert == str(cert)  # the Locust processes get it
    # the /metrics scrapes and the /tokenize recount trust it too, and only with it
    assert scrape(fake.root_url, ca_cert=str(cert)) is not None
    assert scrape(fake.root_url) is None
    assert scrape_all([fake.root_url], ca_cert=str(cert))[fake.root_url] is not None
    sample = Sample(start=0, success=True, text="three words here", tokens_source="chunks")
    assert recount_tokens([sample], fake.root_url, MODEL) == 0
    assert recount_tokens([sample], fake.root_url, MODEL, ca_cert=str(cert)) == 1
    assert sample.output_tokens == 3


def test_a_ca_cert_that_is_not_a_file_is_a_usage_error(tmp_path: Path) -> None:
    parsed = cli.build_parser().parse_args(["run", "--host", "https://127.0.0.1:9", "--ca-cert", "/no/ca.pem"])
    with pytest.raises(UsageError, match="CA certificate /no/ca.pem is not a file: fix --ca-cert"):
        cli.make_config(parsed, {"XDG_CONFIG_HOME": str(tmp_path)})


def _saved(config: RunConfig, tmp_path: Path) -> Path:
    path = tmp_path / "run-config.json"
    config.save(path)
    return path


def test_first_model() -> None:
    with FakeSSEServer(api_key=SECRET) as fake:
        assert first_model(fake.root_url, None) == MODEL  # /v1/models needs no key in the fake
        with pytest.raises(ServerError, match="answered HTTP 404"):
            first_model(fake.root_url + "/nowhere", None)
    with pytest.raises(ServerError, match="cannot reach"):
        first_model("http://127.0.0.1:9", None, timeout=2)


def args(*extra: str, slo: Path | None = None) -> list[str]:
    base = ["run", "--host", "http://127.0.0.1:9/v1", "--model", "m"]
    if slo is not None:
        base += ["--slo", str(slo)]
    return [*base, *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shape", "open"], "--shape open needs --rate"),
        (["--rate", "2", "--shape", "closed"], "--rate applies to --shape open"),
        (["--burstiness", "0", "--rate", "1"], "--burstiness must be > 0"),
        (["--users", "0"], "--users must be at least 1"),
        (["--workers", "-1"], "--workers must be 0 or more"),
        (["--rate", "1", "--users", "1", "--workers", "2"], "must be at least --workers"),
        (["--max-requests", "0"], "--max-requests must be at least 1"),
        (["--duration", "0"], "--duration must be more than 0"),
        (["--duration", "soon"], "invalid duration 'soon'"),
        (["--step-users", "1,2"], "--step-users applies to --shape step"),
        (["--shape", "step", "--step-users", "1,x"], "use e.g. 1,2,4,8"),
        (["--shape", "step", "--step-users", ","], "use e.g. 1,2,4,8"),
        (["--shape", "step", "--step-users", "2,1"], "must rise strictly"),
        (["--shape", "step", "--users", "8", "--duration", "10s"], "at least 5 s per step"),
        (["--request-timeout", "0"], "--request-timeout must be more than 0"),
        (["--slo", "/nonexistent.yaml"], "cannot read SLO file"),
        (["--metrics-url", "10.0.0.2:8000"], "--metrics-url '10.0.0.2:8000': use a server's http://HOST:PORT"),
    ],
)
def test_usage_errors_exit_2(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args(*extra), env={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("loadtest: error: ") and message in err


def test_module_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["loadtests", "run", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("loadtests", run_name="__main__")
    assert exc.value.code == 0


def test_unknown_option_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--bogus"], env={})
    assert exc.value.code == 2


def test_server_unreachable_for_the_model_default_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--host", "http://127.0.0.1:9"], env={}) == 2
    assert "cannot reach http://127.0.0.1:9/v1/models" in capsys.readouterr().err


def test_make_config_defaults(tmp_path: Path) -> None:
    parsed = cli.build_parser().parse_args(args("--out", str(tmp_path / "o"), "--seed", "5"))
    config, key = cli.make_config(parsed, env={"LLF_API_KEY": SECRET})
    assert key == SECRET
    assert (config.shape, config.users, config.duration, config.warmup) == ("closed", 4, 120.0, 10.0)
    assert config.host == "http://127.0.0.1:9" and config.seed == 5
    assert Path(config.slo_path) == cli.DEFAULT_SLO
    opened = cli.make_config(cli.build_parser().parse_args(args("--rate", "2")), env={})[0]
    assert (opened.shape, opened.users) == ("open", 64)
    assert opened.out.startswith(str(cli.DEFAULT_RESULTS))
    step = cli.make_config(cli.build_parser().parse_args(args("--shape", "step", "--step-users", "1,3")), env={})[0]
    assert (step.users, step.step_users) == (3, [1, 3])


def test_metrics_urls_default_to_the_target_and_are_normalized(tmp_path: Path) -> None:
    plain = cli.make_config(cli.build_parser().parse_args(args()), env={})[0]
    assert plain.metrics_urls == [] and plain.scrape_urls() == ["http://127.0.0.1:9"]
    named = args(
        "--metrics-url",
        "http://10.231.0.2:8000/metrics",
        "--metrics-url",
        "http://10.231.0.3:8000/v1/",
        "--metrics-url",
        "http://10.231.0.2:8000",  # the same server again
    )
    config = cli.make_config(cli.build_parser().parse_args(named), env={})[0]
    assert config.scrape_urls() == ["http://10.231.0.2:8000", "http://10.231.0.3:8000"]
    config.save(tmp_path / "run-config.json")
    assert RunConfig.load(tmp_path / "run-config.json").metrics_urls == config.metrics_urls  # for Locust


def test_plans() -> None:
    config = RunConfig(host="h", model="m", out="o", slo_path="s", users=6, warmup=5.0)
    assert [(s.name, s.users, s.measured) for s in build_plan(config)] == [
        ("warmup", 6, False),
        ("measure", 6, True),
    ]
    config.shape, config.duration, config.warmup = "step", 40.0, 0.0
    plan = build_plan(config)
    assert [(s.name, s.users, s.duration) for s in plan] == [
        ("step-1", 1, 10.0),
        ("step-2", 2, 10.0),
        ("step-4", 4, 10.0),
        ("step-6", 6, 10.0),
    ]
    config.shape = "open"
    assert build_plan(config)[0].kind == "open"
    assert step_levels(1) == [1] and step_levels(8) == [1, 2, 4, 8]


def test_locust_command_carries_no_secret(tmp_path: Path) -> None:
    config = RunConfig(host="http://h:1", model="m", out=str(tmp_path), slo_path="s", workers=3)
    cmd = cli.locust_command(config)
    assert cmd[1:3] == ["-m", "locust"] and "--headless" in cmd
    assert cmd[cmd.index("--processes") + 1] == "3"
    assert cmd[cmd.index("--html") + 1] == str(tmp_path / "locust.html")
    config.workers = 0
    assert "--processes" not in cli.locust_command(config)
    assert not any(SECRET in part for part in cmd)


FAKE_LOCUST = """
import json, os, sys
from pathlib import Path
config = json.loads(Path(os.environ["{config_env}"]).read_text())
out = Path(config["out"])
seen = {{"argv": sys.argv, "key": os.environ.get("{key_env}")}}
(out / "seen.json").write_text(json.dumps(seen))
print("[loadtest] progress from the fake", flush=True)
print("locust chatter", flush=True)
if {write}:
    (out / "result.json").write_text(json.dumps({{"exit_code": 1}}))
    (out / "summary.txt").write_text("verdict: MISSED (exit 1)\\n")
sys.exit({code})
"""


def fake_locust(monkeypatch: pytest.MonkeyPatch, write: bool, code: int) -> None:
    script = FAKE_LOCUST.format(config_env=CONFIG_ENV, key_env=API_KEY_ENV, write=write, code=code)
    monkeypatch.setattr(cli, "locust_command", lambda config: [sys.executable, "-c", script])


def test_run_passes_the_key_in_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_locust(monkeypatch, write=True, code=0)
    out = tmp_path / "run"
    code = cli.main(args("--out", str(out), "--api-key", SECRET, "--warmup", "0", "--users", "200"), env={})
    assert code == 1  # the verdict in result.json, not locust's own exit code
    seen = json.loads((out / "seen.json").read_text())
    assert seen["key"] == SECRET
    assert not any(SECRET in part for part in seen["argv"])
    assert SECRET not in (out / "run-config.json").read_text()
    captured = capsys.readouterr()
    assert "verdict: MISSED (exit 1)" in captured.out
    assert "[loadtest] progress from the fake" in captured.err
    assert "locust chatter" not in captured.err + captured.out
    assert "locust chatter" in (out / "locust-output.txt").read_text()
    assert "note: locust exited with 0" in captured.err
    assert "200 concurrent streams per load-generator process" in captured.err
    assert SECRET not in captured.out + captured.err


def test_run_without_a_verdict_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_locust(monkeypatch, write=False, code=2)
    assert cli.main(args("--out", str(tmp_path / "run")), env={}) == 3
    assert "locust exited with 2 without a verdict" in capsys.readouterr().err


def test_run_locust_time_bound(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(cli.NoResultError, match="did not end within"):
        cli._run_locust(cmd, {}, tmp_path / "log.txt", budget=0.5)
