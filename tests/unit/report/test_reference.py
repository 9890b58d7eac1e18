"""Forgeries that need no invented number: each stays self-consistent (its figures
re-derive), and each fails the ``reference`` aspect, which judges the file against gosok's
catalogue, contracts and suites (or the auditor's ``--contract``), never its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from trust_docs import collectives_doc, save, suite_doc

from gosok.benchmarks.report.command import run_report_command
from gosok.benchmarks.suite.derive import rederive_suite
from gosok.launcher.results.signing import new_keypair


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, Path]:
    return new_keypair(tmp_path / "provider")


def forged(tmp_path: Path, key, change, doc: dict[str, Any] | None = None) -> Path:
    """Apply ``change``, re-derive every figure with gosok's own code (a consistent
    document), sign with the provider's key."""
    doc = doc or suite_doc()
    change(doc)
    consistent = rederive_suite.full(doc).doc if doc["kind"] == "suite" else doc
    path = tmp_path / "forged.json"
    save(path, consistent, key[0])
    return path


def verify(capsys, path: Path, key, *extra: str) -> tuple[int, str]:
    code = run_report_command(["verify", str(path), "--public-key", str(key[1]), *extra])
    return code, capsys.readouterr().out


def test_an_honest_file_holds_against_the_reference(tmp_path, key, capsys):
    code, out = verify(capsys, forged(tmp_path, key, lambda d: None), key)
    assert code == 0 and "reference  OK" in out, out


def _relax_contract(doc):
    for expectation in doc["contract"]["expectations"].values():
        if "fraction_of_spec" in expectation:
            expectation["fraction_of_spec"] = 0.01


def _drop_node(doc):
    ranks = doc["phases"]["compute"]["ranks"]
    doc["phases"]["compute"]["ranks"] = [r for r in ranks if r["node_rank"] != 1]


def _drop_fp8(doc):
    for row in doc["phases"]["compute"]["ranks"]:
        if row["node_rank"] == 1:
            row["gemm"].pop("fp8")


def _min_reduce(doc):
    for record in doc["phases"]["inter_node"]["records"]:
        record["time_reduce"] = "min"


def _fewer_sizes(doc):
    doc["config"]["suite"]["intra_node"]["max_bytes"] = 1 << 20


@pytest.mark.parametrize(
    "change, needle",
    [
        (_relax_contract, "contract.expectations"),
        (_drop_node, "node 1 gpu 0: no compute figures"),
        (_drop_fp8, "node 1 gpu 1: no gemm_fp8_tflops"),
        (_min_reduce, "time_reduce min"),
        (_fewer_sizes, "suite.intra_node.max_bytes"),
    ],
    ids=[
        "relaxed-contract",
        "node-rows-deleted",
        "fp8-deleted",
        "time-reduce-min",
        "suite-settings",
    ],
)
def test_consistent_forgeries_fail_the_reference(tmp_path, key, capsys, change, needle):
    path = forged(tmp_path, key, change)
    code, out = verify(capsys, path, key)
    if change not in (_drop_node, _drop_fp8):  # re-derivation notices these on its own
        assert "figures    OK" in out, out  # self-consistent: re-derivation alone passes it
    assert code == 1 and "reference  FAIL" in out and needle in out, out


def test_the_auditors_contract_is_the_reference(tmp_path, key, capsys):
    path = forged(tmp_path, key, lambda d: None, suite_doc(scale=0.9))
    assert verify(capsys, path, key)[0] == 0
    code, out = verify(capsys, path, key, "--contract", "strict")
    assert code == 1 and "reference  FAIL" in out and "judged against the reference" in out, out


def test_collectives_with_another_time_reduction_fail_the_reference(tmp_path, key, capsys):
    def use_min(doc):
        doc["config"]["bench"]["time_reduce"] = "min"
        for record in doc["records"]:
            record["time_reduce"] = "min"

    doc = collectives_doc()
    path = forged(tmp_path, key, use_min, doc)
    code, out = verify(capsys, path, key)
    assert code == 1 and "time_reduce min" in out, out
