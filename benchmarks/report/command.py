"""``gosok report``: everything derived from results files, always re-derived from raw data.

- ``gosok report RESULTS [--plot PNG] [--out-dir DIR]``: the tables and reports of one file,
  made from its re-derived figures (stored figures that differ are flagged; exit 1).
- ``gosok report verify RESULTS... [--public-key PUB ...] [--nonce N ...]``: one line per
  aspect (seal, signature, nonce, figures); exit 0 only when every aspect checked passes.
  Without ``--public-key`` the signature is not checked, and the output says so.
- ``gosok report sign RESULTS --key KEY``: sign an existing file in place; refused (exit 1)
  when its seal is broken or its figures do not re-derive from its raw data. A file
  nccl-tests wrote gets a signed gosok copy carrying it (``RESULTS.gosok.json`` or ``--out``).
- ``gosok report compare A B [--tolerance 0.05] [--out MD] [--allow-different-gpus]``:
  what changed between two runs of the same kind and GPU type (re-derived figures).
- ``gosok report audit FILES... --out-dir DIR [--public-key PUB ...] [--nonce N ...]``:
  audit.md, audit.html and audit.csv over many files, grouped by GPU type (see ``audit``).

Bad input (a missing, truncated or foreign file, a bad key, a bad option) is one line on
stderr and exit 2, never a traceback. Each results ``kind`` is rendered, re-derived and
compared by the ``Benchmark`` record that writes it (``core.registry.for_kind``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from hashlib import sha256
from pathlib import Path
from typing import Any

from gosok.benchmarks.core.rederive import Rederivation
from gosok.benchmarks.report.trust import (
    MAX_FILE_BYTES,
    InputError,
    assess,
    check_nonces,
    load_input,
    load_public_keys,
    printable,
    rederive_doc,
)

SUBCOMMANDS = ("verify", "sign", "compare", "audit")
USAGE = """usage: gosok report RESULTS [--plot PNG] [--out-dir DIR] [--stragglers]
       gosok report verify RESULTS... [--public-key PUB ...] [--nonce N ...] [--allow-unsigned]
       gosok report verify RESULTS... --registry REGISTRY.yaml
       gosok report sign RESULTS --key KEY [--out PATH]
       gosok report compare BASELINE CANDIDATE [--tolerance 0.05] [--out MD]
                                               [--allow-different-gpus]
       gosok report audit RESULTS... --out-dir DIR [--public-key PUB ...] [--nonce N ...]
