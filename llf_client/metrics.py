"""vLLM's Prometheus metrics: the one parser of Prometheus text in LLF.

Built on `prometheus_client`'s parser (`text_string_to_metric_families`). Used by
`llf-client` (the queue depth before bursting, `top`) and by the load tests' server
cross-check (loadtests/prom.py).

- `Metrics.parse(text)`: every sample by name, with its labels;
- `Metrics.value(name, where)`: a gauge or counter summed over its series;
- `Metrics.histogram(family, where)`: cumulative buckets, count and sum, summed over
  the series whose labels match `where` (a series without such a label matches);
- `Histogram.minus(before)`: the histogram of what happened between two scrapes;
- `Histogram.quantile(q)`: interpolated inside a bucket like Prometheus'
  `histogram_quantile`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = Mapping[str, str]


class MetricsParseError(ValueError):
    """The text is not Prometheus' text format; the message names the line."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def matches(labels: Labels, where: Labels | None) -> bool:
    """True when every label of `where` that the series has equals the wanted value."""
    if not where:
        return True
    return all(labels.get(key, wanted) == wanted for key, wanted in where.items())


def _bad_line(text: str) -> tuple[int, str, str] | None:
    """The first line the parser refuses: (number, line, reason)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            for _ in text_string_to_metric_families(line + "\n"):
                pass
        except ValueError as err:
            return number, line, str(err)
    return None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets `(le, count)` sorted by `le`, plus count and sum."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    @classmethod
    def empty(cls) -> Histogram:
        return cls(buckets=(), count=0.0, sum=0.0)

    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """Estimate the q-quantile (0..1) like Prometheus' `histogram_quantile`."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower_le, lower_count = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower_le  # the highest finite bound, as Prometheus does
                if cumulative == lower_count:
                    return le
                return lower_le + (le - lower_le) * (rank - lower_count) / (cumulative - lower_count)
            lower_le, lower_count = le, cumulative
        return lower_le

    def in_first_bucket(self, q: float) -> bool:
        """True when the q-quantile lies in the lowest bucket, where nothing is resolved."""
        if self.count <= 0 or not self.buckets:
            return False
        return self.buckets[0][1] >= q * self.count

    def minus(self, before: Histogram) -> Histogram | None:
        """What happened since `before`; None when the counters went back (a restart)."""
        prior = dict(before.buckets)
        buckets = tuple((le, cumulative - prior.get(le, 0.0)) for le, cumulative in self.buckets)
        count = self.count - before.count
        if count < 0 or any(c < 0 for _, c in buckets):
            return None
        return Histogram(buckets=buckets, count=count, sum=self.sum - before.sum)

    def plus(self, other: Histogram) -> Histogram:
        """Two histograms of the same family added bucket by bucket (two servers)."""
        merged: dict[float, float] = dict(self.buckets)
        for le, cumulative in other.buckets:
            merged[le] = merged.get(le, 0.0) + cumulative
        return Histogram(
            buckets=tuple(sorted(merged.items())),
            count=self.count + other.count,
            sum=self.sum + other.sum,
        )


class Metrics:
    """One scrape of a /metrics page: samples by name."""

    def __init__(self, samples: Iterable[Sample] = ()) -> None:
        self.samples: dict[str, list[Sample]] = {}
        for sample in samples:
            self.samples.setdefault(sample.name, []).append(sample)

    @classmethod
    def parse(cls, text: str) -> Metrics:
        """Parse Prometheus text; MetricsParseError names the first bad line."""
        try:
            samples = [
                Sample(s.name, dict(s.labels), float(s.value))
                for family in text_string_to_metric_families(text)
                for s in family.samples
            ]
        except (ValueError, TypeError, IndexError) as err:
            bad = _bad_line(text)
            if bad is None:
                raise MetricsParseError(f"not Prometheus text format ({err})") from err
            number, line, reason = bad
            raise MetricsParseError(
                f"not Prometheus text format: line {number} {_short(line)!r} ({_short(reason)})"
            ) from err
        return cls(samples)

    def __contains__(self, name: str) -> bool:
        return name in self.samples

    def get(self, name: str, where: Labels | None = None) -> list[Sample]:
        """The samples of one name whose labels match `where`."""
        return [s for s in self.samples.get(name, []) if matches(s.labels, where)]

    def value(self, name: str, where: Labels | None = None) -> float | None:
        """The sum over the matching series (NaN ignored); None when there is none."""
        found = self.get(name, where)
        if not found:
            return None
        return sum(s.value for s in found if not math.isnan(s.value))

    def label_values(self, name: str, label: str) -> list[str]:
        """The distinct values of a label over the samples of one name, sorted."""
        return sorted({s.labels[label] for s in self.samples.get(name, []) if label in s.labels})

    def histogram(self, family: str, where: Labels | None = None) -> Histogram | None:
        """A histogram family summed over its matching series; None when absent."""
        buckets: dict[float, float] = {}
        for sample in self.get(f"{family}_bucket", where):
            if "le" not in sample.labels:
                continue
            le = float(sample.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + sample.value
        if not buckets:
            return None
        return Histogram(
            buckets=tuple(sorted(buckets.items())),
            count=self.value(f"{family}_count", where) or 0.0,
            sum=self.value(f"{family}_sum", where) or 0.0,
        )

    def histograms(self, where: Labels | None = None) -> dict[str, Histogram]:
        """Every histogram family (any name with `_bucket` samples that carry `le`)."""
        families = [n.removesuffix("_bucket") for n in self.samples if n.endswith("_bucket")]
        found = {f: self.histogram(f, where) for f in families}
        return {f: h for f, h in found.items() if h is not None}


def histogram_delta(
    before: Metrics, after: Metrics, family: str, where: Labels | None = None
) -> Histogram | None:
    """The family's histogram between two scrapes.

    None when the later scrape lacks it or the counters went back (a restart); a
    family the earlier scrape lacks is counted from zero.
    """
    later = after.histogram(family, where)
    if later is None:
        return None
    return later.minus(before.histogram(family, where) or Histogram.empty())


def counter_delta(
    before: Metrics, after: Metrics, name: str, where: Labels | None = None
) -> float | None:
    """How much a counter (summed over its series) grew; None if absent or reset."""
    later = after.value(name, where)
    if later is None:
        return None
    delta = later - (before.value(name, where) or 0.0)
    return delta if delta >= 0 else None


def first_present(metrics: Metrics, names: Iterable[str]) -> str | None:
    """The first of several names (of samples or histogram families) the scrape has.

    vLLM renamed some metrics between versions.
    """
    return next((n for n in names if n in metrics or f"{n}_bucket" in metrics), None)
