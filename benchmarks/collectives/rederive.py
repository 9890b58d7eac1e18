"""Re-derivation of collective results (``bench=collectives``, and every collective record
of a suite): ``per_rank_time_us`` as the mean of each rank's ``per_rank_iter_us``,
``time_us`` from them and the recorded ``time_reduce`` (nccl-tests' ``-a``),
``algbw = size / time``, ``busbw = algbw x factor(n)``; averages and the pass/fail summary.
The formulas are the run's own (``collectives.report``).
"""

from __future__ import annotations

from typing import Any

from gosok.benchmarks.collectives.ops import COLLECTIVES
from gosok.benchmarks.collectives.report import (
    averages_by_op,
    bandwidths,
    mean_time_us,
    reduce_times,
)
from gosok.benchmarks.collectives.schema import TIME_REDUCTIONS
from gosok.benchmarks.core.rederive import (
    Rederivation,
    Rederiver,
    as_dict,
    as_list,
    is_number,
    require,
    times_of,
)


def collective_record(
    r: Rederivation, record: dict[str, Any], label: str, time_reduce: str | None = None
) -> None:
    """Re-derive one collective record in place (time, algbw, busbw, factor)."""
    op = record["op"]
    require(op in COLLECTIVES, f"{label}: unknown op {op!r}")
    if "per_rank_time_us" not in record:
        r.missing.append(f"{label}: no per_rank_time_us")
        return
    n = len(as_list(record["ranks"], f"{label}.ranks"))
    if "per_rank_iter_us" in record:  # every timed iteration of every rank
        rows = as_list(record["per_rank_iter_us"], f"{label}.per_rank_iter_us")
        means = [mean_time_us(times_of(row, f"{label}.per_rank_iter_us")) for row in rows]
        r.same(
            f"{label}: per_rank_time_us (mean of per_rank_iter_us)",
            record["per_rank_time_us"],
            means,
        )
    times = times_of(record["per_rank_time_us"], f"{label}.per_rank_time_us")
    how = record["time_reduce"]
    require(
        how in TIME_REDUCTIONS,
        f"{label}: time_reduce {how!r} is not one of {', '.join(TIME_REDUCTIONS)}",
    )
    if time_reduce is not None:
        r.same(f"{label}: time_reduce (config bench.time_reduce)", how, time_reduce)
    r.same(f"{label}: world_size", record["world_size"], n)
    r.same(f"{label}: ranks timed", len(times), n)
    size = record["size_bytes"]
    require(is_number(size) and size > 0, f"{label}: size_bytes is not a positive number")
    time_us = reduce_times(times, how)
    algbw, busbw = bandwidths(op, size, time_us, n)
    derived = {
        "time_us": time_us,
        "algbw_gbps": algbw,
        "busbw_gbps": busbw,
        "busbw_factor": COLLECTIVES[op].busbw_factor(n),
    }
    for key, value in derived.items():
        r.same(f"{label}: {key}", record[key], value)
    record.update(derived)


def record_label(index: int, record: dict[str, Any], where: str = "record") -> str:
    return (
        f"{where} {index} ({record.get('op')} {record.get('dtype')} {record.get('size_bytes')} B "
        f"{record.get('mode')} group {record.get('group')})"
    )


def _collectives(r: Rederivation) -> None:
    from gosok.benchmarks.collectives.driver import verdict
    from gosok.benchmarks.collectives.schema import sweep_sizes

    doc = r.doc
    assert doc is not None
    if doc.get("source") == "nccl-tests":
        _from_nccl_tests(r, doc)
        return
    bench = as_dict(doc["config"]["bench"], "config.bench")
    records = as_list(doc["records"], "records")
    for index, record in enumerate(records):
        record = as_dict(record, f"record {index}")
        collective_record(r, record, record_label(index, record), bench["time_reduce"])
    # Sizes too small for an op are skipped, so only these hold for every sweep: each
    # configured (op, dtype) was measured, and at sizes of the configured sweep only.
    sizes = set(sweep_sizes(bench["min_bytes"], bench["max_bytes"], bench["step_factor"]))
    wanted = {(op, dtype) for op in bench["ops"] for dtype in bench["dtypes"]}
    r.same(
        "records (op, dtype) measured",
        sorted({(x["op"], x["dtype"]) for x in records}),
        sorted(wanted),
    )
    stray = sorted({x["size_bytes"] for x in records} - sizes)
    r.same("records sizes outside the configured sweep", stray, [])
    summary = as_dict(doc["summary"], "summary")
    passed, problems = verdict(records, bench["min_busbw_gbps"])
    derived = {
        "avg_busbw_gbps": averages_by_op(records),
        "passed": passed,
        "problems": problems,
    }
    for key, value in derived.items():
        r.same(f"summary.{key}", summary.get(key), value)
    summary.update(derived)


def _from_nccl_tests(r: Rederivation, doc: dict[str, Any]) -> None:
    """A file nccl-tests wrote, signed by gosok (``report sign``): every figure is derived
    again from the nccl-tests document it carries verbatim (``nccl_tests``), as when that
    file is read directly."""
    from gosok.benchmarks.collectives.nccl_tests import as_results

    raw = as_dict(doc.get("nccl_tests"), "nccl_tests")
    try:
        derived, problems = as_results(raw, str(doc["config"]["cluster"].get("name") or ""))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        require(False, f"nccl_tests: an nccl-tests document gosok cannot read: {err}")
        return
    r.problems += [f"nccl_tests: {line}" for line in problems]
    for key in ("records", "summary"):
        r.same(f"{key} (from the nccl-tests document)", doc.get(key), derived[key])
        doc[key] = derived[key]


rederive_collectives = Rederiver("collectives", _collectives)


# --- against the auditor's reference ----------------------------------------------------------

#: The method gosok's suites and nccl-tests' default use: per-rank times averaged (``-a 1``).
REFERENCE_TIME_REDUCE = "avg"


def time_reduce_problems(records: list[Any], where: str) -> list[str]:
    odd = sorted(
        {
            str(r.get("time_reduce"))
            for r in records
            if isinstance(r, dict) and r.get("time_reduce") != REFERENCE_TIME_REDUCE
        }
    )
    if not odd:
        return []
    return [f"{where}: time_reduce {', '.join(odd)}, reference {REFERENCE_TIME_REDUCE!r} "
            "(per-rank times averaged over ranks, nccl-tests' -a 1)"]  # fmt: skip


def reference_collectives(
    doc: dict[str, Any], rederived: dict[str, Any], contract: Any
) -> list[str]:
    """How a collectives file differs from the reference method (its time reduction)."""
    return time_reduce_problems(rederived.get("records") or [], "records")
