"""nccl-tests' JSON (``-J``, schema version 3, nccl-tests v2.19): written from gosok's
collective records, and read back into them.

Out: ``documents(doc)`` turns a gosok results document (``bench=collectives`` or a suite)
into one nccl-tests document per collective phase, op and dtype; ``dumps`` writes it
token for token as nccl-tests' own writer does (src/util.cu): one line, no whitespace,
decimals with six places, ``/`` escaped, booleans as the strings "true"/"false", NaN as
the string "nan". Field names, order and meanings follow src/util.cu and src/common.cu:

- ``config.devices``: one entry per process, i.e. per gosok rank (``group`` is the rank's
  group when groups ran side by side, as ``NCCL_TESTS_SPLIT`` would make them);
- per size: ``out_of_place`` / ``in_place`` with ``time`` (µs, per-rank times combined over
  every rank of every group by the run's ``time_reduce``, like ``-a``), ``alg_bw``,
  ``bus_bw`` (with the group's rank count) and ``nwrong`` (null when not checked); a
  placement gosok did not measure (torch offers some ops in one only) is ``null``, the
  form nccl-tests' writer has for it;
- ``*_per_iter`` as ``-I 1`` writes them: ``times_us`` the slowest rank per iteration,
  ``per_process_max_times_us`` one row per rank, the summary after ``-K`` skips;
- repeats follow each other in ``results`` as ``-N`` cycles do.

What gosok cannot say as nccl-tests would: ``env`` is empty (gosok records no process
environment, and would not write secrets), ``device_hex`` is empty, ``nccl_version`` is 0
on the CPU fallback (gloo), and ``args`` is the nccl-tests command line that measures the
same sweep (``all_reduce_perf -b ... -e ... -f ... -w ... -n ... -d float -I 1 -K 0``), since
readers take the collective from ``args[0]``.

In: ``records_from(doc)`` reads an nccl-tests document into gosok's collective records,
with algbw and busbw re-derived from each stored time by gosok's formulas.

Use: ``write_documents(run_dir, doc, [("collectives", doc["records"], cfg.bench, 0)])``;
``records, problems = records_from(json.loads(text))``.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from gosok.benchmarks.collectives.iterations import (
    STAT_KEYS,
    iteration_stats,
    slowest_per_iteration,
)
from gosok.benchmarks.collectives.report import bandwidths, reduce_times

VERSION = 3
TYPES = {"float32": "float", "float16": "half", "bfloat16": "bfloat16"}
#: nccl-tests' binary names (``<name>_perf``) and gosok's op names.
OPS = {
    "all_reduce": "all_reduce", "all_gather": "all_gather", "reduce_scatter": "reduce_scatter",
    "broadcast": "broadcast", "reduce": "reduce", "alltoall": "all_to_all",
    "sendrecv": "sendrecv",
}  # fmt: skip
PLACEMENTS = ("out_of_place", "in_place")


# --- writing ---------------------------------------------------------------------------------


def _string(text: str) -> str:
    """A JSON string as nccl-tests' ``sanitizeJson`` writes it: ``"``, ``\\``, ``/``, tab and
    newline escaped; cut at the first other control or non-ASCII character."""
    out = []
    for char in text:
        if char in '"\\/':
            out.append("\\" + char)
        elif char == "\t":
            out.append("\\t")
        elif char == "\n":
            out.append("\\n")
        elif ord(char) < 0x20 or ord(char) >= 0x7F:
            break
        else:
            out.append(char)
    return '"' + "".join(out)[:2047] + '"'


def dumps(value: Any) -> str:
    """``value`` in nccl-tests' JSON form (see the module doc)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return _string("true" if value else "false")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return '"nan"' if value != value else f"{value:f}"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    return "[" + ",".join(dumps(v) for v in value) + "]"


def _when(unix: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(unix or 0)))


def _nccl_code(version: Any) -> int:
    """NCCL's version code (2.27.3 -> 22703) from a "2.27.3" string; 0 when there is none."""
    parts = [int(p) for p in re.findall(r"\d+", str(version or ""))[:3]]
    if len(parts) < 3:
        return 0
    return parts[0] * 10000 + parts[1] * 100 + parts[2]


def _placement(records: list[dict[str, Any]], time_reduce: str) -> dict[str, Any]:
    """One placement of one size: every group's record of it, combined as nccl-tests does
    (time over every rank of every group; bandwidth with one group's rank count)."""
    first = records[0]
    per_rank = [t for r in records for t in r["per_rank_time_us"]]
    time_us = reduce_times(per_rank, time_reduce)
    algbw, busbw = bandwidths(first["op"], first["size_bytes"], time_us, first["world_size"])
    wrongs = [r["wrong"] for r in records]
    return {
        "time": time_us,
        "alg_bw": algbw,
        "bus_bw": busbw,
        "nwrong": None if min(wrongs) < 0 else float(sum(wrongs)),
    }


