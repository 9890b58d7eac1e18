"""The auditor's spot check without Ray: the nonce-seeded draw, the claimed-vs-measured
judgement with its confirm reading, the results' re-derivation, and the settings refused
before anything starts (through the real CLI)."""

from __future__ import annotations

import collections
import json
from math import comb
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from gosok.benchmarks.spotcheck.driver import claimed_figures, derive, draw, rederive_spotcheck
from gosok.benchmarks.suite.schema import reference_suite
from gosok.launcher.results.signing import new_keypair
from gosok.launcher.results.store import write_results
from tests.conftest import assert_refused_clearly, run_refused
from tests.unit.report.trust_docs import suite_doc

SHA = "ab" * 32


def test_the_draw_is_fixed_by_the_nonce_and_fair_to_every_node() -> None:
    assert draw(8, 3, "n1", SHA) == draw(8, 3, "n1", SHA)
    assert len(set(draw(8, 3, "n1", SHA))) == 3
    assert {tuple(draw(8, 3, f"n{i}", SHA)) for i in range(20)} != {tuple(draw(8, 3, "n1", SHA))}
    assert draw(8, 3, "n1", SHA) != draw(8, 3, "n1", "cd" * 32) or draw(8, 3, "n2", SHA)
    counts = collections.Counter(r for i in range(800) for r in draw(8, 2, f"nonce-{i}", SHA))
    assert set(counts) == set(range(8)) and all(150 <= c <= 250 for c in counts.values()), counts


def _spot(claims: dict[str, Any], ranks: list[int], tolerance: float = 0.1) -> dict[str, Any]:
    return {
        "drawn": [{"node_rank": r, "hostname": f"host-{r}", "ip": f"10.0.0.{r}"} for r in ranks],
        "claimed": claimed_figures(claims),
        "tolerance": tolerance,
    }


def _reading(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc["phases"].items() if k in ("compute", "intra_node", "inter_node")}


def test_honest_claims_pass_and_inflated_claims_fail_naming_node_and_figure() -> None:
    measured = _reading(suite_doc(nodes=2, seed=1))
    honest = derive(_spot(suite_doc(nodes=2, seed=2), [0, 1]), [measured])
    assert honest["verdict"]["spotcheck"] == "PASS", honest["checks"]
    inflated = derive(_spot(suite_doc(nodes=2, seed=2, scale=4.0), [0, 1]), [measured])
    assert inflated["verdict"]["spotcheck"] == "FAIL" and inflated["verdict"]["exit_code"] == 1
    failed = [c for c in inflated["checks"] if c["status"] == "FAIL"]
    names = {(c["subject"], c["name"]) for c in failed}
    assert ("node 1 (host-1)", "gemm_fp8_tflops") in names
    assert ("cluster", "inter_node_busbw_gbps") in names
    assert all("claimed" in c["detail"] and "measured" in c["expectation"] for c in failed)


def test_a_claim_of_one_node_is_compared_with_that_node_only() -> None:
    claims = suite_doc(nodes=4, slow_node=2, slow=0.5, seed=3)
    measured_slow = _reading(suite_doc(nodes=1, slow_node=0, slow=0.5, seed=4))
    assert derive(_spot(claims, [2]), [measured_slow])["verdict"]["spotcheck"] == "PASS"
    wrong = derive(_spot(claims, [1]), [measured_slow])  # node 1 claims full speed
    assert wrong["verdict"]["failing"] == ["node 1 (host-1)"]


def test_a_fail_must_repeat_the_better_reading_counts() -> None:
    claims = suite_doc(nodes=2, seed=5)
    slow, normal = _reading(suite_doc(nodes=2, scale=0.25, seed=6)), _reading(suite_doc(nodes=2))
    assert derive(_spot(claims, [0, 1]), [slow])["verdict"]["spotcheck"] == "FAIL"
    assert derive(_spot(claims, [0, 1]), [slow, normal])["verdict"]["spotcheck"] == "PASS"


