"""The goodput ledger: where every allocated GPU-hour went, per job, project and cluster.

Use::

    from gosok.launcher.ledger import Ledger, breakdown, write_report

    with Ledger.open() as ledger:               # ~/.local/share/gosok/ledger.sqlite
        ledger.start_job(job_id, project="llm", cluster="h200", gpu_type="H200", gpus=32)
        ...                                     # record_attempt / record_event
        ledger.finish_job(job_id, exit_status="ok", steps=5000)
        write_report(ledger, "ledger-report/")

Modules: ``db`` and ``backends`` (the store: SQLite or PostgreSQL), ``writer`` (ordered,
retried, buffered writes), ``programme`` (allocations against use), ``metrics`` (Prometheus),
``goodput`` (pure breakdown of wall time, ETTR),
``sampler`` (utilisation sampling, idle spans), ``watch`` (node-local sampling loop),
``report`` (md/html/csv), ``command`` (``gosok ledger report|watch``), ``recorder``
(what ``gosok launch`` and ``gosok bench`` record). The package uses the standard library,
psutil, matplotlib, rich, prometheus_client and, when present, nvidia-ml-py and psycopg; the
recorder also uses Ray, imported when it drains the nodes' samplers.
"""

from .db import Ledger, default_ledger_path, resolve_ledger_path
from .goodput import PARTS, Breakdown, breakdown, device_hours

__all__ = [
    "PARTS",
    "Breakdown",
    "Ledger",
    "breakdown",
    "default_ledger_path",
    "device_hours",
    "resolve_ledger_path",
    "write_report",
]


def write_report(*args, **kwargs):
    """``report.write_report``, imported on first use (it pulls in matplotlib)."""
    from .report import write_report as write

    return write(*args, **kwargs)