def _per_iteration(records: list[dict[str, Any]], skip: int) -> dict[str, Any] | None:
    rows_by_rank = {}
    for record in records:
        if "per_rank_iter_us" not in record:
            return None
        rows_by_rank.update(zip(record["ranks"], record["per_rank_iter_us"], strict=True))
    rows = [rows_by_rank[r] for r in sorted(rows_by_rank)]
    times = slowest_per_iteration(rows)
    block: dict[str, Any] = iteration_stats(times, skip)
    block["times_us"] = times
    if len(rows) > 1:
        block["per_process_max_times_us"] = rows
    return block


def _results(
    records: list[dict[str, Any]], time_reduce: str, skip: int, iterations: int
) -> list[dict[str, Any]]:
    by_size: dict[tuple[int, int], dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for record in records:
        by_size[(record.get("repeat", 0), record["size_bytes"])][record["mode"]].append(record)
    out = []
    for (_, size), modes in by_size.items():
        first = next(iter(modes.values()))[0]
        root = first["root"] if first["root"] is not None else -1
        entry: dict[str, Any] = {
            "size": size,
            "count": first["count"],
            "type": TYPES.get(first["dtype"], first["dtype"]),
            "redop": first["redop"] or "none",
            "root": f"{root:6d}",
        }
        for placement in PLACEMENTS:
            found = modes.get(placement)
            entry[placement] = _placement(found, time_reduce) if found else None
            block = _per_iteration(found, skip) if found else None
            if block is not None:
                entry[f"{placement}_per_iter"] = block
        entry["actual_iterations"] = iterations
        entry["experiment_name"] = ""
        out.append(entry)
    return out


def _devices(doc: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    group_of = {rank: r["group"] for r in records for rank in r["ranks"]}
    gpu = doc.get("config", {}).get("cluster", {}).get("gpu")
    devices = []
    for place in sorted(doc.get("env", {}).get("placement") or [], key=lambda p: p["rank"]):
        if place["rank"] not in group_of:
            continue
        devices.append(
            {
                "rank": place["rank"],
                "group": group_of[place["rank"]],
                "pid": place.get("pid") or 0,
                "hostname": str(place.get("hostname") or "").split(".")[0],
                "device": place.get("local_rank") or 0,
                "device_hex": "",
                "device_info": str(place.get("device_name") or gpu or ""),
            }
        )
    return devices


def _equivalent_args(record: dict[str, Any], settings: Any, skip: int) -> list[str]:
    """The nccl-tests command line that measures what gosok measured: readers take the
    collective from ``args[0]`` (the JSON records it nowhere else)."""
    binary = {v: k for k, v in OPS.items()}[record["op"]]
    args = [f"{binary}_perf", "-b", str(_setting(settings, "min_bytes"))]
    args += [
        "-e",
        str(_setting(settings, "max_bytes")),
        "-f",
        str(_setting(settings, "step_factor")),
    ]
    args += ["-w", str(_setting(settings, "warmup_iters")), "-n", str(_setting(settings, "iters"))]
    args += ["-d", TYPES.get(record["dtype"], record["dtype"]), "-I", "1", "-K", str(skip)]
    if record.get("redop"):
        args += ["-o", str(record["redop"])]
    if record.get("root") is not None:
        args += ["-r", str(record["root"])]
    return args


def _setting(settings: Any, key: str) -> Any:
    return settings[key] if isinstance(settings, dict) else getattr(settings, key)


def _document(
    doc: dict[str, Any], records: list[dict[str, Any]], settings: Any, skip: int
) -> dict[str, Any]:
    time_reduce = records[0].get("time_reduce", "avg")
    iterations = int(_setting(settings, "iters"))
    results = _results(records, time_reduce, skip, iterations)
    measured = [e[p] for e in results for p in PLACEMENTS if e[p] is not None]
    wrong = sum(1 for m in measured if m["nwrong"])
    average = sum(m["bus_bw"] for m in measured) / len(measured) if measured else float("nan")
    nccl = (doc.get("env", {}).get("driver") or {}).get("nccl")
    return {
        "version": VERSION,
        "start_time": _when(doc.get("started_unix")),
        "args": _equivalent_args(records[0], settings, skip),
        "env": [],
        "nccl_version": _nccl_code(nccl),
        "config": {
            "nthreads": 1,
            "ngpus": 1,
            "minimum_bytes": _setting(settings, "min_bytes"),
            "maximum_bytes": _setting(settings, "max_bytes"),
            "step_factor": _setting(settings, "step_factor"),
            "warmup_iters": _setting(settings, "warmup_iters"),
            "iterations": iterations,
            "aggregated_iterations": 1,
            "validation": 1 if any(r["wrong"] >= 0 for r in records) else 0,
            "graph": 0,
            "blocking_collectives": False,
            "per_iter_timing": any("per_rank_iter_us" in r for r in records),
            "per_iter_skip": skip,
            "parallel_init": False,
            "devices": _devices(doc, records),
        },
        "results": results,
        "out_of_bounds": {"count": wrong, "okay": wrong == 0},
        "average_bus_bandwidth": {"bandwidth": average, "okay": "unchecked"},
        "errors": [],
        "end_time": _when(doc.get("finished_unix")),
    }


def documents(
    doc: dict[str, Any], phases: list[tuple[str, list[dict[str, Any]], Any, int]]
) -> dict[str, dict[str, Any]]:
    """nccl-tests documents of a gosok results document, by file name
    (``<phase>-<op>-<dtype>.json``). ``phases``: (name, its collective records, the sweep
    settings they ran with (min_bytes, max_bytes, step_factor, warmup_iters, iters), the
    iterations the summary skips)."""
    out = {}
    for phase, records, settings, skip in phases:
        by_op: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            by_op[(record["op"], record["dtype"])].append(record)
        for (op, dtype), items in by_op.items():
            out[f"{phase}-{op}-{dtype}.json"] = _document(doc, items, settings, skip)
    return out


def write_documents(
    run_dir: Path, doc: dict[str, Any], phases: list[tuple[str, list[dict[str, Any]], Any, int]]
) -> list[Path]:
    """``documents`` written atomically under ``<run_dir>/nccl-tests/``."""
    from gosok.launcher.results.store import atomic_write_bytes

    folder = run_dir / "nccl-tests"
    written = []
    for name, nccl in documents(doc, phases).items():
        folder.mkdir(exist_ok=True)
        written.append(atomic_write_bytes(folder / name, dumps(nccl).encode("ascii")))
    return written


# --- reading ---------------------------------------------------------------------------------


def is_nccl_tests(doc: Any) -> bool:
    """A document nccl-tests' ``-J`` wrote (it has no gosok ``schema``)."""
    return (
        isinstance(doc, dict)
        and "schema" not in doc
        and isinstance(doc.get("results"), list)
        and isinstance(doc.get("config"), dict)
        and isinstance(doc.get("version"), int)
    )


def op_of(doc: dict[str, Any]) -> str:
    """The collective, from the binary's name (``.../all_reduce_perf``): the JSON records it
    nowhere else. ``ValueError`` when the name is not one of nccl-tests' collectives."""
    args = doc.get("args") or []
    name = str(args[0]).rsplit("/", 1)[-1] if args else ""
    stem = name.removesuffix("_perf").removesuffix("_mpi")
    if stem not in OPS:
        known = ", ".join(f"{k}_perf" for k in OPS)
        raise ValueError(f"args[0] {name!r} is not one of nccl-tests' binaries ({known})")
    return OPS[stem]


def group_size(doc: dict[str, Any]) -> int:
    """Ranks per group: processes per split group x threads x GPUs per thread."""
    config = doc["config"]
    devices = config.get("devices") or []
    if not devices:
        raise ValueError("config.devices is empty: the rank count (for busbw) is unknown")
    per_group: dict[int, int] = defaultdict(int)
    for device in devices:
        per_group[int(device.get("group", 0))] += 1
    sizes = set(per_group.values())
    if len(sizes) != 1:
        raise ValueError(f"the split groups differ in size ({sorted(sizes)})")
    return sizes.pop() * int(config.get("nthreads", 1)) * int(config.get("ngpus", 1))


def gpu_key(doc: dict[str, Any]) -> str | None:
    """The catalogue's GPU type of the file's devices (``device_info``), or None."""
    from gosok.launcher.config.catalogue import load_catalogue

    names = {str(d.get("device_info", "")) for d in doc["config"].get("devices") or []}
    found = {
        key
        for key, spec in load_catalogue().items()
        for name in names
        if name == key or any(m in name for m in spec.device_name_match)
    }
    return found.pop() if len(found) == 1 else None


def as_results(doc: dict[str, Any], name: str = "") -> tuple[dict[str, Any], list[str]]:
    """An nccl-tests document as a gosok ``collectives`` document (its records re-derived),
    for ``gosok report``, ``report compare`` and ``report audit``, labelled as written by
    nccl-tests (``source``); and the stored figures that disagree."""
    from gosok.benchmarks.collectives.driver import verdict
    from gosok.benchmarks.collectives.report import averages_by_op

    records, problems = records_from(doc)
    passed, failures = verdict(records, 0.0)
    devices = doc["config"].get("devices") or []
    return {
        "kind": "collectives",
        "source": "nccl-tests",
        "config": {
            "cluster": {
                "gpu": gpu_key(doc),
                "provider": "nccl-tests",
                "name": name or "nccl-tests",
                "nodes": len({d.get("hostname") for d in devices}) or None,
            }
        },
        "records": records,
        "started_unix": _unix(doc.get("start_time")),
        "summary": {
            "avg_busbw_gbps": averages_by_op(records),
            "passed": passed,
            "problems": failures,
        },
    }, problems


def _unix(when: Any) -> float | None:
    """nccl-tests' local ``start_time`` as a Unix time (None when it is not one)."""
    try:
        return time.mktime(time.strptime(str(when), "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None


def time_reduce_of(doc: dict[str, Any]) -> str:
    """How the file's times were combined over ranks: nccl-tests' ``-a`` in ``args``
    (0 rank 0, 1 mean, the default, 2 min, 3 max)."""
    args = [str(a) for a in doc.get("args") or []]
    value = next((b for a, b in zip(args, args[1:], strict=False) if a in ("-a", "--average")), "1")
    return {"0": "rank0", "1": "avg", "2": "min", "3": "max"}.get(value, "avg")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def records_from(doc: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """gosok collective records of an nccl-tests document, algbw and busbw re-derived from
    each stored time; and the stored figures that disagree with the re-derived ones."""
    op, n = op_of(doc), group_size(doc)
    ranks = sorted(hosts(doc))
    how = time_reduce_of(doc)
    dtypes = {v: k for k, v in TYPES.items()}
    records, problems = [], []
    for index, entry in enumerate(doc["results"]):
        for placement in PLACEMENTS:
            stored = entry.get(placement)
            if stored is None:
                continue
            where = f"results[{index}].{placement}"
            time_us = _number(stored.get("time", stored.get("cpu_time")), f"{where}.time")
            size = int(_number(entry["size"], f"results[{index}].size"))
            algbw, busbw = bandwidths(op, size, time_us, n)
            for key, derived in (("alg_bw", algbw), ("bus_bw", busbw)):
                value = _number(stored.get(key), f"{where}.{key}")
                if abs(value - derived) > 1e-6 + 1e-5 * abs(derived):
                    problems.append(f"{where}.{key}: stored {value:f}, re-derived {derived:f}")
            wrong = stored.get("nwrong")
            records.append(
                {
                    "op": op,
                    "dtype": dtypes.get(str(entry.get("type")), str(entry.get("type"))),
                    "mode": placement,
                    "group": 0,
                    "world_size": n,
                    "size_bytes": size,
                    "count": int(_number(entry.get("count"), f"results[{index}].count")),
                    "redop": str(entry.get("redop") or "none"),
                    "root": None if str(entry.get("root")).strip() == "-1" else entry.get("root"),
                    "time_us": time_us,
                    "time_reduce": how,
                    "algbw_gbps": algbw,
                    "busbw_gbps": busbw,
                    "wrong": -1 if wrong is None else int(_number(wrong, f"{where}.nwrong")),
                    **_iterations(entry.get(f"{placement}_per_iter"), ranks),
                }
            )
    return records, problems


def hosts(doc: dict[str, Any]) -> dict[int, str]:
    """Rank -> hostname of an nccl-tests document (``config.devices``)."""
    devices = doc["config"].get("devices") or []
    return {int(d["rank"]): str(d.get("hostname", "")) for d in devices}


def _iterations(block: Any, ranks: list[int]) -> dict[str, Any]:
    """A placement's per-iteration block as gosok keeps it: the file's summary, and each
    process's row of iterations (``-I 1`` in a multi-process run)."""
    if not isinstance(block, dict):
        return {}
    keys = ("skipped_iterations", *STAT_KEYS)
    out: dict[str, Any] = {"iteration_stats": {k: block[k] for k in keys if k in block}}
    rows = block.get("per_process_max_times_us")
    if isinstance(rows, list) and rows:
        out["per_rank_iter_us"] = rows
        out["ranks"] = ranks if len(ranks) == len(rows) else list(range(len(rows)))
    return out
