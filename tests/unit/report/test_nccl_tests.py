"""nccl-tests' JSON: gosok writes it token for token as nccl-tests v2.19 does, with the
fields NVIDIA's reader (tools/analyze_perf_json.py) reads, and reads it back with busbw
re-derived from the stored times."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trust_docs import collectives_doc, suite_doc

from gosok.benchmarks.collectives.iterations import iteration_stats, slowest_per_iteration
from gosok.benchmarks.collectives.nccl_tests import documents, dumps, records_from
from gosok.benchmarks.report.command import run_report_command

EXAMPLE = Path(__file__).parents[2] / "data" / "nccl_tests" / "all_reduce_2hosts_I1.json"


def test_dumps_reproduces_nccl_tests_bytes() -> None:
    text = EXAMPLE.read_text()
    assert dumps(json.loads(text)) == text
    assert (
        dumps({"x": float("nan"), "ok": True, "p": "/a/b"})
        == '{"x":"nan","ok":"true","p":"\\/a\\/b"}'
    )


def test_statistics_follow_nccl_tests_rules() -> None:
    stats = iteration_stats([10.0, 1.0, 2.0, 3.0, 4.0], skip=1)
    assert stats["skipped_iterations"] == 1 and stats["min_us"] == 1.0 and stats["max_us"] == 4.0
    assert stats["p50_us"] == 3.0  # the upper middle of 1, 2, 3, 4
    assert stats["p95_us"] == stats["p99_us"] == 4.0  # nearest rank
    assert stats["stdev_us"] == pytest.approx(1.118033988)  # population, not sample
    assert stats["cv_pct"] == pytest.approx(1.118033988 / 2.5 * 100)
    example = json.loads(EXAMPLE.read_text())["results"][0]["out_of_place_per_iter"]
    again = iteration_stats(slowest_per_iteration(example["per_process_max_times_us"]))
    for key, value in again.items():
        assert value == pytest.approx(example[key], abs=2e-6), key


def _reader_view(doc: dict[str, Any]) -> None:
    """What NVIDIA's analyze_perf_json.py reads, checked as it would use it."""
    config = doc["config"]
    assert isinstance(config["iterations"], int) and config["aggregated_iterations"] == 1
    for entry in doc["results"]:
        assert isinstance(entry["size"], int)
        for placement in ("out_of_place", "in_place"):
            block = entry.get(f"{placement}_per_iter")
            if entry[placement] is None:
                assert block is None
                continue
            for key in ("min_us", "max_us", "avg_us", "p99_us", "cv_pct"):
                assert isinstance(block[key], float), key
            rows = block["per_process_max_times_us"]
            assert len(rows) == len(config["devices"]) and all(
                d["hostname"] for d in config["devices"]
            )
            assert block["times_us"] == [max(c) for c in zip(*rows, strict=True)]
            assert len(block["times_us"]) == len(rows[0])


def test_a_collectives_run_becomes_one_nccl_tests_file_per_op() -> None:
    doc = collectives_doc(nodes=2, per_node=2)
    bench = doc["config"]["bench"]
    files = documents(doc, [("collectives", doc["records"], bench, 0)])
    assert sorted(files) == [
        "collectives-all_gather-float32.json",
        "collectives-all_reduce-float32.json",
    ]
    nccl = files["collectives-all_reduce-float32.json"]
    assert list(nccl) == [
        "version", "start_time", "args", "env", "nccl_version", "config", "results",
        "out_of_bounds", "average_bus_bandwidth", "errors", "end_time",
    ]  # fmt: skip
    assert nccl["version"] == 3 and nccl["args"][0] == "all_reduce_perf"
    assert [d["rank"] for d in nccl["config"]["devices"]] == [0, 1, 2, 3]
    first = nccl["results"][0]
    assert list(first)[:5] == ["size", "count", "type", "redop", "root"]
    assert first["type"] == "float" and first["root"] == "    -1"
    _reader_view(json.loads(dumps(nccl).replace('"true"', "true").replace('"false"', "false")))
    # read back: the same busbw as gosok's own records
    records, problems = records_from(json.loads(dumps(nccl)))
    assert problems == []
    mine = {
        (r["size_bytes"], r["mode"]): r["busbw_gbps"]
        for r in doc["records"]
        if r["op"] == "all_reduce"
    }
    for record in records:
        assert record["busbw_gbps"] == pytest.approx(
            mine[(record["size_bytes"], record["mode"])], rel=1e-5
        )


def test_a_suite_writes_its_collective_phases_with_groups_as_split_would() -> None:
    doc = suite_doc(nodes=3, per_node=2, gpu="h200")
    phases = [
        (n, doc["phases"][n]["records"], doc["config"]["suite"][n], 0)
        for n in ("intra_node", "inter_node")
    ]
    files = documents(doc, phases)
    intra = files["intra_node-all_reduce-float32.json"]
    assert sorted({d["group"] for d in intra["config"]["devices"]}) == [0, 1, 2]
    assert all(
        len(r["in_place_per_iter"]["per_process_max_times_us"]) == 6 for r in intra["results"]
    )
    sizes = [r["size"] for r in intra["results"]]
    assert len(sizes) == len(set(sizes)) * doc["config"]["suite"]["intra_node"]["repeats"]


