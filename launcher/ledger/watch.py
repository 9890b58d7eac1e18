"""``gosok ledger watch`` on one node: sample this machine and write its utilisation
samples and idle spans to the ledger.

Use::

    from gosok.launcher.ledger.watch import watch
    from gosok.launcher.ledger.writer import LedgerWriter

    writer = LedgerWriter(path)        # retries and buffers while the ledger is away
    summary = watch(writer, cluster="h200", interval_s=5, duration_s=3600)
    writer.close()

It runs for ``duration_s`` seconds, or until ``stop`` is set (SIGTERM in ``gosok ledger
watch``) or Ctrl-C when that is ``None``, queueing writes every ``flush_s`` seconds. An
idle span is written once it has ended (a busy sample follows it), or at the end of the
watch when it is still going. Node-local: running it on every node of a cluster is the
caller's business (a systemd unit or a DaemonSet, see deploy/).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .sampler import SPAN_FIELDS, IdleTracker, UtilSampler


def watch(
    writer: Any,
    cluster: str,
    interval_s: float = 5.0,
    duration_s: float | None = None,
    idle_below: float = 5.0,
    idle_for_s: float = 60.0,
    node: str | None = None,
    *,
    flush_s: float = 30.0,
    job_id: str | None = None,
    sampler: UtilSampler | None = None,
    stop: threading.Event | None = None,
    on_flush: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Sample until ``duration_s`` passes, ``stop`` is set, or Ctrl-C; returns
    ``{"node", "samples", "idle_spans", "seconds", "dropped", "interrupted"}``."""
    sampler = sampler or UtilSampler(interval_s, node, cluster=cluster, job_id=job_id)
    stop = stop or threading.Event()
    summary: dict[str, Any] = {
        "node": sampler.node,
        "samples": 0,
        "idle_spans": 0,
        "interrupted": False,
    }
    tracker = IdleTracker(idle_below, idle_for_s)

    def flush(rows: list[dict[str, Any]], final: bool) -> None:
        if rows:
            writer.op("add_samples", rows=rows)
            summary["samples"] += len(rows)
        for span in tracker.feed(rows, final):
            writer.op("add_idle_span", **{k: span[k] for k in SPAN_FIELDS})
            summary["idle_spans"] += 1
        if on_flush is not None:
            on_flush(dict(summary))

    began = time.monotonic()
    deadline = None if duration_s is None else began + duration_s
    sampler.start()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = flush_s if deadline is None else min(flush_s, deadline - now)
            if stop.wait(max(wait, 0.0)):
                break
            flush(sampler.drain(), final=False)
    except KeyboardInterrupt:
        summary["interrupted"] = True
    finally:
        flush(sampler.stop(), final=True)
    summary["seconds"] = time.monotonic() - began
    summary["dropped"] = sampler.dropped
    return summary