"""
PARSER_USAGE = USAGE.removeprefix("usage: ")  # argparse writes "usage: " itself
MALFORMED_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises on a usage error instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"gosok report{command}: error: {message}", file=sys.stderr)
    return code


def _flag_lines(path: str, result: Any) -> list[str]:
    lines = [f"NOT RE-DERIVABLE {path}: {p}" for p in result.problems]
    lines += [
        f"NOT RE-DERIVABLE {path}: no raw data: {m} (stored figure shown)" for m in result.missing
    ]
    lines += [f"NOTE {path}: {n}" for n in result.notes]
    return lines


def _loaded(path: str, command: str) -> dict[str, Any]:
    """A results file whose seal matches; InputError otherwise (exit 2 or 1 by the caller)."""
    doc, sealed = load_input(path)
    if not sealed:
        raise _SealBroken(
            f"{path}: sha256 does not match the content (edited after it was written); "
            f"refusing to {command} it"
        )
    return doc


class _SealBroken(Exception):
    pass


# --- render ---------------------------------------------------------------------------------


def _render(argv: list[str]) -> int:
    from gosok.benchmarks.core.registry import for_kind

    parser = _Parser(prog="gosok report", usage=PARSER_USAGE)
    parser.add_argument("results")
    parser.add_argument("--plot", help="also write a PNG plot here")
    parser.add_argument("--out-dir", help="write Markdown/HTML reports here (suite results)")
    parser.add_argument(
        "--stragglers",
        action="store_true",
        help="per size: fastest and slowest rank, spikes, per-node spread (collective results)",
    )
    args = parser.parse_args(argv)
    if Path(args.results).is_dir():
        run_dir = Path(args.results)
        if not (run_dir / "results.json").is_file():
            from gosok.benchmarks.report.partial import render_run_dir

            return render_run_dir(run_dir)  # a run that did not finish: its journal
        args.results = str(run_dir / "results.json")
    try:
        doc = _loaded(args.results, "report")
    except InputError as err:
        nccl = _nccl_tests_input(args.results)
        if nccl is not None:
            return _render_nccl_tests(args.results, nccl, args)
        return _fail("", str(err))
    except _SealBroken as err:
        return _fail("", str(err), 1)
    if doc.get("source") == "nccl-tests" and isinstance(doc.get("nccl_tests"), dict):
        return _render_nccl_tests(args.results, doc["nccl_tests"], args, signed=True)
    record = for_kind(doc["kind"])
    if record is None:
        return _fail("", f"{args.results}: no renderer for results of kind {doc['kind']!r}")
    result = rederive_doc(doc)
    if result.malformed or result.doc is None:
        return _fail("", f"{args.results}: {result.malformed}")
    for line in _flag_lines(args.results, result):
        print(line)
    try:
        if args.out_dir:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        code = record.render(result.doc, args)
    except MALFORMED_ERRORS as err:
        return _fail("", f"{args.results}: cannot render these {doc['kind']} results: {err!r}")
    except OSError as err:
        return _fail("", f"cannot write the report: {err.strerror or err}: {err.filename or ''}")
    if args.stragglers:
        _print_stragglers(_collective_records(result.doc), _placement_hosts(result.doc))
    return max(code, 1 if result.problems else 0)


def _collective_records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc.get("kind") == "suite":
        phases = doc.get("phases") or {}
        names = ("intra_node", "inter_node")
        return [r for n in names for r in (phases.get(n) or {}).get("records", [])]
    return list(doc.get("records") or []) if doc.get("kind") == "collectives" else []


def _placement_hosts(doc: dict[str, Any]) -> dict[int, str]:
    placement = (doc.get("env") or {}).get("placement") or []
    return {int(p["rank"]): str(p.get("hostname")) for p in placement if "rank" in p}


def _print_stragglers(records: list[dict[str, Any]], hosts: dict[int, str]) -> None:
    from gosok.benchmarks.collectives.stragglers import straggler_lines

    print("# stragglers and spikes (every timed iteration of every rank)")
    for line in straggler_lines(records, hosts):
        print(printable(line))


def _nccl_tests_input(path: str) -> dict[str, Any] | None:
    """The document of a file nccl-tests wrote (``-J``), or None for anything else. Asked
    only of a file that is not a gosok results file, so a gosok file is read once."""
    from gosok.benchmarks.collectives.nccl_tests import is_nccl_tests

    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:
            return None
        doc = json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return doc if is_nccl_tests(doc) else None


def _nccl_tests_results(path: str, doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An nccl-tests file as gosok collective results; ``InputError`` naming the file when
    it lacks what busbw needs."""
    from gosok.benchmarks.collectives.nccl_tests import as_results

    try:
        return as_results(doc, Path(path).stem)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: an nccl-tests file gosok cannot read: {err}") from None


def _render_nccl_tests(
    path: str, doc: dict[str, Any], args: argparse.Namespace, signed: bool = False
) -> int:
    from gosok.benchmarks.collectives.report import plot_busbw, render_table

    try:
        results, problems = _nccl_tests_results(path, doc)
    except InputError as err:
        return _fail("", str(err))
    print(
        printable(
            f"{path}: nccl-tests JSON (version {doc['version']}), "
            f"{'signed copy (`gosok report verify` checks it)' if signed else 'UNSIGNED'}; "
            "algbw and busbw re-derived from its times with gosok's formulas"
        )
    )
    for line in problems:
        print(printable(f"NOT RE-DERIVABLE {path}: {line}"))
    skip = int(doc["config"].get("per_iter_skip") or 0)
    per_iteration = any("iteration_stats" in r for r in results["records"])
    for line in render_table(results["records"], skip if per_iteration else None).splitlines():
        print(printable(line))
    if getattr(args, "plot", None) and results["records"]:
        print(f"plot: {plot_busbw(results['records'], args.plot)}")
    if getattr(args, "stragglers", False):
        from gosok.benchmarks.collectives.nccl_tests import hosts

        _print_stragglers(results["records"], hosts(doc))
    return 1 if problems else 0


