"""Audit trust without Ray: forged results files of every kind fail verification with the
right reason, intact ones pass, ``report`` / ``compare`` use re-derived figures, and the
audit view over several providers writes md / html / csv grouped by GPU type.

Run: ``pytest tests/unit/report/test_audit_trust.py -q`` (a few seconds).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf
from trust_docs import collectives_doc, edit, gemm_doc, save, suite_doc

from gosok.benchmarks.core.schema import BenchRunConfig
from gosok.benchmarks.report.command import run_report_command
from gosok.benchmarks.report.trust import assess, load_input, load_public_keys
from gosok.benchmarks.suite.compare import compare_docs
from gosok.benchmarks.suite.derive import catalogue_notes, contract_notes, rederive_suite
from gosok.launcher.config.trust import validate_trust
from gosok.launcher.results.signing import new_keypair, sign_doc
from gosok.launcher.results.store import write_results

NONCE = "audit-2025q3-7f3a"
BUILDERS = {"suite": suite_doc, "gemm": gemm_doc, "collectives": collectives_doc}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    a_key, a_pub = new_keypair(folder / "provider")
    b_key, b_pub = new_keypair(folder / "other")
    return {"key": a_key, "pub": a_pub, "other_key": b_key, "other_pub": b_pub}


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = run_report_command([str(a) for a in argv])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text


def signed_file(tmp_path: Path, kind: str, keys: dict[str, Path], **kwargs: Any) -> Path:
    path = tmp_path / f"{kind}.json"
    save(path, BUILDERS[kind](nonce=NONCE, **kwargs), keys["key"])
    return path


def verdict_of(path: Path, keys: dict[str, Path], nonce: str = NONCE) -> Any:
    doc, sealed = load_input(path)
    return assess(str(path), doc, sealed, load_public_keys([str(keys["pub"])]), [nonce])


def statuses(verdict: Any) -> dict[str, str]:
    return {a.name: a.status for a in verdict.aspects}


# --- intact files ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_an_intact_signed_file_verifies(tmp_path: Path, keys, capsys, kind: str) -> None:
    path = signed_file(tmp_path, kind, keys)
    code, out = cli(capsys, "verify", path, "--public-key", keys["pub"], "--nonce", NONCE)
    assert code == 0, out
    for aspect in ("seal", "signature", "nonce", "figures"):
        assert f"  {aspect:<10s} OK" in out, out
    # Without a public key: seal and figures only, never VERIFIED: it says the signature was
    # not checked, and exits 1 unless the auditor allows that.
    code, out = cli(capsys, "verify", path)
    assert code == 1 and "signature was not checked" in out and "signed by ed25519:" in out
    assert "SIGNATURE NOT CHECKED" in out and "VERIFIED\n" not in out
    assert cli(capsys, "verify", path, "--allow-unsigned")[0] == 0


def test_an_unsigned_file_is_never_verified(tmp_path: Path, capsys) -> None:
    path = tmp_path / "unsigned.json"
    save(path, collectives_doc())
    code, out = cli(capsys, "verify", path)
    assert code == 1 and ": UNSIGNED" in out and "VERIFIED" not in out.replace("NOT VERIFIED", "")
    code, out = cli(capsys, "verify", path, "--allow-unsigned")
    assert code == 0 and ": UNSIGNED" in out


# --- forgeries ------------------------------------------------------------------------------


def _scale_raw_time(kind: str) -> Any:
    def change(doc: dict[str, Any]) -> None:
        if kind == "suite":
            step = doc["phases"]["compute"]["ranks"][0]["gemm"]["fp8"]["step"]
            step["times_us"] = [t * 0.5 for t in step["times_us"]]
        elif kind == "gemm":
            doc["records"][0]["times_us"] = [t * 0.5 for t in doc["records"][0]["times_us"]]
        else:
            doc["records"][0]["per_rank_time_us"][0] *= 0.5

    return change


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_an_edited_raw_measurement_breaks_signature_and_figures(
    tmp_path: Path, keys, kind: str
) -> None:
    path = signed_file(tmp_path, kind, keys)
    edit(path, _scale_raw_time(kind))  # re-sealed with gosok's own write_results
    verdict = verdict_of(path, keys)
    assert statuses(verdict)["seal"] == "OK"  # a re-seal hides the edit from sha256 alone
    assert verdict.signature.status == "invalid"
    figures = verdict.aspect("figures")
    assert figures.status == "FAIL" and any("re-derived" in m for m in figures.more)
    assert not verdict.passed


DERIVED_EDITS = {
    "collectives": lambda d: d["records"][0].update(busbw_gbps=d["records"][0]["busbw_gbps"] * 10),
    "gemm": lambda d: d["records"][0].update(tflops=d["records"][0]["tflops"] * 10),
    "suite": lambda d: d["phases"]["inter_node"].update(
        busbw_gbps=d["phases"]["inter_node"]["busbw_gbps"] * 10
    ),
}
DERIVED_NAMES = {"collectives": "busbw_gbps", "gemm": "tflops", "suite": "inter_node.busbw_gbps"}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_an_edited_derived_figure_fails_even_unsigned_and_resealed(
    tmp_path: Path, capsys, kind: str
) -> None:
    path = tmp_path / f"{kind}.json"
    save(path, BUILDERS[kind]())  # unsigned: only the figures can catch this
    edit(path, DERIVED_EDITS[kind])
    code, out = cli(capsys, "verify", path)
    assert code == 1 and "seal       OK" in out
    assert "figures    FAIL" in out and DERIVED_NAMES[kind] in out, out


VERDICT_EDITS = {
    "collectives": lambda d: d["summary"].update(passed=False, problems=["made up"]),
    "gemm": lambda d: d["records"][1].update(passed=False),
    "suite": lambda d: d["verdict"].update(cluster="PASS", failing_nodes=[], exit_code=0),
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_an_edited_verdict_fails(tmp_path: Path, keys, kind: str) -> None:
    extra = {"slow_node": 2} if kind == "suite" else {}
    path = signed_file(tmp_path, kind, keys, **extra)
    edit(path, VERDICT_EDITS[kind])
    verdict = verdict_of(path, keys)
    assert verdict.signature.status == "invalid"
    more = " ".join(verdict.aspect("figures").more)
    assert verdict.aspect("figures").status == "FAIL"
    assert ("verdict" in more) if kind == "suite" else ("passed" in more), more


def test_suite_checks_and_isolation_are_replayed(tmp_path: Path) -> None:
    path = tmp_path / "suite.json"
    doc = save(path, suite_doc(nodes=8, slow_node=5))
    assert doc["phases"]["isolation"]["outcome"]["culprits"] == [5]
    assert rederive_suite(doc) == []

    def hide_culprit(d: dict[str, Any]) -> None:
        d["phases"]["isolation"]["outcome"]["culprits"] = []

    assert any("isolation.outcome.culprits" in p for p in rederive_suite(edit(path, hide_culprit)))
    save(path, suite_doc(nodes=8, slow_node=5))

    def pass_a_check(d: dict[str, Any]) -> None:
        failing = next(c for c in d["checks"] if c["status"] == "FAIL")
        failing["status"] = "PASS"

    problems = rederive_suite(edit(path, pass_a_check))
    assert any(p.startswith("check ") and "stored 'PASS" in p for p in problems), problems


def test_resigned_with_another_key_is_the_wrong_key(tmp_path: Path, keys, capsys) -> None:
    path = signed_file(tmp_path, "suite", keys)
    doc = json.loads(path.read_text())
    write_results(path, sign_doc(doc, keys["other_key"]))
    verdict = verdict_of(path, keys)
    assert verdict.signature.status == "wrong_key" and verdict.aspect("figures").status == "OK"
    code, out = cli(capsys, "verify", path, "--public-key", keys["pub"])
    assert code == 1 and "wrong_key" in out
    # With both keys given, the file names the key that signed it, and that one verifies.
    code, out = cli(
        capsys, "verify", path, "--public-key", keys["pub"], "--public-key", keys["other_pub"]
    )
    assert code == 0, out


def test_a_stripped_signature_is_unsigned(tmp_path: Path, keys, capsys) -> None:
    path = signed_file(tmp_path, "collectives", keys)
    edit(path, lambda d: d.pop("signature"))
    code, out = cli(capsys, "verify", path, "--public-key", keys["pub"])
    assert code == 1 and "unsigned" in out and "figures    OK" in out


def test_a_result_from_another_run_with_the_nonce_swapped(tmp_path: Path, keys) -> None:
    path = tmp_path / "old.json"
    save(path, suite_doc(nonce="last-quarter"), keys["key"])
    stale = verdict_of(path, keys)
    assert statuses(stale)["nonce"] == "FAIL" and stale.signature.ok
    assert "last-quarter" in stale.aspect("nonce").detail
    edit(path, lambda d: d["audit"].update(nonce=NONCE))
    swapped = verdict_of(path, keys)
    assert swapped.signature.status == "invalid"
    assert statuses(swapped)["nonce"] == "FAIL"
    assert "not covered by a valid signature" in swapped.aspect("nonce").detail


# --- report sign ----------------------------------------------------------------------------


def test_report_sign_signs_intact_files_and_refuses_edited_ones(
    tmp_path: Path, keys, capsys
) -> None:
    path = tmp_path / "gemm.json"
    save(path, gemm_doc())
    code, out = cli(capsys, "sign", path, "--key", keys["key"])
    assert code == 0 and "signed" in out
    assert cli(capsys, "verify", path, "--public-key", keys["pub"])[0] == 0
    edit(path, DERIVED_EDITS["gemm"])
    code, out = cli(capsys, "sign", path, "--key", keys["key"])
    assert code == 1 and "refusing to sign" in out and "tflops" in out
    edit(path, lambda d: d.update(note="hand edit"), reseal=False)
    code, out = cli(capsys, "sign", path, "--key", keys["key"])
    assert code == 1 and "sha256 does not match" in out


# --- report and compare use re-derived figures ---------------------------------------------


def test_report_shows_the_rederived_verdict_not_the_stored_one(tmp_path: Path, capsys) -> None:
    path = tmp_path / "suite.json"
    save(path, suite_doc(slow_node=1))
    edit(path, VERDICT_EDITS["suite"])
    code, out = cli(capsys, path)
    assert code == 1
    assert (
        "cluster verdict: FAIL" in out
        and "NOT RE-DERIVABLE" in out
        and "stored 'PASS', re-derived 'FAIL'" in out
    )


def test_compare_uses_rederived_verdicts(tmp_path: Path) -> None:
    good = save(tmp_path / "a.json", suite_doc(seed=1))
    bad_path = tmp_path / "b.json"
    save(bad_path, suite_doc(seed=2, slow_node=3))
    bad = edit(bad_path, VERDICT_EDITS["suite"])
    rows = {(r.scope, r.figure): r for r in compare_docs(good, bad)}
    assert rows[("cluster", "verdict")].candidate == "FAIL"
    assert rows[("cluster", "verdict")].status == "REGRESSION"


def test_compare_refuses_different_gpu_types_and_bad_tolerances(tmp_path: Path, capsys) -> None:
    h200, b200 = tmp_path / "h200.json", tmp_path / "b200.json"
    save(h200, suite_doc(gpu="h200"))
    save(b200, suite_doc(gpu="b200"))
    code, out = cli(capsys, "compare", h200, b200)
    assert code == 2 and "'h200'" in out and "'b200'" in out and "--allow-different-gpus" in out
    code, out = cli(capsys, "compare", h200, b200, "--allow-different-gpus")
    assert code in (0, 1) and "different GPU types" in out
    for bad in ("nan", "inf", "-0.1", "-inf", "1.5", "x"):
        code, out = cli(capsys, "compare", h200, h200, "--tolerance", bad)
        assert code == 2 and "--tolerance" in out and len(out.strip().splitlines()) == 1, out
    assert cli(capsys, "compare", h200, h200, "--tolerance", "0.1")[0] == 0


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2, 3]",
        '{"schema": "gosok.results/1", "kind": "suite"',
        "",
        '{"a": 1}',
        '{"schema": "gosok.results/1", "kind": 5}',
        '"text"',
        '{"schema": "gosok.results/1", "kind": "suite", "n": ' + "9" * 5000 + "}",
    ],
    ids=["list", "truncated", "empty", "foreign", "kind-type", "string", "huge-int"],
)
@pytest.mark.parametrize("command", [[], ["compare"], ["sign"]])
def test_malformed_inputs_are_one_line_exit_2(
    tmp_path: Path, keys, capsys, content: str, command: list[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    argv: list[Any] = [*command, path]
    if command == ["compare"]:
        argv.append(path)
    if command == ["sign"]:
        argv += ["--key", keys["key"]]
    code, out = cli(capsys, *argv)
    assert code == 2 and len(out.strip().splitlines()) == 1 and "bad.json" in out, out


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("phases"),
        lambda d: d["phases"]["compute"].update(ranks={"0": 1}),
        lambda d: d["phases"]["intra_node"]["records"][0].update(per_rank_time_us=["x"]),
        lambda d: d["gpu"].update(fp8_tflops="lots"),
        lambda d: d["contract"].pop("outlier"),
        lambda d: d.update(config=[]),
    ],
    ids=["no-phases", "ranks-dict", "string-time", "gpu-type", "contract", "config-list"],
)
def test_malformed_suite_content_is_exit_2_everywhere(tmp_path: Path, capsys, change) -> None:
    path = tmp_path / "suite.json"
    save(path, suite_doc())
    edit(path, change)
    for argv in ([path], ["compare", path, path]):
        code, out = cli(capsys, *argv)
        assert code == 2 and ("malformed" in out or "suite results" in out), out
    code, out = cli(capsys, "verify", path)
    assert code == 1 and out.startswith("NOT VERIFIED") and "Traceback" not in out, out


@pytest.mark.parametrize("command", ["verify", "audit"])
def test_a_bad_file_is_judged_alone_and_the_others_go_on(
    tmp_path: Path, keys, capsys, command: str
) -> None:
    good = tmp_path / "good.json"
    save(good, suite_doc(nonce=NONCE), keys["key"])
    bad = {
        "huge.json": '{"schema": "gosok.results/1", "kind": "suite", "n": ' + "9" * 5000 + "}",
        "cut.json": '{"schema": "gosok.results/1", "kind": "suite"',
        "text.json": '"text"',
    }
    for name, content in bad.items():
        (tmp_path / name).write_text(content)
    argv = [command, *(tmp_path / n for n in bad), good, "--public-key", keys["pub"]]
    argv += ["--nonce", NONCE]
    if command == "audit":
        argv += ["--out-dir", tmp_path / "out"]
    code, out = cli(capsys, *argv)
    assert code == 1 and "Traceback" not in out, out
    word = "NOT VERIFIED" if command == "verify" else "NOT AUDITED"
    for name in bad:
        assert sum(1 for line in out.splitlines() if line.startswith(word) and name in line) == 1
    if command == "verify":
        assert f"{good}: VERIFIED" in out, out
    else:
        report = (tmp_path / "out" / "audit.md").read_text()
        assert "good.json" in report and all(name in report for name in bad)


# --- the audit view -------------------------------------------------------------------------


def test_audit_view_groups_by_gpu_type_and_names_every_cluster(
    tmp_path: Path, keys, capsys
) -> None:
    files = {
        "nhn.json": suite_doc(gpu="b200", cluster="nhn-b200", provider="nhn", nonce=NONCE),
        "naver.json": suite_doc(gpu="h200", cluster="naver-h200", provider="naver", nonce=NONCE),
        "kt.json": suite_doc(
            gpu="h200", cluster="kt-h200", provider="kt", slow_node=2, seed=4, nonce="old"
        ),
        "gemm.json": gemm_doc(nonce=NONCE),
    }
    paths = []
    for name, doc in files.items():
        save(tmp_path / name, doc, keys["key"] if name != "kt.json" else keys["other_key"])
        paths.append(tmp_path / name)
    out_dir = tmp_path / "audit"
    code, out = cli(
        capsys, "audit", *paths, "--out-dir", out_dir, "--public-key", keys["pub"], "--nonce", NONCE
    )
    assert code == 1  # kt.json: another key and a stale nonce
    assert "NOT VERIFIED (signature, nonce)" in out and str(paths[2]) in out
    page = (out_dir / "audit.html").read_text()
    markdown = (out_dir / "audit.md").read_text()
    for text in (page, markdown):
        for cluster in ("nhn-b200", "naver-h200", "kt-h200", "gemm-cluster"):
            assert cluster in text
        assert "GPU type: NVIDIA B200 (b200)" in text and "GPU type: NVIDIA H200 SXM (h200)" in text
        assert "wrong_key" in text and "B200-eq measured" in text
    assert page.count("data:image/png;base64,") >= 2
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # h200 clusters side by side in one section; b200 never in the same table.
    h200_section = markdown.split("GPU type: NVIDIA H200 SXM (h200)")[1].split("## ")[0]
    assert "naver-h200" in h200_section and "kt-h200" in h200_section
    assert "nhn-b200" not in h200_section
    with open(out_dir / "audit.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["cluster"] for r in rows} == {"nhn-b200", "naver-h200", "kt-h200", "gemm-cluster"}
    kt = next(r for r in rows if r["cluster"] == "kt-h200")
    assert kt["verdict_rederived"] == "FAIL" and kt["verified"] == "no"
    assert float(kt["gemm_fp8_tflops_pct_of_spec"]) > 0 and kt["b200_eq_nominal"]


def test_audit_flags_a_forged_verdict_and_html_escapes_file_text(tmp_path: Path, capsys) -> None:
    path = tmp_path / "forged.json"
    save(path, suite_doc(slow_node=1, cluster="<script>alert(1)</script>"))
    edit(path, VERDICT_EDITS["suite"])
    code, _ = cli(capsys, "audit", path, "--out-dir", tmp_path / "out")
    page = (tmp_path / "out" / "audit.html").read_text()
    assert code == 1 and "<script>" not in page and "&lt;script&gt;" in page
    assert "PASS (DIFFERS)" in page  # stored PASS, re-derived FAIL


# --- recorded catalogue entry and contract --------------------------------------------------


def test_a_recorded_catalogue_entry_or_contract_unlike_gosoks_is_noted() -> None:
    doc = suite_doc(gpu="h200")
    assert catalogue_notes(doc["gpu"]) == [] and contract_notes(doc["contract"], "h200") == []
    lowered = {**doc["gpu"], "fp8_tflops": 100.0}
    note = catalogue_notes(lowered)[0]
    assert "fp8_tflops" in note and "100.0" in note
    lax = {**doc["contract"], "isolation_slow_below": 0.9}
    assert "isolation_slow_below" in contract_notes(lax, "h200")[0]


# --- bench sign.key / audit.nonce validation ------------------------------------------------


def _bench_cfg(**overrides: Any) -> Any:
    cfg = OmegaConf.structured(BenchRunConfig)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))


def test_sign_key_and_nonce_are_validated(tmp_path: Path, keys) -> None:
    assert validate_trust(_bench_cfg(**{"sign.key": keys["key"], "audit.nonce": NONCE})) == []
    loose = tmp_path / "loose.key"
    loose.write_bytes(keys["key"].read_bytes())
    os.chmod(loose, 0o644)
    public = tmp_path / "public.key"
    public.write_bytes(keys["pub"].read_bytes())
    os.chmod(public, 0o600)
    cases = {
        tmp_path / "absent.key": "not found",
        loose: "group or others",
        public: "not a PEM private key",
    }
    for path, needle in cases.items():
        (problem,) = validate_trust(_bench_cfg(**{"sign.key": path}))
        assert problem.startswith(f"sign.key='{path}'") and needle in problem, problem
    for nonce, needle in (("x" * 257, "at most 256"), ("a\u0007b", "non-printable")):
        cfg = _bench_cfg()
        cfg.audit.nonce = nonce
        (problem,) = validate_trust(cfg)
        assert problem.startswith("audit.nonce=") and needle in problem


@pytest.mark.parametrize("kind", ["collectives", "gemm"])
def test_compare_works_on_every_results_kind(tmp_path: Path, capsys, kind: str) -> None:
    """Baseline against itself: no regression; against a run whose raw times doubled (the
    figures re-derived from them halve): a regression, exit 1."""
    make = collectives_doc if kind == "collectives" else gemm_doc
    base = tmp_path / "base.json"
    save(base, make())
    slower = tmp_path / "slower.json"
    save(slower, make())
    field = "per_rank_time_us" if kind == "collectives" else "times_us"

    def double(doc: dict[str, Any]) -> None:
        for record in doc["records"]:
            record[field] = [t * 2 for t in record[field]]

    edit(slower, double)
    code, out = cli(capsys, "compare", base, base)
    assert code == 0 and "0 regression(s)" in out, out
    code, out = cli(capsys, "compare", base, slower)
    assert code == 1 and "REGRESSION" in out, out


def test_what_a_file_says_cannot_rewrite_the_output_or_forge_rows(tmp_path: Path, capsys) -> None:
    """A provider label with a carriage return and markup, a fingerprint with a terminal
    escape sequence: printed and rendered as visible escapes, never acted on."""
    path = tmp_path / "evil.json"
    doc = collectives_doc()
    doc["config"]["cluster"]["provider"] = "B\r| FAIL rows end here <!-- hidden -->"
    doc["signature"] = {"public_key_fingerprint": "ed25519:\x1b[2K\x1b[1GVERIFIED"}
    save(path, doc)
    code, out = cli(capsys, "verify", path)
    assert "\x1b" not in out and "\\x1b[2K" in out
    code, out = cli(capsys, "audit", path, "--out-dir", tmp_path / "audit")
    md = (tmp_path / "audit" / "audit.md").read_text()
    assert "\r" not in md and "<!--" not in md and "&lt;!-- hidden --&gt;" in md
