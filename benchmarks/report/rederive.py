"""Re-derive every figure of a results file from its raw data, one function per results kind.

A results file keeps raw measurements (per-rank collective times, per-sample GEMM / HBM
times, isolation group readings) beside the figures derived from them (algbw, busbw,
TFLOPS, GB/s, % of peak, checks, verdicts, capacity). An auditor should trust only what
follows from the raw data: each function here recomputes every derived figure with gosok's
own formulas, from the settings, GPU catalogue entry and contract *the file recorded*, and
lists each stored figure that does not match.

- ``collectives``: ``per_rank_time_us`` as the mean of each rank's ``per_rank_iter_us``
  (every timed iteration), ``time_us`` from them and the recorded ``time_reduce``
  (nccl-tests' ``-a``), ``algbw = size / time``, ``busbw = algbw x factor(n)``; averages and
  the pass/fail summary.
- ``gemm``: median / mean / min / max of ``times_us``, ``TFLOPS = 2·M·N·K / median``,
  ``GB/s = bytes / median`` (bytes from the kernel's own count), % of the recorded peak, the
  tolerance verdicts and the summary.
- ``suite``: the compute rows from their ``step`` records, the collective records, the
  per-node and inter-node key figures, every check, the isolation replay (the recorded
  group readings fed back through the bisection), node and cluster verdicts and capacity.

Raw data that is absent cannot vouch for its figure: that is listed in ``missing``. When
the recorded GPU entry or contract differs from gosok's own, that is a ``note``.

Use::

    result = rederive_suite.full(doc)      # Rederivation: problems, missing, notes, doc
    result.doc                             # a copy holding only re-derived figures
    rederive_suite(doc)                    # the Benchmark hook: every reason, or []
"""

from __future__ import annotations

import copy
import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gosok.benchmarks.collectives.ops import COLLECTIVES
from gosok.benchmarks.collectives.report import (
    averages_by_op,
    bandwidths,
    mean_time_us,
    reduce_times,
)
from gosok.benchmarks.collectives.schema import TIME_REDUCTIONS
from gosok.benchmarks.compute.entries import KERNELS, annotate, gbps_from, tflops_from, time_stats
from gosok.launcher.config.schema import GpuSpec
from gosok.launcher.errors import ConfigError

REL_TOL = 1e-9
REDACTED = "<redacted>"  # what gosok writes in place of a config value it treats as secret
MAX_LISTED = 20


