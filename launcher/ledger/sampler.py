"""Utilisation sampling of this machine, and idle-span detection over samples.

Use::

    from gosok.launcher.ledger.sampler import UtilSampler, idle_spans

    sampler = UtilSampler(interval_s=5.0, node="gpu-07", cluster="h200")
    sampler.start()
    ...
    rows = sampler.drain()          # samples since the last drain
    rows += sampler.stop()          # the rest; drain() + stop() return each sample once
    spans = idle_spans(rows, idle_below_pct=5.0, idle_for_s=60.0)

    tracker = IdleTracker(idle_below_pct=5.0, idle_for_s=60.0)   # rows arriving in batches
    ended = tracker.feed(batch)     # spans that ended; a span still going waits for more
    rest = tracker.feed([], final=True)

On a GPU node (NVML found through ``pynvml`` from the ``nvidia-ml-py`` package, imported
only when sampling starts) each tick gives one row per GPU (``device="gpu0"`` ...:
utilisation %, memory used, power W, SM clock MHz) and one ``device="cpu"`` row (CPU %,
host memory used, from psutil). Elsewhere only the ``cpu`` row. Given ``pids`` (a launch's
ranks on this node), the ``cpu`` row is those processes' and their descendants' share of
the machine's CPU and their resident memory instead, so a job is measured apart from
whatever else runs on the host (the local cluster's nodes share one). Rows are dicts with
the columns of the ledger's ``samples`` table. A metric a GPU does not report is ``None``.
"""

from __future__ import annotations

import math
import socket
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psutil


