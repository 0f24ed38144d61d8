"""Where agentsched's counters and histograms keep their numbers, and how they are read.

prometheus-client's `Counter` and `Histogram` take a lock per value and validate each
call; every job pays that several times, and its text renderer costs 5-7 µs a sample,
which makes a scrape of a worker with 100 functions (about 2,000 samples) take tens of
milliseconds. Here a metric is a `Family`: a dict from label values to plain numbers,
changed under one lock per family. The numbers reach Prometheus two ways:

- `Collector` is a prometheus-client custom collector in the default registry, so
  `generate_latest(REGISTRY)` (the API's `/metrics`, a user's own exporter, the tests'
  `REGISTRY.get_sample_value`) sees them like any metric;
- `render` writes the text format (0.0.4) straight from the dicts, with each series'
  label text built once, and adds the rest of the registry through prometheus-client:
  the worker's metrics port answers with it.

Metric objects are defined in `metrics.py`, nowhere else.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector as _Collector
from prometheus_client.utils import floatToGoString

Key = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(names: Sequence[str], values: Iterable[str]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


def _go(value: float) -> str:
    """A number as prometheus-client writes it (Go's formatting: `+Inf`, `1e+06`)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _number(value: float) -> str:
    # Counts are whole numbers: "3.0" without floatToGoString's checks (from a million
    # on, Go writes an exponent).
    if value.is_integer() and abs(value) < 1_000_000:
        return f"{int(value)}.0"
    return _go(value)


class Family:
    """One metric: its name, help text, label names, and a value per label set."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.lock = threading.Lock()
        self._text: dict[Key, Any] = {}  # the label part of each series' lines, built once

    def head(self, sample_name: str) -> str:
        doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {sample_name} {doc}\n# TYPE {sample_name} {self.kind}\n"

    def family(self) -> Any:
        raise NotImplementedError

    def render(self, out: list[str]) -> None:
        raise NotImplementedError


class CounterFamily(Family):
    """A counter per label set (exposed as `<name>_total`)."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, labelnames)
        self.values: dict[Key, float] = {}

    def inc(self, key: Key, amount: float = 1) -> None:
        with self.lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def snapshot(self) -> list[tuple[Key, float]]:
        with self.lock:
            return list(self.values.items())

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, value in self.snapshot():
            family.add_metric(key, value)
        return family

    def render(self, out: list[str]) -> None:
        total = f"{self.name}_total"
        out.append(self.head(total))
        text = self._text
        for key, value in self.snapshot():
            prefix = text.get(key)
            if prefix is None:
                labels = _labels(self.labelnames, key)
                prefix = text[key] = f"{total}{{{labels}}} " if labels else f"{total} "
            out.append(f"{prefix}{_number(value)}\n")


class HistogramFamily(Family):
    """A histogram per label set: a count per bucket (not cumulative), then the sum."""

    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = sorted(float(b) for b in buckets)
        self.bounds = [*bounds, math.inf] if bounds[-1] != math.inf else bounds
        self.les = [_go(b) for b in self.bounds]
        self.values: dict[Key, list[float]] = {}

    def observe(self, key: Key, value: float) -> None:
        # The first bucket whose upper bound is >= value (Prometheus' `le`).
        index = bisect.bisect_left(self.bounds, value)
        with self.lock:
            series = self.values.get(key)
            if series is None:
                series = self.values[key] = [0.0] * (len(self.bounds) + 1)
            series[index] += 1
            series[-1] += value

    def snapshot(self) -> list[tuple[Key, list[float]]]:
        with self.lock:
            return [(key, list(series)) for key, series in self.values.items()]

    @staticmethod
    def cumulative(series: list[float]) -> list[float]:
        running, out = 0.0, []
        for count in series[:-1]:
            running += count
            out.append(running)
        return out

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, series in self.snapshot():
            counts = self.cumulative(series)
            family.add_metric(key, list(zip(self.les, counts, strict=True)), series[-1])
        return family

    def render(self, out: list[str]) -> None:
        out.append(self.head(self.name))
        text = self._text
        for key, series in self.snapshot():
            lines = text.get(key)
            if lines is None:
                labels = _labels(self.labelnames, key)
                sep = "," if labels else ""
                lines = text[key] = (
                    [f'{self.name}_bucket{{{labels}{sep}le="{le}"}} ' for le in self.les],
                    f"{self.name}_count{{{labels}}} " if labels else f"{self.name}_count ",
                    f"{self.name}_sum{{{labels}}} " if labels else f"{self.name}_sum ",
                )
            buckets, count, total = lines
            counts = self.cumulative(series)
            out.extend(f"{p}{_number(c)}\n" for p, c in zip(buckets, counts, strict=True))
            out.append(f"{count}{_number(counts[-1])}\n")
            out.append(f"{total}{_go(series[-1])}\n")


class Collector(_Collector):
    """The families as prometheus-client metric families, in the default registry."""

    def __init__(self, families: Sequence[Family]) -> None:
        self.families = list(families)
        self._rendering = threading.local()

    def describe(self) -> Iterator[Any]:
        # Names only: without describe() the registry would collect at registration.
        for f in self.families:
            kind = CounterMetricFamily if f.kind == "counter" else HistogramMetricFamily
            yield kind(f.name, f.documentation, labels=f.labelnames)

    def collect(self) -> Iterator[Any]:
        if getattr(self._rendering, "active", False):
            return  # `render` writes these itself
        for f in self.families:
            yield f.family()

    def render(self, registry: Any = REGISTRY) -> bytes:
        """The text format of `registry`: these families directly, the rest through
        prometheus-client (its process metrics, the Redis gauges, a user's own)."""
        out: list[str] = []
        for f in self.families:
            f.render(out)
        self._rendering.active = True
        try:
            rest = generate_latest(registry)
        finally:
            self._rendering.active = False
        return "".join(out).encode() + rest