@dataclass
class Rederivation:
    """What re-deriving one results document found.

    ``problems``: stored figures, checks or verdicts that contradict the raw data.
    ``missing``: figures whose raw data the file does not hold (taken as stored).
    ``notes``: the recorded GPU entry or contract differs from gosok's own (not a failure:
    the figures were judged against what the file recorded). ``malformed``: the document
    does not have the structure of its kind (then ``doc`` is None). ``doc``: a copy of the
    document in which every derived figure is the re-derived one.
    """

    kind: str
    doc: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    malformed: str | None = None
    compared: int = 0

    @property
    def ok(self) -> bool:
        return self.malformed is None and not self.problems and not self.missing

    def reasons(self) -> list[str]:
        """Every reason the figures are not fully re-derivable, as one list."""
        if self.malformed:
            return [f"malformed: {self.malformed}"]
        return [*self.problems, *(f"no raw data: {m}" for m in self.missing)]

    def same(self, where: str, stored: Any, derived: Any) -> bool:
        """Compare a stored figure with its re-derived value; record a problem if they differ."""
        self.compared += 1
        diff = difference(stored, derived)
        if diff is None:
            return True
        path, a, b = diff
        self.problems.append(f"{where}{path}: stored {_short(a)}, re-derived {_short(b)}")
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first place where ``a`` and ``b`` differ (numbers within ``REL_TOL``), or None."""
    if _number(a) and _number(b):
        if a == b or abs(a - b) <= REL_TOL * max(abs(a), abs(b)):
            return None
        return path, a, b
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}.{key}", a.get(key, "<absent>"), b.get(key, "<absent>")
            found = difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path} (length)", len(a), len(b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if type(a) is not type(b) or a != b:
        return path, a, b
    return None


def _json_copy(value: Any) -> Any:
    """``value`` as it would read back from a results file (tuples become lists)."""
    return json.loads(json.dumps(value))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _as_list(value: Any, what: str) -> list[Any]:
    _require(isinstance(value, list), f"{what} is a {type(value).__name__}, not a list")
    return value


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    _require(isinstance(value, dict), f"{what} is a {type(value).__name__}, not an object")
    return value


def _settings(data: Any, what: str) -> Any:
    """Recorded settings as a config object; an interpolation (``${...}``) is refused, so
    reading a file never resolves anything from the auditor's environment."""
    stack = [_as_dict(data, what)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _require("${" not in item, f"{what} holds an interpolation {_short(item)}")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return OmegaConf.create(data)


def _times(values: Any, what: str) -> list[float]:
    values = _as_list(values, what)
    _require(bool(values), f"{what} is empty")
    _require(all(_number(v) for v in values), f"{what} holds a value that is not a number")
    _require(all(math.isfinite(v) and v > 0 for v in values), f"{what} holds a non-positive time")
    return values


# --- the recorded GPU entry and contract as typed objects ---------------------------------


def _typed(cls: type, data: Any, what: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` checked against the field types of dataclass ``cls`` (by their annotation)."""
    data = _as_dict(data, what)
    known = {f.name: str(f.type) for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    _require(not unknown, f"{what} has unknown field(s) {unknown}")
    for name, value in data.items():
        if name in skip:
            continue
        kind = known[name]
        if value is None and "None" in kind:
            continue
        if kind.startswith(("float", "int")):
            ok = _number(value) and (kind.startswith("float") or isinstance(value, int))
        elif kind.startswith("str"):
            ok = isinstance(value, str)
        elif kind.startswith("bool"):
            ok = isinstance(value, bool)
        elif kind.startswith("list"):
            ok = isinstance(value, list)
        elif kind.startswith("dict"):
            ok = isinstance(value, dict)
        else:
            ok = True
        _require(ok, f"{what}.{name} is {_short(value)}, not a {kind}")
    return data


def gpu_from_dict(data: Any) -> GpuSpec:
    """The ``GpuSpec`` a file recorded (``doc["gpu"]``), typed; unknown fields refused."""
    data = _typed(GpuSpec, data, "gpu entry")
    _require(isinstance(data.get("key"), str), "gpu entry has no key")
    return GpuSpec(**data)


def contract_from_dict(data: Any) -> Any:
    """The ``ContractConfig`` a file recorded (``doc["contract"]``), typed, every field present."""
    from gosok.benchmarks.suite.schema import ContractConfig, Expectation, OutlierRule

    data = _typed(ContractConfig, data, "contract")
    names = {f.name for f in fields(ContractConfig)}
    missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
    _require(
        not missing and not unknown, f"contract fields wrong: missing {missing}, unknown {unknown}"
    )

    def expectations(block: Any, what: str) -> dict[str, Any]:
        block = _as_dict(block, what)
        return {m: Expectation(**_typed(Expectation, e, f"{what}.{m}")) for m, e in block.items()}

    rest = {
        k: v
        for k, v in data.items()
        if k not in ("expectations", "gpu_expectations", "outlier", "metric_outliers")
    }
    return ContractConfig(
        **rest,
        expectations=expectations(data["expectations"], "contract.expectations"),
        gpu_expectations={
            g: expectations(block, f"contract.gpu_expectations.{g}")
            for g, block in _as_dict(data["gpu_expectations"], "gpu_expectations").items()
        },
        outlier=OutlierRule(**_typed(OutlierRule, data["outlier"], "contract.outlier")),
        metric_outliers={
            m: OutlierRule(**_typed(OutlierRule, o, f"contract.metric_outliers.{m}"))
            for m, o in _as_dict(data["metric_outliers"], "metric_outliers").items()
        },
    )


def catalogue_notes(recorded: dict[str, Any], what: str = "gpu entry") -> list[str]:
    """How a recorded catalogue entry differs from gosok's own entry of the same key."""
    from gosok.launcher.config.catalogue import gpu_spec

    key = recorded.get("key")
    try:
        ours = _json_copy(asdict(gpu_spec(key)))
    except KeyError:
        return [f"the recorded {what} {key!r} is not in gosok's catalogue"]
    differing = [
        f"{name}: file {_short(recorded[name])}, gosok {_short(ours[name])}"
        for name in recorded
        if name in ours and difference(recorded[name], ours[name]) is not None
    ]
    if not differing:
        return []
    return [
        f"the recorded {what} {key!r} differs from gosok's catalogue (checks were judged "
        f"against the file's entry): " + "; ".join(differing)
    ]


def contract_notes(recorded: dict[str, Any], gpu_key: str) -> list[str]:
    """How a recorded contract differs from gosok's contract of the same name."""
    from gosok.benchmarks.suite.schema import load_contract

    name = recorded.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return [f"the recorded contract {_short(name)} is not one of gosok's contracts"]
    try:
        ours = _json_copy(asdict(load_contract(str(name), gpu_key)))
    except (ConfigError, OmegaConfBaseException, OSError):
        return [f"the recorded contract {name!r} is not one of gosok's contracts"]
    found = difference(recorded, ours)
    if found is None:
        return []
    path, a, b = found
    return [
        f"the recorded contract {name!r} differs from gosok's contract of that name at "
        f"{path.lstrip('.')}: file {_short(a)}, gosok {_short(b)}"
    ]


# --- shared pieces --------------------------------------------------------------------------


def _collective_record(
    r: Rederivation, record: dict[str, Any], label: str, time_reduce: str | None = None
) -> None:
    """Re-derive one collective record in place (time, algbw, busbw, factor)."""
    op = record["op"]
    _require(op in COLLECTIVES, f"{label}: unknown op {op!r}")
    if "per_rank_time_us" not in record:
        r.missing.append(f"{label}: no per_rank_time_us")
        return
    n = len(_as_list(record["ranks"], f"{label}.ranks"))
    if "per_rank_iter_us" in record:  # every timed iteration of every rank
        rows = _as_list(record["per_rank_iter_us"], f"{label}.per_rank_iter_us")
        means = [mean_time_us(_times(row, f"{label}.per_rank_iter_us")) for row in rows]
        r.same(
            f"{label}: per_rank_time_us (mean of per_rank_iter_us)",
            record["per_rank_time_us"],
            means,
        )
    times = _times(record["per_rank_time_us"], f"{label}.per_rank_time_us")
    how = record["time_reduce"]
    _require(
        how in TIME_REDUCTIONS,
        f"{label}: time_reduce {how!r} is not one of {', '.join(TIME_REDUCTIONS)}",
    )
    if time_reduce is not None:
        r.same(f"{label}: time_reduce (config bench.time_reduce)", how, time_reduce)
    r.same(f"{label}: world_size", record["world_size"], n)
    r.same(f"{label}: ranks timed", len(times), n)
    size = record["size_bytes"]
    _require(_number(size) and size > 0, f"{label}: size_bytes is not a positive number")
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


def _record_label(index: int, record: dict[str, Any], where: str = "record") -> str:
    return (
        f"{where} {index} ({record.get('op')} {record.get('dtype')} {record.get('size_bytes')} B "
        f"{record.get('mode')} group {record.get('group')})"
    )


def _step_figures(r: Rederivation, step: dict[str, Any], label: str) -> dict[str, Any] | None:
    """Re-derived time statistics and TFLOPS / GB/s of one compute step record, or None."""
    entry = step["entry"]
    _require(entry in KERNELS, f"{label}: unknown compute entry {entry!r}")
    spec = KERNELS[entry]
    _require(
        step["family"] == spec.kind,
        f"{label}: family {step['family']!r} is not {spec.kind!r} for {entry}",
    )
    if "times_us" not in step:
        r.missing.append(f"{label}: no times_us")
        return None
    times = _times(step["times_us"], f"{label}.times_us")
    derived: dict[str, Any] = dict(time_stats(times))
    shape = _as_dict(step["shape"], f"{label}.shape")
    if spec.kind == "gemm":
        assert spec.flops_for is not None
        derived["flops"] = spec.flops_for(shape["m"], shape["n"], shape["k"])
        derived["tflops"] = tflops_from(derived["flops"], derived["median_us"])
    else:
        assert spec.bytes_for is not None
        derived["bytes"] = spec.bytes_for(shape["n_bytes"])
        derived["gbps"] = gbps_from(derived["bytes"], derived["median_us"])
    for key, value in derived.items():
        r.same(f"{label}: {key}", step[key], value)
    return derived


def _guarded(kind: str, doc: Any, body: Callable[[Rederivation], None]) -> Rederivation:
    if not isinstance(doc, dict):
        return Rederivation(kind, None, malformed=f"document is a {type(doc).__name__}")
    try:
        work = copy.deepcopy(doc)
    except RecursionError:
        return Rederivation(kind, None, malformed="document is nested too deeply")
    result = Rederivation(kind, work)
    try:
        body(result)
    except KeyError as err:
        return Rederivation(kind, None, malformed=f"{kind} results lack the field {err}")
    except (TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as err:
        return Rederivation(kind, None, malformed=f"{kind} results: {err}")
    except (statistics.StatisticsError, ConfigError, OmegaConfBaseException) as err:
        return Rederivation(kind, None, malformed=f"{kind} results: {err}".replace("\n", " "))
    except RecursionError:
        return Rederivation(kind, None, malformed="document is nested too deeply")
    return result


# --- collectives ---------------------------------------------------------------------------


def _collectives(r: Rederivation) -> None:
    from gosok.benchmarks.collectives.driver import verdict
    from gosok.benchmarks.collectives.schema import sweep_sizes

    doc = r.doc
    assert doc is not None
    bench = _as_dict(doc["config"]["bench"], "config.bench")
    records = _as_list(doc["records"], "records")
    for index, record in enumerate(records):
        record = _as_dict(record, f"record {index}")
        _collective_record(r, record, _record_label(index, record), bench["time_reduce"])
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
    summary = _as_dict(doc["summary"], "summary")
    passed, problems = verdict(records, bench["min_busbw_gbps"])
    derived = {
        "avg_busbw_gbps": averages_by_op(records),
        "passed": passed,
        "problems": problems,
    }
    for key, value in derived.items():
        r.same(f"summary.{key}", summary.get(key), value)
    summary.update(derived)


# --- gemm ----------------------------------------------------------------------------------

GEMM_DERIVED = (
    "peak",
    "peak_unit",
    "peak_is_estimate",
    "tolerance",
    "min_pct_of_peak",
    "pct_of_peak",
    "problems",
    "passed",
)


def _peak_gpu(peak: dict[str, Any]) -> GpuSpec:
    return GpuSpec(
        name=peak["name"],
        key=peak["gpu"],
        bf16_tflops=peak["bf16_tflops"],
        fp8_tflops=peak["fp8_tflops"],
        hbm_tbps=peak["hbm_tbps"],
    )


def _gemm(r: Rederivation) -> None:
    from gosok.benchmarks.compute.driver import summarize, verdict
    from gosok.launcher.config.catalogue import gpu_spec

    doc = r.doc
    assert doc is not None
    peak = _as_dict(doc["peak"], "peak")
    gpu = _peak_gpu(peak)
    config = _as_dict(doc["config"], "config")
    # ``gpu_sweep`` writes kind gemm too: one local GPU, its arguments under config.sweep.
    sweep = "sweep" in config and "cluster" not in config
    try:
        ours = gpu_spec(peak["gpu"])
        theirs = {k: peak[k] for k in ("name", "bf16_tflops", "fp8_tflops", "hbm_tbps")}
        mine = {k: getattr(ours, k) for k in theirs}
        if difference(theirs, mine) is not None:
            r.notes.append(
                f"the recorded peaks of {peak['gpu']!r} differ from gosok's catalogue (% of "
                f"peak used the file's): file {theirs}, gosok {mine}"
            )
    except KeyError:
        r.notes.append(f"the recorded GPU {peak['gpu']!r} is not in gosok's catalogue")
    records = _as_list(doc["records"], "records")
    min_pct = 0.0
    if not sweep:
        r.same("peak.gpu (config cluster.gpu)", peak["gpu"], config["cluster"]["gpu"])
        bench = _settings(config["bench"], "config.bench")
        min_pct = bench.min_pct_of_peak
        _gemm_coverage(r, bench, peak["gpu"], records, config["cluster"])
    for index, record in enumerate(records):
        record = _as_dict(record, f"record {index}")
        label = (
            f"record {index} ({record['entry']} {record['backend']} "
            f"{record['shape']['name']} rank {record['rank']})"
        )
        if record.get("skipped"):
            continue
        figures = _step_figures(r, record, label)
        if figures is None:
            continue
        record.update(figures)
        judged = annotate({**record, "problems": None, "passed": None}, gpu, min_pct)
        for key in GEMM_DERIVED:
            r.same(f"{label}: {key}", record.get(key), judged[key])
            record[key] = judged[key]
    summary = _as_dict(doc["summary"], "summary")
    if sweep:
        _sweep_summary(r, doc, records, summary)
        return
    passed, problems = verdict(records)
    derived = {"per_entry": summarize(records), "passed": passed, "problems": problems}
    for key, value in derived.items():
        r.same(f"summary.{key}", summary.get(key), value)
    summary.update(derived)


def _sweep_summary(
    r: Rederivation, doc: dict[str, Any], records: list[Any], summary: dict[str, Any]
) -> None:
    """The GPU sweep's pass/fail summary and goal ratios, from the re-derived records."""
    from gosok.benchmarks.compute.gpu_sweep import goal_ratios

    failures = [x for x in records if not x["passed"]]
    derived = {
        "passed": not failures,
        "problems": [
            f"{x['entry']} {x['backend']} {x['shape']['name']}: {p}"
            for x in failures
            for p in x["problems"]
        ],
    }
    for key, value in derived.items():
        r.same(f"summary.{key}", summary.get(key), value)
    summary.update(derived)
    goals = _json_copy(goal_ratios(records))
    r.same("goals", doc.get("goals"), goals)
    doc["goals"] = goals


def _gemm_coverage(
    r: Rederivation, bench: Any, gpu_key: str, records: list[Any], cluster: dict[str, Any]
) -> None:
    """Every (entry, backend, shape) of the configured plan, measured once on every GPU."""
    from gosok.benchmarks.compute.entries import measurement_plan
    from gosok.benchmarks.compute.schema import resolved_profile

    world = cluster["nodes"] * cluster["gpus_per_node"]
    plan = measurement_plan(bench, resolved_profile(bench, gpu_key))
    counts: dict[tuple[str, str, str], int] = {}
    for record in records:
        key = (record["entry"], record["backend"], record["shape"]["name"])
        counts[key] = counts.get(key, 0) + 1
    wanted = {(entry, backend, shape.name): world for entry, backend, shape in plan}
    r.same("records (one per GPU and planned step)", counts, wanted)


# --- suite ---------------------------------------------------------------------------------


class _ReplayMismatch(Exception):
    pass


def _suite_compute(r: Rederivation, phase: dict[str, Any], suite: Any, world: int) -> None:
    _compute_rows(r, phase["ranks"], "phases.compute.ranks", suite, world)
    if phase.get("confirm"):
        confirm = _as_dict(phase["confirm"], "phases.compute.confirm")
        _compute_rows(r, confirm["ranks"], "phases.compute.confirm.ranks", suite, world)


def _compute_rows(r: Rederivation, rows: Any, where_all: str, suite: Any, world: int) -> None:
    from gosok.benchmarks.suite.phases import compute_kernels

    ranks = _as_list(rows, where_all)
    seen = sorted(row["rank"] for row in ranks)
    r.same(f"{where_all} (one row per GPU)", seen, list(range(world)))
    expected = {figure: (kernel, shape) for figure, kernel, _, shape in compute_kernels(suite)}
    for row in ranks:
        row = _as_dict(row, "compute row")
        where = f"compute {'confirm ' if 'confirm' in where_all else ''}rank {row['rank']}"
        parts = [(f, g) for f, g in _as_dict(row["gemm"], f"{where}.gemm").items()]
        if row.get("hbm"):
            parts.append(("hbm", _as_dict(row["hbm"], f"{where}.hbm")))
        for figure, part in parts:
            label = f"{where} {figure}"
            _require(figure in expected, f"{label}: not a figure this suite measures")
            step = part.get("step")
            if not isinstance(step, dict):
                r.missing.append(f"{label}: no step record with raw times_us")
                continue
            kernel, shape = expected[figure]
            r.same(f"{label}: step entry (suite.compute)", step["entry"], kernel)
            r.same(f"{label}: step shape (suite.compute)", step["shape"], asdict(shape))
            for key in ("rank", "node_rank", "local_rank"):
                r.same(f"{label}: step {key}", step[key], row[key])
            figures = _step_figures(r, step, f"{label} step")
            if figures is None:
                continue
            step.update(figures)
            if figure == "hbm":
                r.same(f"{label}: bytes_per_call", part["bytes_per_call"], figures["bytes"])
                r.same(f"{label}: buffer_bytes", part["buffer_bytes"], step["shape"]["n_bytes"])
                r.same(f"{label}: gbps", part["gbps"], figures["gbps"])
                part["gbps"] = figures["gbps"]
            else:
                for key in ("m", "n", "k"):
                    r.same(f"{label}: {key}", part[key], step["shape"][key])
                r.same(f"{label}: tflops", part["tflops"], figures["tflops"])
                part["tflops"] = figures["tflops"]


def _suite_collectives(r: Rederivation, name: str, phase: dict[str, Any], settings: Any) -> None:
    from gosok.benchmarks.suite.evaluate import key_figure

    records = _as_list(phase["records"], f"phases.{name}.records")
    for index, record in enumerate(records):
        record = _as_dict(record, f"{name} record {index}")
        _collective_record(r, record, _record_label(index, record, f"{name} record"))
    op = settings.ops[0]
    groups = phase.get("groups")
    if groups is None:
        r.missing.append(f"phases.{name}: no groups (which ranks each group measured)")
    else:
        groups = _as_list(groups, f"phases.{name}.groups")
    if name == "intra_node":
        count = len(groups) if groups is not None else len(phase["per_node"])
        derived = [{"node_rank": i, **key_figure(records, i, op)} for i in range(count)]
        r.same(f"phases.{name}.per_node", phase["per_node"], derived)
        phase["per_node"] = derived
        return
    derived_key = key_figure(records, 0, op)
    for key, value in derived_key.items():
        r.same(f"phases.{name}.{key}", phase[key], value)
    if groups is not None:
        r.same(f"phases.{name}.ranks", phase["ranks"], len(groups[0]))
    phase.update(derived_key)
    if phase.get("rails"):
        _suite_rails(r, _as_dict(phase["rails"], f"phases.{name}.rails"), op)


def _suite_rails(r: Rederivation, rails: dict[str, Any], op: str) -> None:
    from gosok.benchmarks.suite.phases import rail_figures

    records = _as_list(rails["records"], "phases.inter_node.rails.records")
    for index, record in enumerate(records):
        record = _as_dict(record, f"rails record {index}")
        _collective_record(r, record, _record_label(index, record, "rails record"))
    count = len(_as_list(rails["groups"], "phases.inter_node.rails.groups"))
    derived = _json_copy(rail_figures(records, op, count))
    r.same("phases.inter_node.rails.per_rail", rails.get("per_rail"), derived["per_rail"])
    rails.update(derived)


def _replay_isolation(
    r: Rederivation, recorded: dict[str, Any], n_nodes: int, settings: Any, contract: Any
) -> dict[str, Any]:
    """Feed the recorded group readings back through ``isolate``; the re-derived outcome."""
    from gosok.benchmarks.suite.isolation import isolate

    rounds = _as_list(recorded["rounds"], "isolation outcome rounds")
    played: list[int] = []

    def measure(groups: list[list[int]]) -> list[float]:
        if len(played) >= len(rounds):
            raise _ReplayMismatch("the recorded readings stop before the isolation does")
        readings = _as_list(rounds[len(played)], "isolation round")
        played.append(1)
        wanted = [list(g) for g in groups]
        measured = [list(_as_dict(g, "isolation reading")["nodes"]) for g in readings]
        if measured != wanted:
            raise _ReplayMismatch(
                f"round {len(played)}: the file measured groups {measured}, but the readings "
                f"before it lead to {wanted}"
            )
        return [g["value"] for g in readings]

    try:
        outcome = isolate(
            n_nodes,
            measure,
            group_size=settings.group_size,
            slow_below=contract.isolation_slow_below,
            exhaustive_below=settings.exhaustive_below,
        )
    except _ReplayMismatch as err:
        r.problems.append(f"phases.isolation.outcome: {err}")
        return recorded
    derived = _json_copy(outcome.to_dict())
    r.same("phases.isolation.outcome", recorded, derived)
    return derived


def _suite(r: Rederivation) -> None:
    from gosok.benchmarks.suite.derive import isolation_due, judge
    from gosok.benchmarks.suite.phases import evaluate_phases
    from gosok.benchmarks.suite.schema import effective_suite

    doc = r.doc
    assert doc is not None
    gpu = gpu_from_dict(doc["gpu"])
    contract = contract_from_dict(doc["contract"])
    r.notes += catalogue_notes(doc["gpu"])
    r.notes += contract_notes(doc["contract"], gpu.key)
    cluster = _as_dict(doc["config"]["cluster"], "config.cluster")
    r.same("gpu.key (config cluster.gpu)", gpu.key, cluster["gpu"])
    gpus_per_node = cluster["gpus_per_node"]
    suite = effective_suite(_settings(doc["config"]["suite"], "config.suite"), gpu.key)
    labels = _as_list(doc["nodes"], "nodes")
    n_nodes = len(labels)
    phases = _as_dict(doc["phases"], "phases")
    listed = list(suite.phases)
    ran = [name for name in listed if name != "isolation"]
    for name in ran:
        _require(name in phases, f"phases.{name} is absent though suite.phases lists it")
    if "compute" in phases:
        _suite_compute(r, phases["compute"], suite.compute, n_nodes * gpus_per_node)
    for name in ("intra_node", "inter_node"):
        if name in phases:
            _suite_collectives(r, name, phases[name], suite[name])
    if "intra_node" in phases:
        r.same(
            "phases.intra_node (one group per node)", len(phases["intra_node"]["per_node"]), n_nodes
        )
    if "inter_node" in phases:
        r.same("phases.inter_node.nodes", phases["inter_node"]["nodes"], n_nodes)
    drift_keys = _drift_keys(r, list(suite.inventory.drift_keys), doc["checks"])
    if "isolation" in listed:
        before = evaluate_phases(phases, gpu, contract, gpus_per_node, drift_keys)
        should_run, reasons = isolation_due(before, suite.isolation.trigger)
        recorded = _as_dict(phases.get("isolation"), "phases.isolation")
        r.same("phases.isolation.triggered", recorded.get("triggered"), should_run)
        if should_run and recorded.get("triggered"):
            outcome = _replay_isolation(r, recorded["outcome"], n_nodes, suite.isolation, contract)
            derived = {"triggered": True, "reasons": reasons or ["trigger=always"]}
            r.same("phases.isolation.reasons", recorded["reasons"], derived["reasons"])
            phases["isolation"] = {**derived, "outcome": outcome}
        else:
            r.same("phases.isolation.reasons", recorded.get("reasons"), reasons)
            phases["isolation"] = {"triggered": False, "reasons": reasons}
    judged = _json_copy(judge(phases, labels, gpu, contract, gpus_per_node, drift_keys))
    _compare_checks(r, _as_list(doc["checks"], "checks"), judged["checks"])
    r.same("verdict", doc["verdict"], judged["verdict"])
    r.same("capacity", doc.get("capacity"), judged["capacity"])
    doc.update(judged)


def _drift_keys(r: Rederivation, recorded: list[Any], stored_checks: Any) -> list[str]:
    """The inventory keys compared across nodes. When the recorded list was redacted on
    writing (a key name that looks secret), the keys the file's drift checks name are used."""
    if REDACTED not in recorded:
        return recorded
    named = [
        str(c["name"]).removeprefix("drift.")
        for c in _as_list(stored_checks, "checks")
        if isinstance(c, dict) and str(c.get("name", "")).startswith("drift.")
    ]
    r.notes.append(
        "config suite.inventory.drift_keys was redacted when the file was written; the "
        "version-drift keys were taken from the file's own drift checks"
    )
    return list(dict.fromkeys(named))


def _compare_checks(r: Rederivation, stored: list[Any], derived: list[dict[str, Any]]) -> None:
    from gosok.benchmarks.suite.verdicts import check_from_dict

    r.compared += 1
    if len(stored) != len(derived):
        r.problems.append(
            f"checks: the file has {len(stored)}, the measurements give {len(derived)}"
        )
        return
    differing = [
        i
        for i, (a, b) in enumerate(zip(stored, derived, strict=True))
        if difference(a, b) is not None
    ]
    for i in differing[:MAX_LISTED]:
        try:
            was = check_from_dict(stored[i]).line()
        except TypeError:
            was = _short(stored[i])
        r.problems.append(
            f"check {i}: stored '{was}', re-derived '{check_from_dict(derived[i]).line()}'"
        )
    if len(differing) > MAX_LISTED:
        r.problems.append(f"checks: {len(differing) - MAX_LISTED} more differ")


# --- spot check ----------------------------------------------------------------------------


def _spotcheck(r: Rederivation) -> None:
    from gosok.benchmarks.spotcheck.driver import derive

    doc = r.doc
    assert doc is not None
    spot = _as_dict(doc["spotcheck"], "spotcheck")
    settings = _settings(doc["settings"], "settings")
    world = (
        len(_as_list(spot["drawn"], "spotcheck.drawn")) * doc["config"]["cluster"]["gpus_per_node"]
    )
    for reading in _as_list(doc["readings"], "readings"):
        reading = _as_dict(reading, "reading")
        if "compute" in reading:
            _suite_compute(r, reading["compute"], settings.compute, world)
        for name in ("intra_node", "inter_node"):
            if name in reading:
                _suite_collectives(r, name, reading[name], settings[name])
    for key, value in _json_copy(derive(spot, doc["readings"])).items():
        r.same(key, doc.get(key), value)
        doc[key] = value


# --- the Benchmark hooks -------------------------------------------------------------------


class Rederiver:
    """A ``Benchmark.rederive`` hook: ``hook(doc)`` lists every reason the figures do not
    re-derive (empty when they all do); ``hook.full(doc)`` gives the whole ``Rederivation``."""

    def __init__(self, kind: str, body: Callable[[Rederivation], None]) -> None:
        self.kind = kind
        self._body = body

    def full(self, doc: Any) -> Rederivation:
        return _guarded(self.kind, doc, self._body)

    def __call__(self, doc: dict[str, Any]) -> list[str]:
        return self.full(doc).reasons()


rederive_collectives = Rederiver("collectives", _collectives)
rederive_gemm = Rederiver("gemm", _gemm)
rederive_suite = Rederiver("suite", _suite)
rederive_spotcheck = Rederiver("spotcheck", _spotcheck)


def rederivation(hook: Callable[[dict[str, Any]], list[str]], kind: str, doc: Any) -> Rederivation:
    """The full result of a record's ``rederive`` hook (a plain hook's reasons as problems)."""
    full = getattr(hook, "full", None)
    if full is not None:
        return full(doc)
    try:
        reasons = list(hook(doc))
    except Exception as err:  # a third-party hook: its failure is a finding, not a crash
        return Rederivation(kind, None, malformed=f"{kind} re-derivation failed: {err}")
    return Rederivation(kind, copy.deepcopy(doc), problems=reasons, compared=1)
