"""The ledger as live metrics: a Prometheus/OpenMetrics endpoint for the stacks providers
already run beside dcgm-exporter and node exporters.

Use::

    text = render(ledger)                       # the exposition, bytes
    serve(ledger_value, port=9464)              # gosok ledger serve: until SIGTERM/Ctrl-C

Every series is labelled by ``provider``, ``cluster``, ``gpu_type`` and ``project`` (plus
``state`` or ``cause``), never by job, rank or step, so the number of series stays bounded
by the programme's shape, not by its history. Figures come from ``programme.programme_view``
(allocations) and ``report.job_rows`` (each job's goodput breakdown), computed at scrape
time (the idle rule: below 5 % utilisation), at most every ``cache_s`` seconds:

- ``gosok_gpu_hours_total{state}``: allocated, used, productive and idle GPU-hours of the
  allocations so far (see ``programme.py`` for what each counts);
- ``gosok_job_goodput_ratio``: productive over wall device-time of the group's jobs;
- ``gosok_job_attempts_total{cause}``: ended attempts by how they ended (``ok``,
  ``exit``, ``node_lost``, ...);
- ``gosok_allocated_gpus``, ``gosok_idle_gpus``: GPUs allocated now, and of those the
  ones no running job holds; ``gosok_running_jobs``;
- ``gosok_ledger_up``: 1 when the ledger answered this scrape.

The hours are recomputed from the ledger at each scrape, so a figure can be revised
downwards when the ledger learns more (a failure turns past steps into lost work, a grant
is corrected): Prometheus then sees a counter reset for that series. Each scrape reads the
whole ledger (every job's breakdown); ``benchmarks/overhead/ledger.py`` measures it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .programme import GROUP_KEYS, STATES

LABELS = list(GROUP_KEYS)


def _families(ledger: Any, now: float) -> list[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from .report import job_rows, programme_of

    allocations = ledger.allocations()
    jobs = job_rows(ledger, now_unix=now)
    view = programme_of(ledger, now, jobs=jobs)
    provider_of = {a["cluster"]: a["provider"] for a in allocations}

    def key(row: dict[str, Any]) -> tuple[str, ...]:
        row = {**row, "provider": row.get("provider") or provider_of.get(row["cluster"], "")}
        return tuple(str(row.get(k) or "") for k in GROUP_KEYS)

    hours = CounterMetricFamily(
        "gosok_gpu_hours", "GPU-hours of the allocations by state", labels=[*LABELS, "state"]
    )
    allocated = GaugeMetricFamily("gosok_allocated_gpus", "GPUs allocated now", labels=LABELS)
    idle = GaugeMetricFamily(
        "gosok_idle_gpus", "GPUs allocated now that no running job holds", labels=LABELS
    )
    for group in view["groups"]:
        labels = list(key(group))
        for state in STATES:
            hours.add_metric([*labels, state], group[f"{state}_hours"])
        allocated.add_metric(labels, group["gpus_now"])
    running_gpus: dict[tuple, int] = {}
    running = {key(g): 0 for g in view["groups"]}
    device_s: dict[tuple, list[float]] = {}
    for job in jobs:
        k = key(job)
        totals = device_s.setdefault(k, [0.0, 0.0])
        totals[0] += int(job.get("gpus") or 0) * float(job["productive"])
        totals[1] += int(job.get("gpus") or 0) * float(job["wall_s"])
        running.setdefault(k, 0)
        if job["running"]:
            running[k] += 1
            running_gpus[k] = running_gpus.get(k, 0) + int(job.get("gpus") or 0)
    for group in view["groups"]:
        k = key(group)
        idle.add_metric(list(k), max(group["gpus_now"] - running_gpus.get(k, 0), 0))
    goodput = GaugeMetricFamily(
        "gosok_job_goodput_ratio", "Productive over wall device-time of the jobs", labels=LABELS
    )
    for k, (productive, wall) in sorted(device_s.items()):
        if wall > 0:
            goodput.add_metric(list(k), productive / wall)
    jobs_now = GaugeMetricFamily("gosok_running_jobs", "Jobs running now", labels=LABELS)
    for k, count in sorted(running.items()):
        jobs_now.add_metric(list(k), count)
    attempts = CounterMetricFamily(
        "gosok_job_attempts", "Attempts by how they ended", labels=[*LABELS, "cause"]
    )
    for row in ledger.attempt_counts():
        attempts.add_metric([*key(row), str(row["cause"])], int(row["n"]))
    return [hours, goodput, attempts, allocated, idle, jobs_now]


class LedgerCollector:
    """A prometheus_client collector over one ledger, reopened when it was lost."""

    def __init__(
        self,
        opener: Callable[[], Any],
        cache_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open = opener
        self._clock = clock
        self._ledger: Any = None
        self._cache_s = cache_s
        self._cached: tuple[float, list[Any]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("gosok_ledger_up", "1 when the ledger answered this scrape")
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self._cache_s:
                try:
                    self._ledger = self._ledger or self._open()
                    self._cached = (now, _families(self._ledger, now))
                except Exception:
                    with contextlib.suppress(Exception):
                        self._ledger.close()
                    self._ledger, self._cached = None, None
            families = self._cached[1] if self._cached else []
        up.add_metric([], 1.0 if families else 0.0)
        yield up
        yield from families


def render(ledger: Any, now_unix: float | None = None) -> bytes:
    """The Prometheus text exposition of ``ledger``'s metrics."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    clock = time.time if now_unix is None else (lambda: float(now_unix))
    registry.register(LedgerCollector(lambda: ledger, cache_s=0.0, clock=clock))
    return generate_latest(registry)


def serve(
    opener: Callable[[], Any],
    port: int,
    host: str = "127.0.0.1",
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    duration_s: float | None = None,
) -> None:
    """Serve ``/metrics`` on ``host:port`` until SIGTERM, Ctrl-C, ``stop`` or ``duration_s``."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(LedgerCollector(opener))
    server, thread = start_http_server(port, addr=host, registry=registry)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if ready is not None:
        ready(server.server_port)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        while not stop.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        server.shutdown()
        thread.join(5)
