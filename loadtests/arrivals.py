"""Open-loop arrival schedules: Poisson (burstiness 1) or Gamma arrivals.

As in ``vllm bench serve --request-rate R --burstiness B``: the gaps between
arrivals are Gamma-distributed with shape ``B`` and mean ``1/R``; B < 1 is burstier
than Poisson, B > 1 more regular. A request's latency is also measured from its
scheduled arrival (``client_queue_time = st - t_sched``), so a busy or slow client
cannot hide queueing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


class ArrivalSchedule:
    """Arrival times (on ``clock``) handed out one by one to whichever user is free."""

    def __init__(
        self,
        rate: float,
        burstiness: float = 1.0,
        seed: int = 0,
        clock: Callable[[], float] = time.perf_counter,
        limit: int = 1_000_000,
    ) -> None:
        if rate <= 0 or burstiness <= 0:
            raise ValueError("rate and burstiness must be positive")
        self.rate = rate
        self.burstiness = burstiness
        self.limit = limit
        self._rng = np.random.default_rng(seed)
        self._clock = clock
        self._t0: float | None = None
        self._next = 0.0
        self.issued = 0

    def gap(self) -> float:
        theta = 1.0 / (self.rate * self.burstiness)
        return float(self._rng.gamma(shape=self.burstiness, scale=theta))

    def claim(self) -> float | None:
        """The next arrival time; the schedule starts at the first claim. None when spent."""
        if self.issued >= self.limit:
            return None
        if self._t0 is None:
            self._t0 = self._clock()
            self._next = self._t0
        t = self._next
        self._next += self.gap()
        self.issued += 1
        return t
