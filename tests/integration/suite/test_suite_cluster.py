"""``gosok bench suite=quick`` end to end on a real local Ray cluster, healthy and degraded.

The module starts its own 3-node cluster (``suitetest``) and stops it at the end. Runs:

- degraded, 5 times: one node's rank workers are put under a CPU quota (cgroup,
  15% of one core for the node's two ranks) once the ranks are up, i.e. when the
  suite prints ``phase compute`` (so actor start-up under the quota does not dominate
  the test's time). The suite must fail and name exactly that node, every time; the
  degraded node rotates, so position (head or worker) does not matter;
- healthy, after the quota is lifted: exit 0, no node named, results.json + report.md +
  report.html written, the seal verifies.

Needs root for the cgroup (skips cleanly otherwise). Linux network namespaces + tc netem
are not used here: the local cluster runs every node on one loopback address.

Run: ``pytest tests/suite/test_suite_cluster.py -q`` (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cpu_quota import CpuQuota, cgroup_layout
from omegaconf import OmegaConf

from gosok.launcher.cluster import local as local_cluster
from gosok.launcher.config.schema import ClusterConfig
from gosok.launcher.results.store import load_results

NAME = "suitetest"
NODES = 3
QUOTA_US = 15_000
PERIOD_US = 100_000


@pytest.fixture(scope="module")
def suite_cluster(state_dir):
    cfg = OmegaConf.structured(ClusterConfig(name=NAME, nodes=NODES, gpus_per_node=2))
    state = local_cluster.start(cfg)
    try:
        yield state
    finally:
        local_cluster.stop(NAME)


def run_suite(
    out_dir: Path, state=None, degrade: int | None = None, timeout_s: float = 240
) -> tuple[int, str, dict, list[int]]:
    """Run the quick suite through the real CLI; optionally throttle node ``degrade``."""
    cmd = [
        sys.executable,
        "-m",
        "gosok.launcher.cli",
        "bench",
        "suite=quick",
        f"cluster.name={NAME}",
        f"cluster.nodes={NODES}",
        f"hydra.run.dir={out_dir}",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
    )
    quota = None
    throttled: list[int] = []
    lines = []
    deadline = time.monotonic() + timeout_s
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if degrade is not None and quota is None and "phase compute" in line:
                quota = CpuQuota(
                    state.pgids[degrade], QUOTA_US, PERIOD_US, name=NAME, workers_only=True
                ).__enter__()
                throttled = list(quota.moved)
            if time.monotonic() > deadline:
                proc.kill()
        proc.wait(timeout=30)
    finally:
        if quota is not None:
            quota.__exit__(None, None, None)
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines)
    results = out_dir / "results.json"
    doc = json.loads(results.read_text()) if results.exists() else {}
    return proc.returncode, output, doc, throttled


def failing(doc: dict) -> list[int]:
    return [n["node_rank"] for n in doc["verdict"]["failing_nodes"]]


def degraded_node_rank(doc: dict, throttled: list[int]) -> int:
    """The node rank the suite gave the throttled processes (from the placement pids)."""
    ranks = {p["node_rank"] for p in doc["env"]["placement"] if p["pid"] in throttled}
    assert len(ranks) == 1, f"throttled pids {throttled} map to node ranks {ranks}"
    return ranks.pop()


@pytest.mark.skipif(cgroup_layout() is None, reason="needs a writable cgroup cpu controller")
def test_degraded_node_is_named_in_every_run(suite_cluster, tmp_path: Path) -> None:
    # Each node degraded once (three full quick suites: the slowest test of CI's budget).
    for attempt, node_index in enumerate([2, 1, 0]):
        code, output, doc, throttled = run_suite(
            tmp_path / f"degraded{attempt}", suite_cluster, degrade=node_index
        )
        assert throttled, "no rank worker found to throttle"
        assert doc, output[-4000:]
        expected = degraded_node_rank(doc, throttled)
        assert code == 1, output[-4000:]
        assert failing(doc) == [expected], (attempt, failing(doc), expected, output[-3000:])
        isolation = doc["phases"]["isolation"]
        assert isolation["triggered"]
        assert isolation["outcome"]["culprits"] == [expected]
        assert isolation["outcome"]["round_count"] <= isolation["outcome"]["round_budget"]
        assert str(expected) in isolation["outcome"]["evidence"]


@pytest.fixture(scope="module")
def healthy(suite_cluster, tmp_path_factory) -> tuple[Path, int, str, dict, float]:
    out_dir = tmp_path_factory.mktemp("healthy")
    begin = time.monotonic()
    code, output, doc, _ = run_suite(out_dir)
    return out_dir, code, output, doc, time.monotonic() - begin


def test_quick_suite_healthy_names_no_node_and_writes_reports(healthy) -> None:
    out_dir, code, output, doc, took = healthy
    assert code == 0, output[-4000:]
    assert took < 120, f"quick suite took {took:.0f}s"
    assert doc["kind"] == "suite" and doc["verdict"]["cluster"] in ("PASS", "WARN")
    assert failing(doc) == []
    for name in ("results.json", "report.md", "report.html", "suite_busbw.png"):
        assert (out_dir / name).exists(), name
    assert load_results(out_dir / "results.json")["sha256"] == doc["sha256"]
    phases = doc["phases"]
    assert {"inventory", "compute", "intra_node", "inter_node", "isolation"} <= set(phases)
    assert len(phases["compute"]["ranks"]) == NODES * 2
    assert len(phases["intra_node"]["per_node"]) == NODES
    assert doc["capacity"]["measured_b200_eq"] > 0
    assert "cluster verdict" in output


def run_spotcheck(out_dir: Path, claims: Path, nonce: str, key: Path) -> tuple[int, str, dict]:
    cmd = [
        sys.executable, "-m", "gosok.launcher.cli", "bench", "suite=spotcheck",
        f"spotcheck.claims={claims}", "spotcheck.nodes=2", f"audit.nonce={nonce}",
        f"sign.key={key}", f"cluster.name={NAME}", f"cluster.nodes={NODES}",
        f"hydra.run.dir={out_dir}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=dict(os.environ))
    results = out_dir / "results.json"
    doc = json.loads(results.read_text()) if results.exists() else {}
    return proc.returncode, proc.stdout + proc.stderr, doc


def test_spot_check_passes_honest_claims_and_fails_claims_scaled_by_a_quarter(
    healthy, tmp_path: Path
) -> None:
    """The auditor re-measures 2 of the 3 claimed nodes (drawn by its nonce): the honest
    claims pass; the same file with every raw time x 0.25, re-derived and re-signed (it
    verifies), fails naming a node, a figure, claimed and measured."""
    from forgery import scaled_claims

    from gosok.launcher.results.signing import new_keypair

    claims = healthy[0] / "results.json"
    (tmp_path / "keys").mkdir(mode=0o700)
    provider, _ = new_keypair(tmp_path / "keys" / "provider")
    auditor, auditor_pub = new_keypair(tmp_path / "keys" / "auditor")
    forged = scaled_claims(claims, tmp_path / "forged.json", 0.25, provider)
    code, output, doc = run_spotcheck(tmp_path / "honest", claims, "audit-1", auditor)
    assert code == 0 and doc["verdict"]["spotcheck"] == "PASS", output[-4000:]
    drawn = [d["node_rank"] for d in doc["spotcheck"]["drawn"]]
    assert len(set(drawn)) == 2 and doc["signature"]["public_key_fingerprint"]
    code, output, doc = run_spotcheck(tmp_path / "forged", forged, "audit-1", auditor)
    assert code == 1 and doc["verdict"]["spotcheck"] == "FAIL", output[-4000:]
    assert len(doc["readings"]) == 2, "a FAIL is measured twice before it is declared"
    failed = [c for c in doc["checks"] if c["status"] == "FAIL"]
    assert failed and all(c["subject"].startswith(("node", "cluster")) for c in failed)
    assert "FAIL" in output and "claimed" in output
    verify = subprocess.run(
        [sys.executable, "-m", "gosok.launcher.cli", "report", "verify",
         str(tmp_path / "forged" / "results.json"), "--public-key", str(auditor_pub),
         "--nonce", "audit-1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0 and "VERIFIED" in verify.stdout, verify.stdout