def _spotcheck_doc() -> dict[str, Any]:
    claims = suite_doc(nodes=3, seed=7)
    spot = _spot(claims, [0, 2])
    measured = suite_doc(nodes=2, seed=8)
    doc = {
        "schema": "gosok.results/1",
        "kind": "spotcheck",
        "config": {"cluster": measured["config"]["cluster"]},
        "spotcheck": spot,
        "settings": OmegaConf.to_container(reference_suite("quick", "h200")),
        "readings": [_reading(measured)],
    }
    return json.loads(json.dumps({**doc, **derive(spot, doc["readings"])}))


def test_spotcheck_results_rederive_and_an_edited_verdict_or_reading_is_caught() -> None:
    doc = _spotcheck_doc()
    assert rederive_spotcheck(doc) == []
    doc["verdict"]["spotcheck"] = "FAIL"
    assert any("verdict" in r for r in rederive_spotcheck(doc))
    doc = _spotcheck_doc()
    doc["readings"][0]["compute"]["ranks"][0]["gemm"]["fp8"]["tflops"] *= 2
    assert any("tflops" in r for r in rederive_spotcheck(doc))


def test_detection_probability_in_the_readme_is_the_hypergeometric_one() -> None:
    # K of N nodes drawn, m of them inflated: P(at least one drawn) = 1 - C(N-m, K) / C(N, K).
    n, k, m = 510, 8, 51
    p = 1 - comb(n - m, k) / comb(n, k)
    assert 0.56 < p < 0.58
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    assert "1 - C(N - m, K) / C(N, K)" in readme and "57%" in readme


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    folder = tmp_path_factory.mktemp("claims")
    key, _ = new_keypair(folder / "auditor")
    claims = folder / "claims.json"
    write_results(claims, suite_doc(nodes=3, gpu="cpu", per_node=2))
    tampered = folder / "tampered.json"
    tampered.write_text(claims.read_text().replace('"gpu-000"', '"gpu-00x"'))
    base = ["suite=spotcheck", "cluster.nodes=3", "audit.nonce=N1", f"sign.key={key}"]
    cases = [
        (["suite=spotcheck", "cluster.nodes=3"], ["spotcheck.claims", "audit.nonce", "sign.key"]),
        ([*base, f"spotcheck.claims={folder / 'none.json'}"], ["spotcheck.claims", "no such file"]),
        ([*base, f"spotcheck.claims={claims}", "spotcheck.nodes=4"], ["spotcheck.nodes=4", "3"]),
        ([*base, f"spotcheck.claims={claims}", "cluster.gpus_per_node=1"], ["gpus_per_node", "2"]),
        ([*base, f"spotcheck.claims={tampered}"], ["spotcheck.claims", "sha256"]),
        ([*base, f"spotcheck.claims={claims}", "spotcheck.nodes=two"], ["spotcheck.nodes", "two"]),
    ]
    state, results = run_refused("bench", [c for c, _ in cases], tmp_path_factory)
    return state, results, cases


@pytest.mark.parametrize("index", range(6))
def test_bad_spotcheck_settings_are_refused_before_anything_starts(refused, index) -> None:
    state, results, cases = refused
    assert_refused_clearly(results[index], cases[index][1], state)


def test_a_slow_rail_is_named_as_a_rail_and_rails_rederive() -> None:
    from gosok.benchmarks.suite.derive import rederive_suite

    doc = suite_doc(nodes=4, per_node=8, gpu="h200", slow_rail=5)
    failed = [c for c in doc["checks"] if c["status"] == "FAIL"]
    assert [(c["phase"], c["subject"]) for c in failed] == [("inter_node.rails", "rail 5")]
    assert doc["verdict"]["cluster"] == "FAIL" and doc["verdict"]["failing_nodes"] == []
    assert rederive_suite(doc) == []
    doc["phases"]["inter_node"]["rails"]["per_rail"][5]["busbw_gbps"] *= 2
    assert any("rails.per_rail" in r for r in rederive_suite(doc))
    healthy = suite_doc(nodes=4, per_node=8, gpu="h200")
    assert not [
        c for c in healthy["checks"] if c["phase"] == "inter_node.rails" and c["status"] != "PASS"
    ]