def test_report_reads_nccl_tests_and_flags_a_busbw_that_does_not_follow(tmp_path, capsys) -> None:
    assert run_report_command([str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "nccl-tests JSON" in out and "UNSIGNED" in out and "29.778" in out
    forged = json.loads(EXAMPLE.read_text())
    forged["results"][1]["in_place"]["bus_bw"] = 99.0
    path = tmp_path / "forged.json"
    path.write_text(dumps(forged))
    assert run_report_command([str(path)]) == 1
    assert "results[1].in_place.bus_bw: stored 99.000000" in capsys.readouterr().out
    broken = dict(json.loads(EXAMPLE.read_text()), args=["./my_tool"])
    path.write_text(dumps(broken))
    assert run_report_command([str(path)]) == 2
    assert "all_reduce_perf" in capsys.readouterr().err


def test_stragglers_name_the_slow_rank_its_spikes_and_its_node() -> None:
    from gosok.benchmarks.collectives.stragglers import straggler_lines

    rows = [[10.0, 10.0, 10.0, 10.0] for _ in range(4)]
    rows[3] = [12.0, 12.0, 40.0, 12.0]  # rank 3: slower, and one spike of its own
    record = {"op": "all_reduce", "dtype": "float32", "mode": "in_place", "size_bytes": 1024,
              "group": 0, "ranks": [0, 1, 2, 3], "per_rank_iter_us": rows}  # fmt: skip
    hosts = {0: "a", 1: "a", 2: "b", 3: "b"}
    lines = straggler_lines([record], hosts)
    assert "slowest rank 3 (b) 19.0 us" in lines[0] and "fastest rank 0 (a)" in lines[0]
    assert "spike at iteration 2: 40.0 us" in lines[1] and "straggler rank 3 (b)" in lines[1]
    assert "per node (rank means): a 10.0-10.0 us, b 10.0-19.0 us" in lines[2]
    assert "nothing to rank" in straggler_lines([{**record, "per_rank_iter_us": None}], hosts)[0]


def test_report_stragglers_on_an_nccl_tests_file(capsys) -> None:
    assert run_report_command([str(EXAMPLE), "--stragglers"]) == 0
    out = capsys.readouterr().out
    assert "out_of_place 2097152 B: fastest rank 0 (nodeA)" in out
    assert "slowest rank 1 (nodeB) 68.9 us" in out


@pytest.mark.parametrize(
    "split, groups",
    [("mod:2", [[0, 2, 4, 6], [1, 3, 5, 7]]), ("div:4", [[0, 1, 2, 3], [4, 5, 6, 7]])],
)
def test_split_groups_are_nccl_tests_split_groups(split: str, groups: list[list[int]]) -> None:
    from gosok.launcher.ranks.plan import split_groups

    assert split_groups(8, split) == groups


def test_audit_takes_nccl_tests_files_labelled_and_unsigned(tmp_path, capsys) -> None:
    from trust_docs import save

    gosok_file = tmp_path / "gosok.json"
    save(gosok_file, collectives_doc())
    out_dir = tmp_path / "audit"
    code = run_report_command(["audit", str(EXAMPLE), str(gosok_file), "--out-dir", str(out_dir)])
    said = capsys.readouterr().out
    assert code == 1 and "NOT AUDITED" not in said, said  # unsigned files are not verified
    report = (out_dir / "audit.md").read_text()
    row = next(
        line
        for line in report.splitlines()
        if "all_reduce_2hosts_I1" in line and "nccl-tests" in line
    )
    assert "written by nccl-tests: no seal and no signature" in row
    assert "2026-07-10" in row and "h100_sxm" in row


def test_a_provider_signs_an_nccl_tests_file_and_it_verifies(tmp_path, capsys) -> None:
    """``report sign`` on a file nccl-tests wrote: a signed gosok file carrying it verbatim,
    which verifies (figures re-derived from the nccl-tests document); one whose carried
    document was edited after signing, or whose times were bent before it, does not."""
    from gosok.launcher.results.signing import new_keypair
    from gosok.launcher.results.store import load_results, write_results

    private, public = new_keypair(tmp_path / "provider")
    original = tmp_path / "all_reduce.json"
    original.write_bytes(EXAMPLE.read_bytes())
    assert run_report_command(["sign", str(original), "--key", str(private)]) == 0
    signed = Path(f"{original}.gosok.json")
    assert f"{signed}" in capsys.readouterr().out
    assert original.read_bytes() == EXAMPLE.read_bytes()  # left as nccl-tests wrote it
    doc = load_results(signed)
    assert doc["nccl_tests"] == json.loads(EXAMPLE.read_text()) and doc["signature"]
    assert run_report_command(["verify", str(signed), "--public-key", str(public)]) == 0
    assert "VERIFIED" in capsys.readouterr().out
    assert run_report_command([str(signed)]) == 0 and "29.778" in capsys.readouterr().out
    # The carried document bent after signing, re-sealed: the signature no longer holds.
    doc["nccl_tests"]["results"][1]["in_place"]["time"] /= 2
    write_results(signed, doc)
    assert run_report_command(["verify", str(signed), "--public-key", str(public)]) == 1
    capsys.readouterr()
    # A file whose stored busbw does not follow its times is not signed.
    forged = json.loads(EXAMPLE.read_text())
    forged["results"][1]["in_place"]["bus_bw"] = 99.0
    original.write_text(dumps(forged))
    assert run_report_command(["sign", str(original), "--key", str(private)]) == 1
    assert "do not re-derive" in capsys.readouterr().err