# --- verify and sign ------------------------------------------------------------------------


def _sign_nccl_tests(args: argparse.Namespace, nccl: dict[str, Any], key: Any) -> int:
    """Sign a file nccl-tests wrote: a gosok results file (``<file>.gosok.json`` unless
    ``--out``) holding the nccl-tests document verbatim, its figures re-derived from it, and
    its sha256, sealed and signed. The original is left as nccl-tests wrote it."""
    from gosok.launcher.results.signing import fingerprint, sign_doc
    from gosok.launcher.results.store import SCHEMA, write_results

    try:
        results, problems = _nccl_tests_results(args.results, nccl)
    except InputError as err:
        return _fail(" sign", str(err))
    if problems:
        return _fail(
            " sign",
            f"refusing to sign {args.results}: its figures do not re-derive from its times "
            f"({len(problems)} reason(s), e.g. {problems[0]})",
            1,
        )
    raw = Path(args.results).read_bytes()
    results = json.loads(json.dumps(results))  # as it will read back (rank keys as strings)
    doc = {
        **results,
        "nccl_tests": nccl,
        "nccl_tests_file": {"name": Path(args.results).name, "sha256": sha256(raw).hexdigest()},
        "schema": SCHEMA,
        "created_unix": time.time(),
    }
    out = Path(args.out or f"{args.results}.gosok.json")
    try:
        write_results(out, sign_doc(doc, key))
    except (OSError, ValueError) as err:
        return _fail(" sign", f"{out}: {err}")
    print(f"signed {args.results} (nccl-tests) with {fingerprint(key)}: {out}")
    return 0


def _trust_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--public-key", action="append", metavar="PUB")
    parser.add_argument("--nonce", action="append")
    parser.add_argument(
        "--registry", metavar="YAML", help="the auditor's providers, their keys and clusters"
    )
    parser.add_argument(
        "--contract", metavar="NAME|PATH", help="the contract to judge by (default: gosok's own)"
    )


def _assessed(args: argparse.Namespace) -> tuple[list[Any], list[str]]:
    """Every results file of ``args`` loaded and assessed against the keys and nonces
    given, or against the auditor's registry, and a line for each file that could not be
    judged (``InputError`` when a key, nonce or registry cannot be read)."""
    if args.registry and (args.public_key or args.nonce):
        raise InputError(
            "give --registry or --public-key/--nonce, not both: the registry names each "
            "provider's keys and each cluster's nonce"
        )
    loaded, unreadable = [], []
    derived: dict[str, Any] = {}
    for path in args.results:
        try:
            loaded.append((path, *load_input(path)))
        except InputError:
            nccl = _nccl_tests_input(path)
            try:
                if nccl is None:
                    raise
                doc, problems = _nccl_tests_results(path, nccl)
            except InputError as bad:
                unreadable.append(str(bad))
                continue
            derived[path] = Rederivation("collectives", doc, problems=problems, compared=1)
            loaded.append((path, doc, False))
    if not args.registry:
        keys = load_public_keys(args.public_key)
        nonces = check_nonces(args.nonce)
        assessed = [
            assess(path, doc, sealed, keys, nonces, derived.get(path), args.contract)
            for path, doc, sealed in loaded
        ]
        return _split_malformed(assessed, unreadable)
    from gosok.benchmarks.report.registry import load_registry
    from gosok.benchmarks.report.trust import FAIL, OK, Aspect

    registry = load_registry(args.registry)
    assessed = []
    for path, doc, sealed in loaded:
        found = assess(
            path, doc, sealed, registry.keys_for(doc), registry.nonces_for(doc),
            derived.get(path), args.contract,
        )  # fmt: skip
        ok, detail = registry.identity(doc, bool(found.signature and found.signature.ok))
        found.aspects.insert(2, Aspect("identity", OK if ok else FAIL, detail))
        assessed.append(found)
    return _split_malformed(assessed, unreadable)


