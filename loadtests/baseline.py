"""Bench curves: the figures of each step over its repeats, baselines and the verdict.

A step's figure is the mean over the repeats; its noise is the spread of the repeats
(max - min) in percent of that mean. A change against the baseline counts only when it
goes the bad way (less throughput, more latency) by more than the noise of both runs
together (the sum of their spreads: a difference the repeats of the two runs could
show between themselves is not one) and more than the minimum effect: a regression.
The same beyond the band the good way is an improvement; anything else is within noise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.errors import UsageError

CHAT, EMBEDDINGS = "chat", "embeddings"
# per curve: (key in a stage of result.json, label, higher is better)
FIGURES: dict[str, tuple[tuple[str, str, bool], ...]] = {
    CHAT: (
        ("output_throughput", "output tok/s", True),
        ("total_token_throughput", "total tok/s", True),
        ("request_throughput", "req/s", True),
        ("p50_ttft_ms", "TTFT p50 ms", False),
        ("p95_ttft_ms", "TTFT p95 ms", False),
        ("p50_itl_ms", "ITL p50 ms", False),
        ("p95_itl_ms", "ITL p95 ms", False),
        ("mean_e2el_ms", "E2EL mean ms", False),
        ("p50_e2el_ms", "E2EL p50 ms", False),
        ("p95_e2el_ms", "E2EL p95 ms", False),
    ),
    EMBEDDINGS: (
        ("request_throughput", "req/s", True),
        ("total_token_throughput", "input tok/s", True),
        ("p50_e2el_ms", "E2EL p50 ms", False),
        ("p95_e2el_ms", "E2EL p95 ms", False),
    ),
}
DEFAULT_MIN_EFFECT = 5.0  # percent
REGRESSION, IMPROVEMENT, NOISE = "regression", "improvement", "within noise"
BASELINE_VERSION = 1


def step_figures(curve: str, repeats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and noise (percent spread) of each figure over a step's repeats."""
    mean: dict[str, float | None] = {}
    noise: dict[str, float | None] = {}
    for key, _, _ in FIGURES[curve]:
        values = [float(r[key]) for r in repeats if r.get(key) is not None]
        if not values:
            mean[key] = noise[key] = None
            continue
        m = sum(values) / len(values)
        mean[key] = m
        noise[key] = (max(values) - min(values)) / abs(m) * 100.0 if m else 0.0
    return {"mean": mean, "noise_pct": noise}


@dataclass(frozen=True)
class Delta:
    curve: str
    users: int
    figure: str
    label: str
    baseline: float
    current: float
    change_pct: float  # (current - baseline) / baseline
    band_pct: float  # the noise of the two runs added up, at least the minimum effect
    verdict: str

    def row(self) -> dict[str, Any]:
        return {
            "curve": self.curve,
            "users": self.users,
            "figure": self.figure,
            "baseline": self.baseline,
            "current": self.current,
            "change_pct": self.change_pct,
            "band_pct": self.band_pct,
            "verdict": self.verdict,
        }


def compare(current: Mapping[str, Any], baseline: Mapping[str, Any], min_effect: float) -> list[Delta]:
    """Every figure of every step both runs have, judged (see the module's docstring)."""
    deltas = []
    for curve, figures in FIGURES.items():
        cur_steps = {s["users"]: s for s in (current.get("curves", {}).get(curve) or {}).get("steps", [])}
        base_steps = {s["users"]: s for s in (baseline.get("curves", {}).get(curve) or {}).get("steps", [])}
        for users in sorted(cur_steps.keys() & base_steps.keys()):
            cur, base = cur_steps[users], base_steps[users]
            for key, label, higher_better in figures:
                c, b = cur["mean"].get(key), base["mean"].get(key)
                if c is None or b is None or b == 0:
                    continue
                band = max(min_effect, (cur["noise_pct"].get(key) or 0.0) + (base["noise_pct"].get(key) or 0.0))
                change = (c - b) / abs(b) * 100.0
                worse = -change if higher_better else change
                verdict = REGRESSION if worse > band else IMPROVEMENT if -worse > band else NOISE
                deltas.append(Delta(curve, users, key, label, b, c, change, band, verdict))
    return deltas


def regressed(deltas: Sequence[Delta]) -> bool:
    return any(d.verdict == REGRESSION for d in deltas)


def delta_table(deltas: Sequence[Delta]) -> list[str]:
    """The per-step deltas, one line each."""
    lines = [f"{'curve':<11}{'users':>6}  {'figure':<14}{'baseline':>11}{'now':>11}{'change':>9}{'band':>8}  verdict"]
    for d in deltas:
        lines.append(
            f"{d.curve:<11}{d.users:>6}  {d.label:<14}{d.baseline:>11.2f}{d.current:>11.2f}"
            f"{d.change_pct:>+8.1f}%{d.band_pct:>7.1f}%  {d.verdict.upper() if d.verdict == REGRESSION else d.verdict}"
        )
    return lines


# -- baseline files -----------------------------------------------------------------


def baseline_path(directory: Path, key: str) -> Path:
    return directory / f"{key}.json"


def load_baseline(directory: Path, key: str) -> dict[str, Any] | None:
    """The stored baseline of a host profile, None when there is none."""
    path = baseline_path(directory, key)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(
            f"baseline {path} cannot be read ({e}): delete it or store a new one (make bench-save)"
        ) from None
    if not isinstance(doc, dict) or doc.get("kind") != "llf-bench" or "curves" not in doc:
        raise UsageError(f"baseline {path} is not a bench result: delete it or store a new one (make bench-save)")
    return doc


def save_baseline(directory: Path, doc: Mapping[str, Any]) -> Path:
    """Store a bench result as the baseline of its host profile (without the comparison)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = baseline_path(directory, doc["profile"]["key"])
    kept = {k: v for k, v in doc.items() if k not in ("comparison", "vs")}
    path.write_text(json.dumps(kept, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
