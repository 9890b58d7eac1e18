"""Verdicts, capacity, the plan estimate, reports, verify and compare (no Ray needed).

Run: ``pytest tests/suite/test_verdicts_reports.py -q``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from suite_synthetic import synthetic_doc, write_doc

from gosok.benchmarks.suite.capacity import capacity, programme_total
from gosok.benchmarks.suite.compare import REGRESSION, compare_docs, regressions
from gosok.benchmarks.suite.phases import suite_plan
from gosok.benchmarks.suite.report import render_html, write_reports
from gosok.benchmarks.suite.schema import (
    ContractConfig,
    Expectation,
    OutlierRule,
    SuiteConfig,
    effective_suite,
    load_contract,
    validate_suite,
)
from gosok.benchmarks.suite.verdicts import (
    FAIL,
    INFO,
    PASS,
    WARN,
    cluster_verdict,
    floor_check,
    nic_node_gbps,
    node_verdicts,
    outlier_checks,
)
from gosok.launcher.config.catalogue import config_dir, gpu_spec, load_catalogue
from gosok.launcher.errors import ConfigError
from gosok.launcher.results.store import load_results, write_results

REPO = Path(__file__).resolve().parents[3]


def test_floor_rule_fraction_of_spec_and_warn_band() -> None:
    h100 = gpu_spec("h100_sxm")
    rule = Expectation(fraction_of_spec=0.6, warn_margin=0.1)
    floor = 0.6 * 1979
    fail = floor_check("compute", "gemm_fp8_tflops", floor - 1, rule, h100, "node 0 gpu 0", "gpu")
    warn = floor_check(
        "compute", "gemm_fp8_tflops", floor * 1.05, rule, h100, "node 0 gpu 0", "gpu"
    )
    ok = floor_check("compute", "gemm_fp8_tflops", 1400.0, rule, h100, "node 0 gpu 0", "gpu")
    assert (fail.status, warn.status, ok.status) == (FAIL, WARN, PASS)
    # Every line carries the value, the expectation and the rule.
    assert "1187" in fail.expectation and "0.60 x dense FP8 spec 1979" in fail.expectation
    assert "fraction of spec" in fail.rule and "node 0 gpu 0" in fail.line()


def test_absolute_floor_and_missing_spec() -> None:
    cpu = gpu_spec("cpu")
    check = floor_check(
        "intra_node", "intra_node_busbw_gbps", 0.5, Expectation(absolute=1.0), cpu, "node 1", "node"
    )
    assert check.status == FAIL and "absolute" in check.expectation
    no_spec = floor_check(
        "intra_node",
        "intra_node_busbw_gbps",
        0.5,
        Expectation(fraction_of_spec=0.7),
        cpu,
        "n",
        "node",
    )
    assert no_spec.status == INFO and "no" in no_spec.rule


def test_outlier_rule_against_the_median() -> None:
    values = [(f"node {i}", i, None, 100.0) for i in range(9)] + [("node 9", 9, None, 93.0)]
    values.append(("node 10", 10, None, 80.0))
    checks = outlier_checks("intra_node", "intra_node_busbw_gbps", values, OutlierRule(), "node")
    status = {c.node_rank: c.status for c in checks}
    assert status[9] == WARN and status[10] == FAIL and status[0] == PASS
    assert "cluster median 100" in checks[10].rule and "-20.0%" in checks[10].detail
    assert node_verdicts(checks, 11)[10] == FAIL and cluster_verdict(checks) == FAIL


def test_nic_rates_from_the_catalogue() -> None:
    assert nic_node_gbps("8x400G NDR InfiniBand") == 400.0
    assert nic_node_gbps("8x800G") == 800.0
    assert nic_node_gbps("vendor-specific") is None


def test_contracts_load_typed_and_refuse_typos(tmp_path: Path) -> None:
    for path in (config_dir() / "contract").glob("*.yaml"):
        assert isinstance(load_contract(str(path), "h200"), ContractConfig)
    assert load_contract("auto", "cpu").name == "cpu_fallback"
    assert load_contract("auto", "b200").name == "default"
    bad = tmp_path / "bad.yaml"
    bad.write_text("expectations:\n  gemm_fp9_tflops: {absolute: 1}\n")
    with pytest.raises(ConfigError, match="gemm_fp9_tflops"):
        load_contract(str(bad), "h200")
    typo = tmp_path / "typo.yaml"
    typo.write_text("outlyer: {}\n")
    with pytest.raises(ConfigError):
        load_contract(str(typo), "h200")
    with pytest.raises(ConfigError, match="allowed"):
        load_contract("nope", "h200")


def test_per_gpu_contract_overrides() -> None:
    strict = load_contract("strict", "h100_sxm")
    from gosok.benchmarks.suite.verdicts import resolve_expectations

    assert resolve_expectations(strict, "h100_sxm")["gemm_fp8_tflops"].absolute == 1400
    assert resolve_expectations(strict, "a100")["gemm_fp8_tflops"].fraction_of_spec == 0.70


def test_capacity_in_b200_equivalents() -> None:
    catalogue = load_catalogue()
    total = programme_total({"vera_rubin": 2016, "b300": 7688}, catalogue)
    assert 19_300 < total < 19_400  # the programme's "about 19 thousand"
    b200 = capacity(catalogue["b200"], 8, [3433.0] * 8, 3433.0)
    assert b200["nominal_b200_eq"] == 8 and b200["measured_b200_eq"] == pytest.approx(8)
    h200 = capacity(catalogue["h200"], 8, [1453.0] * 8, 3433.0)
    assert h200["nominal_b200_eq"] == pytest.approx(8 * 1979 / 4500)
    assert h200["measured_b200_eq"] == pytest.approx(8 * 1453 / 3433)


def _suite(name: str) -> SuiteConfig:
    raw = OmegaConf.load(config_dir() / "suite" / f"{name}.yaml")
    raw.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(SuiteConfig), raw)


@pytest.mark.parametrize("name", ["quick", "acceptance", "audit"])
def test_suite_configs_validate(name: str) -> None:
    suite = _suite(name)
    assert suite.name == name and validate_suite(suite) == []
    assert validate_suite(effective_suite(suite, "cpu")) == []


def test_plan_estimate_per_node_phases_do_not_grow_with_nodes() -> None:
    suite = _suite("acceptance")
    b200 = gpu_spec("b200")
    small = suite_plan(
        suite, OmegaConf.create({"name": "a", "nodes": 16, "gpus_per_node": 8}), b200
    )
    large = suite_plan(
        suite, OmegaConf.create({"name": "b", "nodes": 510, "gpus_per_node": 8}), b200
    )
    by_phase = {p["phase"]: p for p in small["phases"]}
    for p in large["phases"]:
        if p["grows_with_nodes"] == "no":
            assert p["seconds"] == pytest.approx(by_phase[p["phase"]]["seconds"])
    assert large["estimate_seconds"] < 1.5 * small["estimate_seconds"]
    assert any("budget" in p["note"] for p in large["phases"] if p["phase"] == "isolation")


def test_quick_estimate_on_cpu_is_under_two_minutes() -> None:
    suite = effective_suite(_suite("quick"), "cpu")
    plan = suite_plan(
        suite, OmegaConf.create({"name": "l", "nodes": 3, "gpus_per_node": 2}), gpu_spec("cpu")
    )
    assert plan["estimate_seconds_with_isolation"] < 120


def test_synthetic_healthy_and_degraded_clusters() -> None:
    healthy = synthetic_doc(nodes=8)
    assert healthy["verdict"]["cluster"] == PASS and healthy["verdict"]["failing_nodes"] == []
    degraded = synthetic_doc(nodes=8, slow_node=5)
    assert degraded["verdict"]["cluster"] == FAIL
    assert [n["node_rank"] for n in degraded["verdict"]["failing_nodes"]] == [5]


def test_reports_are_written_and_html_is_self_contained(tmp_path: Path) -> None:
    doc = write_doc(tmp_path / "results.json", nodes=6, slow_node=2)
    written = write_reports(load_results(tmp_path / "results.json"), tmp_path)
    names = {p.name for p in written}
    assert {
        "report.md",
        "report.html",
        "exclude.txt",
        "suite_busbw.png",
        "suite_gemm.png",
        "suite_heatmap.png",
    } <= names
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page
    assert "FAIL" in page and doc["sha256"] in page
    md = (tmp_path / "report.md").read_text()
    assert "node 2" in md and "B200" in md and "![" in md
    assert render_html(doc, {}).startswith("<!DOCTYPE html>")
    # The condemned node, as a Slurm exclude list (hostnames, one per line).
    slow_host = doc["nodes"][2]["hostname"]
    assert (tmp_path / "exclude.txt").read_text() == f"{slow_host}\n"


def _cli(*args: str) -> tuple[int, str]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "gosok.launcher.cli", *args], capture_output=True, text=True
    )
    return out.returncode, out.stdout + out.stderr


def test_report_verify_detects_an_edited_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_doc(path, nodes=4)
    code, out = _cli("report", "verify", str(path), "--allow-unsigned")
    assert code == 0 and "OK" in out
    doc = json.loads(path.read_text())
    doc["phases"]["inter_node"]["busbw_gbps"] *= 1.5  # make the run look better
    path.write_text(json.dumps(doc, indent=1))
    code, out = _cli("report", "verify", str(path))
    assert code == 1 and "TAMPERED" in out


def test_compare_flags_a_planted_regression(tmp_path: Path) -> None:
    a = write_doc(tmp_path / "a.json", nodes=6, seed=1)
    b = write_doc(tmp_path / "b.json", nodes=6, seed=2, slow_node=4)
    rows = compare_docs(a, b, tolerance=0.05)
    found = {(r.scope, r.figure) for r in regressions(rows)}
    assert ("cluster", "verdict") in found
    assert ("cluster", "gemm_fp8_tflops min per GPU") in found
    assert any(scope.startswith("node gpu-004") for scope, _ in found)
    assert not any(scope.startswith("node gpu-001") for scope, _ in found)
    same = compare_docs(a, write_results(tmp_path / "c.json", synthetic_doc(nodes=6, seed=3)))
    assert regressions(same) == []
    code, out = _cli(
        "report",
        "compare",
        str(tmp_path / "a.json"),
        str(tmp_path / "b.json"),
        "--out",
        str(tmp_path / "diff.md"),
    )
    assert code == 1 and REGRESSION in out
    assert REGRESSION in (tmp_path / "diff.md").read_text()
    code, out = _cli("report", "compare", str(tmp_path / "a.json"), str(tmp_path / "c.json"))
    assert code == 0 and "0 regression(s)" in out


def test_report_command_renders_a_suite_file(tmp_path: Path) -> None:
    write_doc(tmp_path / "results.json", nodes=4)
    code, out = _cli("report", str(tmp_path / "results.json"), "--out-dir", str(tmp_path / "again"))
    assert code == 0 and "cluster verdict: PASS" in out
    assert (tmp_path / "again" / "report.html").exists()


def test_dry_run_prints_plan_and_estimate_at_510_nodes() -> None:
    code, out = _cli(
        "bench",
        "suite=acceptance",
        "cluster=nhn_b200_510",
        "cluster.address=10.0.0.1:6379",
        "dry_run=true",
    )
    assert code == 0, out
    assert "510 nodes x 8 NVIDIA B200" in out and "estimated wall time" in out
    assert "4080 GPUs at once" in out and "budget" in out