def _split_malformed(assessed: list[Any], unreadable: list[str]) -> tuple[list[Any], list[str]]:
    """The files that could be judged, and one line for each that could not (not a results
    file, or one whose content does not have the structure of its kind)."""
    judged = [a for a in assessed if not a.malformed]
    unreadable += [f"{a.path}: {a.rederived.malformed}" for a in assessed if a.malformed]
    return judged, unreadable


def _verify(argv: list[str]) -> int:
    parser = _Parser(prog="gosok report verify", usage=PARSER_USAGE)
    parser.add_argument("results", nargs="+")
    _trust_options(parser)
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="exit 0 for a file that holds up but is unsigned (it still says UNSIGNED)",
    )
    args = parser.parse_args(argv)
    try:
        verdicts, unreadable = _assessed(args)
    except InputError as err:
        return _fail(" verify", str(err))
    status = 1 if unreadable else 0
    for line in unreadable:
        print(printable(f"NOT VERIFIED {line}"))
    for verdict in verdicts:
        print("\n".join(verdict.lines()))
        if not verdict.passed or not (verdict.verified or args.allow_unsigned):
            status = max(status, 1)
    return status


def _sign(argv: list[str]) -> int:
    from gosok.launcher.results.signing import fingerprint, load_private_key, sign_file

    parser = _Parser(prog="gosok report sign", usage=PARSER_USAGE)
    parser.add_argument("results")
    parser.add_argument("--key", required=True, metavar="KEY")
    parser.add_argument(
        "--out", metavar="PATH", help="a file nccl-tests wrote: where its signed copy goes"
    )
    args = parser.parse_args(argv)
    try:
        key = load_private_key(args.key)
    except ValueError as err:
        return _fail(" sign", f"--key {args.key}: {err}")
    try:
        doc = _loaded(args.results, "sign")
    except InputError as err:
        nccl = _nccl_tests_input(args.results)
        if nccl is None:
            return _fail(" sign", str(err))
        return _sign_nccl_tests(args, nccl, key)
    except _SealBroken as err:
        return _fail(" sign", str(err), 1)
    result = rederive_doc(doc)
    if result.malformed:
        return _fail(" sign", f"{args.results}: {result.malformed}")
    if not result.ok:
        reasons = result.reasons()
        return _fail(
            " sign",
            f"refusing to sign {args.results}: its figures do not re-derive from its raw data "
            f"({len(reasons)} reason(s), e.g. {reasons[0]})",
            1,
        )
    try:
        sign_file(args.results, key)
    except (OSError, ValueError) as err:
        return _fail(" sign", f"{args.results}: {err}")
    print(f"signed {args.results} with {fingerprint(key)}")
    return 0


# --- compare --------------------------------------------------------------------------------


def gpu_type(doc: dict[str, Any]) -> str | None:
    """The GPU type (catalogue key) a results file was measured on."""
    gpu = doc.get("gpu")
    if isinstance(gpu, dict) and isinstance(gpu.get("key"), str):
        return gpu["key"]
    peak = doc.get("peak")
    if isinstance(peak, dict) and isinstance(peak.get("gpu"), str):
        return peak["gpu"]
    config = doc.get("config")
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if isinstance(cluster, dict) and isinstance(cluster.get("gpu"), str):
        return cluster["gpu"]
    return None


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"--tolerance={text!r}: a relative drop must be a finite number from 0 to 1 "
            "(e.g. 0.05 for 5%)"
        )
    return value


