"""Idle-span detection, the sampler thread, and the node-local watch loop."""

from __future__ import annotations

import pytest

from gosok.launcher.ledger.db import Ledger
from gosok.launcher.ledger.sampler import UtilSampler, idle_spans, trailing_idle
from gosok.launcher.ledger.watch import watch
from gosok.launcher.ledger.writer import LedgerWriter


def series(values, device="gpu0", node="n1", start=0.0, step=5.0):
    return [
        {
            "cluster": "c",
            "node": node,
            "device": device,
            "unix": start + i * step,
            "gpu_util_pct": v,
        }
        for i, v in enumerate(values)
    ]


def test_idle_span_detection():
    rows = series([90, 2, 1, 0, 3, 1, 80, 0, 0, 95])  # idle 5..25 s, then 35..40 s
    (span,) = idle_spans(rows, idle_below_pct=5, idle_for_s=20)
    assert (span["start_unix"], span["end_unix"], span["samples"]) == (5.0, 25.0, 5)
    assert span["mean_util_pct"] == pytest.approx(7 / 5)
    assert not span["open"]
    assert len(idle_spans(rows, idle_below_pct=5, idle_for_s=5)) == 2
    strict = idle_spans(rows, idle_below_pct=0.5, idle_for_s=1)  # only exact zeros
    assert [(s["start_unix"], s["end_unix"]) for s in strict] == [(35.0, 40.0)]
    assert idle_spans(rows, idle_below_pct=5, idle_for_s=21) == []


def test_idle_spans_per_device_gaps_open_and_cpu_rows():
    gpu0 = series([0] * 10)
    gpu1 = series([50] * 10, device="gpu1")
    cpu = [
        {"cluster": "c", "node": "n2", "device": "cpu", "unix": t * 5.0, "cpu_pct": 1.0}
        for t in range(5)
    ]
    spans = idle_spans(gpu0 + gpu1 + cpu, idle_below_pct=5, idle_for_s=10)
    assert [(s["node"], s["device"], s["open"]) for s in spans] == [
        ("n1", "gpu0", True),
        ("n2", "cpu", True),
    ]
    gapped = series([0, 0, 0]) + series([0, 0, 0], start=1000.0)  # no data for ~16 min
    assert [(s["start_unix"], s["end_unix"]) for s in idle_spans(gapped, 5, 5)] == [
        (0.0, 10.0),
        (1000.0, 1010.0),
    ]
    missing = series([0, 0, None, 0, 0])
    assert len(idle_spans(missing, 5, 5)) == 2
    assert [r["unix"] for r in trailing_idle(series([0, 50, 0, 0]), 5)] == [10.0, 15.0]
    assert trailing_idle(series([0, 0, 50]), 5) == []


def test_util_sampler_thread_drain_and_stop():
    sampler = UtilSampler(0.02, "me", cluster="c", job_id="j", use_nvml=False).start()
    import time

    time.sleep(0.15)
    first = sampler.drain()
    time.sleep(0.05)
    rest = sampler.stop()
    rows = first + rest
    assert len(rows) >= 3 and sampler.drain() == []
    assert len({r["unix"] for r in rows}) == len(rows)
    row = rows[0]
    assert (row["node"], row["cluster"], row["job_id"], row["device"]) == ("me", "c", "j", "cpu")
    assert row["cpu_pct"] >= 0 and row["mem_used_bytes"] > 0 and row["gpu_util_pct"] is None
    with pytest.raises(ValueError):
        UtilSampler(0)


class ScriptedSampler:
    """Hands out one scripted batch per drain, as if sampled in between."""

    node = "n1"
    dropped = 0

    def __init__(self, batches):
        self.batches = list(batches)

    def start(self):
        return self

    def drain(self):
        return self.batches.pop(0) if self.batches else []

    def stop(self):
        rest = [row for batch in self.batches for row in batch]
        self.batches = []
        return rest


def test_watch_writes_samples_and_each_idle_span_once(tmp_path):
    rows = series([80, 0, 0, 0, 0, 0, 0, 90, 0, 0, 0, 0])
    batches = [rows[0:3], rows[3:6], rows[6:9], rows[9:]]  # spans cross the batch edges
    flushes = []
    path = tmp_path / "l.sqlite"
    writer = LedgerWriter(str(path))
    summary = watch(
        writer,
        "c",
        interval_s=5,
        duration_s=0.2,
        idle_below=5,
        idle_for_s=10,
        sampler=ScriptedSampler(batches),
        flush_s=0.01,
        on_flush=flushes.append,
    )
    assert writer.close()
    with Ledger.open(path) as ledger:
        spans = ledger.idle_spans()
        assert len(ledger.samples()) == len(rows) == summary["samples"]
    assert [(s["start_unix"], s["end_unix"]) for s in spans] == [(5.0, 30.0), (40.0, 55.0)]
    assert summary["idle_spans"] == 2 and len(flushes) >= 2


def test_watch_samples_this_machine(tmp_path):
    writer = LedgerWriter(str(tmp_path / "l.sqlite"))
    summary = watch(writer, "c", interval_s=0.02, duration_s=0.2, flush_s=0.05, node="me")
    assert writer.close()
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        assert summary["samples"] >= 3 and not summary["interrupted"]
        assert {r["node"] for r in ledger.samples()} == {"me"}


def test_nvml_rows_with_a_stand_in_pynvml(monkeypatch):
    import sys
    import types

    calls = []

    def not_supported(handle):
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    fake = types.SimpleNamespace(
        NVML_CLOCK_SM=1,
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=10 * (h + 1)),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=2**30),
        nvmlDeviceGetPowerUsage=lambda h: not_supported(h) if h else 350_000,
        nvmlDeviceGetClockInfo=lambda h, kind: 1980 if kind == 1 else -1,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = UtilSampler(60, "g1", cluster="c").start()
    rows = sampler.sample_once()
    sampler.stop()
    assert sampler.gpus == 0 and calls == ["init", "shutdown"]
    assert [r["device"] for r in rows] == ["cpu", "gpu0", "gpu1"]
    assert (rows[1]["gpu_util_pct"], rows[1]["power_w"], rows[1]["sm_clock_mhz"]) == (
        10.0,
        350.0,
        1980.0,
    )
    assert (rows[2]["gpu_util_pct"], rows[2]["power_w"], rows[2]["mem_used_bytes"]) == (
        20.0,
        None,
        2**30,
    )


def test_watch_command_stops_on_sigterm_and_keeps_its_samples(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "l.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gosok.launcher.cli", "ledger", "watch", "--ledger", str(path),
         "--cluster", "c", "--node", "me", "--interval-s", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")},
    )  # fmt: skip
    assert "SIGTERM" in proc.stdout.readline()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    with Ledger.open(path) as ledger:
        assert len(ledger.samples()) >= 3, out
