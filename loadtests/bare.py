"""A bare vLLM server with vLLM's own defaults, beside the deployed one (``bench --vs``).

The engine and the model are the deployed server's: its process (the one listening on
its port) gives the engine venv's Python, and its ``--config`` file (or ``--model``)
the staged model folder and the served name. The bare server gets nothing of LLF's
tuning (no KV cache size, no thread binding, no max-model-len, no preload): only the
model, the same served name, 127.0.0.1 and its own port, plus ``--vs-args``. Its
environment keeps the Hugging Face hub offline and usage statistics off, which do not
change how it serves. It is stopped on leaving the ``with`` block, whatever happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml

from loadtests import hostinfo
from loadtests.errors import UsageError

READY_TIMEOUT = 900.0
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Engine:
    python: str  # the engine venv's interpreter
    model_dir: str
    served_name: str


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def engine_from_cmdline(argv: list[str], read_config: Any = None) -> Engine:
    """The engine and model of a running vLLM API server, from its command line."""
    if not argv or "vllm" not in " ".join(argv):
        raise UsageError(f"the deployed server's process is not vLLM ({' '.join(argv[:3])}): --vs needs LLF's vLLM")
    config: dict[str, Any] = {}
    path = _option(argv, "--config")
    if path:
        try:
            loaded = (read_config or _read_yaml)(path)
        except (OSError, yaml.YAMLError) as e:
            problem = e.__class__.__name__
            raise UsageError(f"cannot read the deployed server's config {path}: {problem} (run as root)") from None
        config = loaded if isinstance(loaded, dict) else {}
    model = _option(argv, "--model") or config.get("model")
    if model is None and len(argv) > 2 and argv[1] == "serve":
        model = argv[2]
    if not model:
        raise UsageError("the deployed server's command line names no model: --vs cannot find it")
    served = _option(argv, "--served-model-name") or config.get("served-model-name") or model
    python = argv[0]
    if not python.startswith("/"):
        raise UsageError(f"the deployed server runs {python!r}, not an absolute path: --vs cannot find its engine")
    if Path(python).name == "vllm":  # the console script: its venv's python
        python = str(Path(python).with_name("python"))
    return Engine(python=python, model_dir=str(model), served_name=str(served))


def _read_yaml(path: str) -> Any:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def deployed_engine(root: str) -> Engine:
    """The engine of the server listening at ``root`` on this machine."""
    if not hostinfo.is_local(root):
        raise UsageError(f"--vs needs the deployed server on this machine; {root} is not")
    port = urlsplit(root).port or 80
    pid = hostinfo.listener_pid(port)
    if pid is None:
        raise UsageError(f"no process of this machine listens on port {port} (or it cannot be seen: run as root)")
    raw = (hostinfo.PROC / str(pid) / "cmdline").read_bytes()
    return engine_from_cmdline([a.decode() for a in raw.split(b"\0") if a])


class BareServer:
    """``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs) with defaults."""

    def __init__(self, engine: Engine, port: int, extra: list[str], workdir: Path) -> None:
        self.engine = engine
        self.port = port
        self.extra = extra
        self.workdir = workdir
        self.root = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "server.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [
            self.engine.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.engine.model_dir,
            "--served-model-name", self.engine.served_name, "--host", "127.0.0.1", "--port", str(self.port),
            *self.extra,
        ]  # fmt: skip

    def command_line(self) -> list[str]:
        return ["vllm serve", self.engine.model_dir, *self.command()[5:]]

    def environment(self) -> dict[str, str]:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        return {
            **keep,
            "HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }

    def start(self, timeout: float = READY_TIMEOUT) -> float:
        """Start it and wait until it answers a completion; the seconds that took."""
        if _answers(f"{self.root}/health"):
            raise UsageError(f"port {self.port} already serves something: choose another with --vs-port (VS_PORT=)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                cwd=self.workdir,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        print(f"[bench] vllm-defaults: starting {' '.join(self.command_line())} (log {self.log})", flush=True)
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise UsageError(f"the vllm-defaults server exited with {self.proc.returncode}: {self.last_error()}")
            if _answers(f"{self.root}/health") and self._completes():
                return time.monotonic() - started
            time.sleep(1.0)
        raise UsageError(f"the vllm-defaults server did not answer within {timeout:g} s; see {self.log}")

    def _completes(self) -> bool:
        body: dict[str, Any] = {"model": self.engine.served_name, "prompt": "Hello", "max_tokens": 1}
        try:
            return requests.post(f"{self.root}/v1/completions", json=body, timeout=60).status_code == 200
        except requests.RequestException:
            return False

    def last_error(self) -> str:
        """The last error line of its log (vLLM's ValueError says what to change)."""
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return f"see {self.log}"
        errors = [line.strip() for line in lines if "Error" in line]
        return (errors[-1][-400:] if errors else f"see {self.log}") + " (extra options: VS_ARGS=...)"

    def stop(self) -> None:
        """End its whole process group: TERM, then KILL after STOP_TIMEOUT."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        # vLLM's engine may outlive its API server: the rest of the group goes too
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> BareServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False