class _Nvml:
    """NVML handles for every GPU, or ``None`` from ``open()`` where there is no NVML."""

    def __init__(self, module: Any, handles: list[Any]) -> None:
        self.nvml = module
        self.handles = handles

    @classmethod
    def open(cls) -> _Nvml | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            return cls(pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)])
        except Exception:
            return None

    def _read(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception:
            return None

    def rows(self) -> list[dict[str, Any]]:
        nv = self.nvml
        rows = []
        for index, handle in enumerate(self.handles):
            util = self._read(lambda h=handle: nv.nvmlDeviceGetUtilizationRates(h).gpu)
            memory = self._read(lambda h=handle: nv.nvmlDeviceGetMemoryInfo(h).used)
            milliwatts = self._read(lambda h=handle: nv.nvmlDeviceGetPowerUsage(h))
            clock = self._read(lambda h=handle: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
            rows.append(
                {
                    "device": f"gpu{index}",
                    "gpu_util_pct": None if util is None else float(util),
                    "mem_used_bytes": None if memory is None else int(memory),
                    "power_w": None if milliwatts is None else milliwatts / 1000.0,
                    "sm_clock_mhz": None if clock is None else float(clock),
                    "cpu_pct": None,
                }
            )
        return rows

    def close(self) -> None:
        self._read(self.nvml.nvmlShutdown)


class _Processes:
    """CPU share (% of all cores) and resident memory of some processes and their
    descendants; a process that is gone counts for nothing."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.roots: list[psutil.Process] = []
        for pid in pids:
            try:
                self.roots.append(psutil.Process(int(pid)))
            except psutil.Error:
                continue
        # cpu_percent() measures since its previous call on the same Process object.
        self.known: dict[int, psutil.Process] = {}
        self.cores = psutil.cpu_count() or 1
        self.read()

    def read(self) -> tuple[float, int]:
        found: dict[int, psutil.Process] = {}
        for root in self.roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                found.setdefault(proc.pid, self.known.get(proc.pid, proc))
        busy, rss = 0.0, 0
        for pid, proc in list(found.items()):
            try:
                busy += proc.cpu_percent(interval=None)
                rss += proc.memory_info().rss
            except psutil.Error:
                del found[pid]
        self.known = found
        return busy / self.cores, rss


class UtilSampler:
    """Samples this machine every ``interval_s`` seconds on a daemon thread.

    ``use_nvml=False`` skips GPUs; ``None`` uses NVML when it loads. At most
    ``max_pending`` rows wait for ``drain()``; older ones are dropped and counted in
    ``dropped``. ``pids``: measure the CPU and memory of these processes (and their
    children) rather than of the whole host.
    """

    def __init__(
        self,
        interval_s: float = 5.0,
        node: str | None = None,
        *,
        cluster: str = "",
        job_id: str | None = None,
        use_nvml: bool | None = None,
        max_pending: int = 200_000,
        clock: Callable[[], float] = time.time,
        pids: Iterable[int] | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s {interval_s!r}: must be a number > 0")
        self.interval_s = float(interval_s)
        self.node = node or socket.gethostname()
        self.cluster = cluster
        self.job_id = job_id
        self.use_nvml = use_nvml
        self.dropped = 0
        self._clock = clock
        self._pending: deque[dict[str, Any]] = deque(maxlen=max_pending)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: _Nvml | None = None
        self.pids = None if pids is None else [int(p) for p in pids]
        self._processes: _Processes | None = None

    @property
    def gpus(self) -> int:
        return len(self._nvml.handles) if self._nvml else 0

    def start(self) -> UtilSampler:
        if self._thread is not None:
            raise RuntimeError("UtilSampler already started")
        if self.use_nvml is not False:
            self._nvml = _Nvml.open()
        psutil.cpu_percent(interval=None)
        if self.pids is not None:
            self._processes = _Processes(self.pids)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gosok-util-sampler", daemon=True)
        self._thread.start()
        return self

    def sample_once(self) -> list[dict[str, Any]]:
        """One tick's rows (also what the thread records)."""
        unix = self._clock()
        if self._processes is not None:
            cpu_pct, mem_used = self._processes.read()
        else:
            memory = psutil.virtual_memory()
            cpu_pct = psutil.cpu_percent(interval=None)
            mem_used = memory.total - memory.available
        rows = [
            {
                "device": "cpu",
                "gpu_util_pct": None,
                "mem_used_bytes": int(mem_used),
                "power_w": None,
                "sm_clock_mhz": None,
                "cpu_pct": float(cpu_pct),
            }
        ]
        if self._nvml is not None:
            rows += self._nvml.rows()
        base = {"job_id": self.job_id, "cluster": self.cluster, "node": self.node, "unix": unix}
        return [base | row for row in rows]

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval_s
        while not self._stop.wait(max(next_tick - time.monotonic(), 0.0)):
            next_tick += self.interval_s
            rows = self.sample_once()
            with self._lock:
                overflow = len(rows) + len(self._pending) - (self._pending.maxlen or 0)
                self.dropped += max(overflow, 0)
                self._pending.extend(rows)

    def drain(self) -> list[dict[str, Any]]:
        """Rows recorded since the last ``drain()``."""
        with self._lock:
            rows = list(self._pending)
            self._pending.clear()
        return rows

    def stop(self) -> list[dict[str, Any]]:
        """Stop the thread; returns the rows not yet drained."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None
        return self.drain()


# What an idle span is stored with (``Ledger.add_idle_span``'s arguments).
SPAN_FIELDS = ("cluster", "node", "start_unix", "end_unix", "mean_util_pct", "device")


def utilisation(row: Mapping[str, Any]) -> float | None:
    """The busy figure of a row: GPU utilisation, else CPU utilisation."""
    value = row.get("gpu_util_pct")
    return row.get("cpu_pct") if value is None else value


def _series(samples: Iterable[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in samples:
        key = (row.get("cluster") or "", row.get("node") or "", row.get("device") or "")
        groups.setdefault(key, []).append(row)
    for rows in groups.values():
        rows.sort(key=lambda r: r["unix"])
    return groups


def _gap_limit(rows: list[Mapping[str, Any]], max_gap_s: float | None) -> float:
    if max_gap_s is not None:
        return max_gap_s
    times = [row["unix"] for row in rows]
    steps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    return 3 * statistics.median(steps) if steps else float("inf")


def _idle_runs(
    rows: list[Mapping[str, Any]], idle_below_pct: float, max_gap_s: float | None
) -> list[list[Mapping[str, Any]]]:
    """Maximal runs of consecutive idle rows (a missing figure or a gap ends a run)."""
    limit = _gap_limit(rows, max_gap_s)
    runs: list[list[Mapping[str, Any]]] = []
    current: list[Mapping[str, Any]] = []
    for row in rows:
        value = utilisation(row)
        idle = value is not None and value < idle_below_pct
        if current and (not idle or row["unix"] - current[-1]["unix"] > limit):
            runs.append(current)
            current = []
        if idle:
            current.append(row)
    if current:
        runs.append(current)
    return runs


def idle_spans(
    samples: Iterable[Mapping[str, Any]],
    idle_below_pct: float,
    idle_for_s: float,
    max_gap_s: float | None = None,
) -> list[dict[str, Any]]:
    """Spans where a device's utilisation stayed below ``idle_below_pct`` for at least
    ``idle_for_s`` seconds (first to last idle sample), per cluster, node and device.

    A sample without a figure, or a gap longer than ``max_gap_s`` (default: 3 x the
    series' median interval), ends a span. ``open`` is true when the span reaches the
    series' last sample, so it may go on.
    """
    spans = []
    for (cluster, node, device), rows in sorted(_series(samples).items()):
        last_unix = rows[-1]["unix"]
        for run in _idle_runs(rows, idle_below_pct, max_gap_s):
            start, end = run[0]["unix"], run[-1]["unix"]
            if end - start < idle_for_s:
                continue
            values = [utilisation(r) for r in run]
            spans.append(
                {
                    "cluster": cluster,
                    "node": node,
                    "device": device,
                    "start_unix": start,
                    "end_unix": end,
                    "mean_util_pct": sum(values) / len(values),
                    "samples": len(run),
                    "open": end == last_unix,
                }
            )
    return spans


def busy_intervals(
    samples: Iterable[Mapping[str, Any]], busy_from_pct: float, max_gap_s: float | None = None
) -> list[tuple[str, str, str, float, float]]:
    """``(cluster, node, device, start, end)`` for each sample at or above
    ``busy_from_pct``: it stands for its device until the next sample of the series, at
    most ``max_gap_s`` (default: 3 x the series' median interval; a lone sample: none)."""
    found = []
    for (cluster, node, device), rows in sorted(_series(samples).items()):
        limit = _gap_limit(rows, max_gap_s)
        for row, after in zip(rows, [*rows[1:], None], strict=True):
            value = utilisation(row)
            if value is None or value < busy_from_pct:
                continue
            end = row["unix"] + limit if after is None else min(after["unix"], row["unix"] + limit)
            if math.isfinite(end) and end > row["unix"]:
                found.append((cluster, node, device, float(row["unix"]), float(end)))
    return found


def trailing_idle(
    samples: Iterable[Mapping[str, Any]], idle_below_pct: float, max_gap_s: float | None = None
) -> list[Mapping[str, Any]]:
    """The samples of each series' idle run still going at its last sample: what a
    streaming caller keeps to find a span that continues into the next batch."""
    kept: list[Mapping[str, Any]] = []
    for rows in _series(samples).values():
        runs = _idle_runs(rows, idle_below_pct, max_gap_s)
        if runs and runs[-1][-1] is rows[-1]:
            kept += runs[-1]
    return kept


class SamplingSlot:
    """The sampler one node keeps for one job (a node agent's): started
    once, drained until stopped; every call is a no-op when none runs."""

    def __init__(self) -> None:
        self.sampler: UtilSampler | None = None

    def start(
        self, interval_s: float, node: str, cluster: str, job_id: str, pids: Any = None
    ) -> None:
        if self.sampler is None:
            self.sampler = UtilSampler(
                interval_s, node, cluster=cluster, job_id=job_id, pids=pids
            ).start()

    def drain(self, stop: bool = False) -> list[dict[str, Any]]:
        """The samples taken since the last drain; ``stop`` ends the sampling."""
        sampler = self.sampler
        if sampler is None:
            return []
        if stop:
            self.sampler = None
            return sampler.stop()
        return sampler.drain()


class IdleTracker:
    """Idle spans over samples that arrive in batches (a watcher's flushes, a launch's
    drains): each span is returned once, when a busy sample ends it or at ``final``."""

    def __init__(self, idle_below_pct: float, idle_for_s: float) -> None:
        self.idle_below_pct = idle_below_pct
        self.idle_for_s = idle_for_s
        self._carry: list[Mapping[str, Any]] = []

    def feed(self, rows: Iterable[Mapping[str, Any]], final: bool = False) -> list[dict[str, Any]]:
        """The spans that ended within ``rows`` (every span found when ``final``)."""
        window = self._carry + list(rows)
        spans = [
            span
            for span in idle_spans(window, self.idle_below_pct, self.idle_for_s)
            if final or not span["open"]
        ]
        self._carry = [] if final else list(trailing_idle(window, self.idle_below_pct))
        return spans
