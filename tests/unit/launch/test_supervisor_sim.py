"""The supervisor benchmark at a tiny scale: both designs measured, every fault detected
with the right node or rank named, the results file sealed."""

from __future__ import annotations

import pytest

from gosok.benchmarks.overhead import supervisor
from gosok.launcher.results.store import load_results


def test_the_supervisor_benchmark_runs_small_and_names_the_right_culprits(tmp_path, capsys):
    out = tmp_path / "supervisor_sim.json"
    argv = ["--nodes", "8", "--ranks-per-node", "2", "--polls", "4", "--warmup", "1",
            "--lead-polls", "3", "--hang-timeout-s", "3", "--out", str(out)]  # fmt: skip
    assert supervisor.main(argv) == 0
    doc = load_results(out)
    assert doc["kind"] == "supervisor_sim" and doc["all_right"] is True
    assert doc["scale"] == {"nodes": 8, "ranks_per_node": 2, "world": 16}
    assert doc["policy"]["poll_s"] == 0.5 and doc["policy"]["missed_reports"] == 3
    node, rank = doc["designs"]["per_node"], doc["designs"]["per_rank"]
    assert (node["messages_per_poll"], rank["messages_per_poll"]) == (8, 16)
    assert node["messages_per_s"] == 16 and len(node["cpu_s_per_poll_each"]) == 4
    assert node["cpu_fraction_per_s"] == pytest.approx(node["cpu_s_per_poll"] / 0.5)
    assert doc["ratio_per_rank_to_per_node"]["messages"] == 2
    scenarios = doc["scenarios"]
    assert set(scenarios) == {"node_silent", "node_dead", "rank_exit", "hang"}
    for s in scenarios.values():
        assert s["right"] and s["latency_s"] == pytest.approx(s["expected_latency_s"])
    assert scenarios["node_silent"]["latency_s"] == pytest.approx(3 * (0.5 + 5.0))
    assert scenarios["hang"]["named"] == "rank 9" and scenarios["hang"]["verdict"] == "hang"
    assert scenarios["rank_exit"]["named"] == "rank 9 (code 1)"
    assert "no Ray transport" in doc["method"]
    assert "per-rank / per-node" in capsys.readouterr().out