def _compare(argv: list[str]) -> int:
    from gosok.benchmarks.core.registry import for_kind

    parser = _Parser(prog="gosok report compare", usage=PARSER_USAGE)
    parser.add_argument("baseline")
    parser.add_argument("candidate")
    parser.add_argument(
        "--tolerance",
        type=_tolerance,
        default=0.05,
        help="relative drop that counts as a regression, 0 to 1 (default 0.05)",
    )
    parser.add_argument("--out", help="write the comparison (Markdown) here")
    parser.add_argument(
        "--allow-different-gpus",
        action="store_true",
        help="compare files measured on different GPU types (their figures are not alike)",
    )
    args = parser.parse_args(argv)
    loaded, problems = [], []
    try:
        for path in (args.baseline, args.candidate):
            try:
                loaded.append(_loaded(path, "compare"))
                continue
            except InputError:
                nccl = _nccl_tests_input(path)
                if nccl is None:
                    raise
            doc, found = _nccl_tests_results(path, nccl)
            loaded.append(doc)
            problems += [f"NOT RE-DERIVABLE {path}: {line}" for line in found]
    except InputError as err:
        return _fail(" compare", str(err))
    except _SealBroken as err:
        return _fail(" compare", str(err), 1)
    a, b = loaded
    for line in problems:
        print(printable(line))
    if a["kind"] != b["kind"]:
        return _fail(" compare", f"cannot compare kind {a['kind']!r} with {b['kind']!r}")
    ga, gb = gpu_type(a), gpu_type(b)
    if ga != gb:
        if not args.allow_different_gpus:
            return _fail(
                " compare",
                f"refusing to compare GPU type {ga!r} ({args.baseline}) with {gb!r} "
                f"({args.candidate}): their figures are not alike; pass --allow-different-gpus "
                "to compare anyway",
            )
        print(f"WARNING comparing different GPU types: {ga} vs {gb}; the figures are not alike")
    record = for_kind(a["kind"])
    if record is None or record.compare is None:
        return _fail(" compare", f"no comparison for results of kind {a['kind']!r}")
    results = []
    for path, doc in ((args.baseline, a), (args.candidate, b)):
        if doc.get("source") == "nccl-tests" and "sha256" not in doc:  # derived as read
            mine = [p for p in problems if path in p]
            results.append(Rederivation("collectives", doc, problems=mine))
            continue
        result = rederive_doc(doc)
        if result.malformed or result.doc is None:
            return _fail(" compare", f"{path}: {result.malformed}")
        for line in _flag_lines(path, result):
            print(line)
        results.append(result)
    try:
        code = record.compare(results[0].doc, results[1].doc, args)
    except MALFORMED_ERRORS as err:
        return _fail(" compare", f"cannot compare these {a['kind']} results: {err!r}")
    return max(code, 1 if any(r.problems for r in results) else 0)


# --- audit ----------------------------------------------------------------------------------


def _audit(argv: list[str]) -> int:
    from gosok.benchmarks.report.audit import write_audit

    parser = _Parser(prog="gosok report audit", usage=PARSER_USAGE)
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out-dir", required=True)
    _trust_options(parser)
    args = parser.parse_args(argv)
    try:
        assessments, unreadable = _assessed(args)
    except InputError as err:
        return _fail(" audit", str(err))
    for line in unreadable:
        print(printable(f"NOT AUDITED {line}"))
    try:
        written = write_audit(assessments, Path(args.out_dir), unreadable)
    except OSError as err:
        return _fail(" audit", f"--out-dir {args.out_dir}: {err.strerror or err}")
    for verdict in assessments:
        print(printable(f"{verdict.verdict()}  {verdict.path}"))
    for path in written:
        print(f"audit: {path}")
    return 0 if all(v.verified for v in assessments) and not unreadable else 1


COMMANDS = {"verify": _verify, "sign": _sign, "compare": _compare, "audit": _audit}


def run_report_command(argv: list[str]) -> int:
    """``gosok report ...``; returns the exit code (see the module doc)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    name = argv[0] if argv[0] in COMMANDS else None
    run = COMMANDS[name] if name else _render
    try:
        return run(argv[1:] if name else argv)
    except _UsageError as err:
        return _fail(f" {name}" if name else "", f"{err} (see gosok report --help)")
