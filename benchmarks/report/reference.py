"""A results file judged against the auditor's reference, never against its own.

Re-derivation proves a file consistent with what it recorded: its GPU entry, contract,
suite settings and method. A provider who records a laxer contract, a suite with fewer
sizes, a ``time_reduce`` of ``min`` or a file without one node's compute rows stays
consistent. Each benchmark's ``reference`` hook compares what its file recorded with the
reference and judges the re-derived measurements with it (the suite: gosok's catalogue
entry, the auditor's contract (``--contract NAME|PATH``) or gosok's own, gosok's suite
settings, the method, coverage of every node; collectives: the method; GEMM: the peaks);
this module turns the hook's answer into the ``reference`` aspect.

Use: ``aspect = reference_aspect(doc, rederived_doc, contract=None)`` -> ``Aspect``.
"""

from __future__ import annotations

from typing import Any

from gosok.benchmarks.report.trust import FAIL, NOT_CHECKED, OK, Aspect


def reference_aspect(
    doc: dict[str, Any], rederived: dict[str, Any] | None, contract: str | None = None
) -> Aspect:
    """The ``reference`` aspect: OK when the file's GPU entry, contract, settings, method and
    coverage are the reference's and the reference judges it no worse than it says."""
    from gosok.benchmarks.core.registry import for_kind
    from gosok.launcher.errors import ConfigError

    record = for_kind(str(doc.get("kind")))
    if rederived is None:
        return Aspect("reference", NOT_CHECKED, "the file could not be re-derived")
    if record is None or record.reference is None:
        return Aspect(
            "reference", NOT_CHECKED, f"no reference for results of kind {doc.get('kind')}"
        )
    try:
        problems = record.reference(doc, rederived, contract)
    except ConfigError as err:
        return Aspect("reference", FAIL, "; ".join(err.problems))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return Aspect("reference", FAIL, f"cannot compare with the reference: {err!r}")
    if not problems:
        what = f"contract {contract}" if contract else "gosok's catalogue, contract and suite"
        return Aspect("reference", OK, f"recorded settings and method are the reference's ({what})")
    return Aspect("reference", FAIL, f"{len(problems)} difference(s) from the reference", problems)
