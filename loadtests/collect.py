"""Raw samples on disk: one JSON-lines file per Locust process, merged on the master.

Every process (the local runner, or each worker) appends a line per finished
request and a heartbeat per second (its own CPU use, measured with
``resource.getrusage``, and the start of its oldest request in flight). The master
reads all files as they grow: it takes the verdict from the raw samples of every
worker, and knows from the heartbeats when the requests of a stage have all ended.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from loadtests.metrics import Sample

GENERATOR_ROLES = ("local", "worker")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU use of this process between two calls, in percent of one core."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = cpu_seconds,
    ) -> None:
        self._clock = clock
        self._cpu = cpu
        self._t = clock()
        self._c = cpu()

    def percent(self) -> float:
        t, c = self._clock(), self._cpu()
        dt = t - self._t
        value = 100.0 * (c - self._c) / dt if dt > 0 else 0.0
        self._t, self._c = t, c
        return value


class RecordWriter:
    """Appends this process' records to ``<dir>/<role>-<pid>.jsonl``, line-buffered."""

    def __init__(self, directory: Path, role: str, pid: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.proc = f"{role}-{pid or os.getpid()}"
        self.path = directory / f"{self.proc}.jsonl"
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8", buffering=1)
        self.write({"ev": "hello", "role": role, "t": time.time()})

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def sample(self, sample: Sample) -> None:
        self.write({"ev": "sample", **sample.to_json()})

    def heartbeat(
        self,
        cpu: float,
        inflight: int,
        oldest: float | None,
        users: int,
        t: float | None = None,
    ) -> None:
        self.write(
            {
                "ev": "hb",
                "t": time.time() if t is None else t,
                "cpu": round(cpu, 2),
                "inflight": inflight,
                "oldest": oldest,
                "users": users,
            }
        )

    def close(self) -> None:
        if self._file is not None:
            self.write({"ev": "done", "t": time.time()})
            self._file.close()
            self._file = None


@dataclass
class Proc:
    role: str = "unknown"
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    offset: int = 0
    partial: str = ""


class Collector:
    """Reads every process' records incrementally (the master's view of the run)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.samples: list[Sample] = []
        self.procs: dict[str, Proc] = {}

    def poll(self) -> None:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.jsonl")):
            proc = self.procs.setdefault(path.stem, Proc())
            with path.open("r", encoding="utf-8") as f:
                f.seek(proc.offset)
                data = f.read()
                proc.offset = f.tell()
            lines = (proc.partial + data).split("\n")
            proc.partial = lines.pop()  # an unfinished last line waits for the next poll
            for line in lines:
                if line.strip():
                    self._record(proc, json.loads(line))

    def _record(self, proc: Proc, record: dict[str, Any]) -> None:
        kind = record.pop("ev", None)
        if kind == "sample":
            self.samples.append(Sample.from_json(record))
        elif kind == "hb":
            proc.heartbeats.append(record)
        elif kind == "hello":
            proc.role = record.get("role", "unknown")
        elif kind == "done":
            proc.done = True

    def generators(self) -> dict[str, Proc]:
        return {name: p for name, p in self.procs.items() if p.role in GENERATOR_ROLES}

    def settled(self, t: float, expected: int) -> bool:
        """True when every request started before ``t`` has ended, in every generator.

        A process counts when it has closed, or when its latest heartbeat came after
        ``t`` and its oldest request in flight started at or after ``t``.
        """
        generators = self.generators()
        if len(generators) < expected:
            return False
        for proc in generators.values():
            if proc.done:
                continue
            if not proc.heartbeats:
                return False
            last = proc.heartbeats[-1]
            if last["t"] < t:
                return False
            if last.get("oldest") is not None and last["oldest"] < t:
                return False
        return True

    def cpu(self, start: float, end: float) -> dict[str, float]:
        """Mean CPU (% of one core) of each generator process between start and end."""
        out = {}
        for name, proc in self.generators().items():
            values = [h["cpu"] for h in proc.heartbeats if start < h["t"] <= end + 1.0]
            if values:
                out[name] = sum(values) / len(values)
        return out

    def in_window(self, start: float, end: float) -> list[Sample]:
        """The samples whose request started in ``[start, end)``."""
        return [s for s in self.samples if start <= s.start < end]
