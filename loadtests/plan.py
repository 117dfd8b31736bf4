"""Stages of a run: a warm-up, then the measured stage(s) of the chosen load shape.

- closed: N users, each sending its next request as soon as the last one ended;
- open: requests arrive at a rate (Poisson or Gamma); N users is the most that can be
  in flight, a request waiting for a free user counts as client queue time;
- step: closed loop at rising concurrency (1, 2, 4, ... up to N), the duration split
  evenly; the highest step that meets every target is the capacity.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtests.config import RunConfig
from loadtests.errors import UsageError

MIN_STEP_SECONDS = 5.0


@dataclass(frozen=True)
class Stage:
    name: str
    users: int
    duration: float
    measured: bool
    kind: str  # closed | open (which user class runs it)


def step_levels(top: int, explicit: list[int] | None = None) -> list[int]:
    """1, 2, 4, ... and ``top`` itself, or the explicit list (strictly rising)."""
    if explicit:
        if any(b <= a for a, b in zip(explicit, explicit[1:], strict=False)) or explicit[0] < 1:
            raise UsageError(f"--step-users must rise strictly from 1 or more: {explicit}")
        return list(explicit)
    levels = []
    users = 1
    while users < top:
        levels.append(users)
        users *= 2
    levels.append(top)
    return levels


def build_plan(config: RunConfig) -> list[Stage]:
    kind = "open" if config.shape == "open" else "closed"
    stages: list[Stage] = []
    if config.shape == "step":
        levels = step_levels(config.users, config.step_users)
        each = config.duration / len(levels)
        if each < MIN_STEP_SECONDS:
            raise UsageError(
                f"--duration {config.duration:g}s gives {each:.1f} s per step for "
                f"{len(levels)} steps; give at least {MIN_STEP_SECONDS:g} s per step"
            )
        if config.warmup > 0:
            stages.append(Stage("warmup", levels[0], config.warmup, False, kind))
        stages += [Stage(f"step-{u}", u, each, True, kind) for u in levels]
        return stages
    if config.warmup > 0:
        stages.append(Stage("warmup", config.users, config.warmup, False, kind))
    stages.append(Stage("measure", config.users, config.duration, True, kind))
    return stages
