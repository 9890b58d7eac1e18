"""Audit trust end to end through the CLI: two providers' signed suite runs on local Ray
clusters the CLI starts itself, verified with the right and the wrong public key, a
measurement changed by hand, the changed file re-signed with the other key, ``report sign``
refusing it, and ``report audit`` over both files.

Run: ``pytest tests/integration/test_audit_cli.py -q`` (two short suite runs, ~2 minutes).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gosok.launcher.results.signing import sign_doc
from gosok.launcher.results.store import write_results
from tests.conftest import run_gosok

NONCE = "auditor-2025q3-c41e"
# gosok's quick suite as it is: an auditor judges a file against gosok's own suite settings.
QUICK = ["suite=quick", "cluster=local", "cluster.nodes=2"]


def _ok(result, codes=(0,)) -> str:
    output = result.stdout + result.stderr
    assert result.returncode in codes, output[-4000:]
    assert "Traceback" not in output
    return output


@pytest.fixture(scope="module")
def signed_runs(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """Keys for providers a and b, and one signed quick-suite results file from each."""
    keys = tmp_path_factory.mktemp("keys")
    # A short state dir and cluster names: Ray's socket paths under the state dir must stay
    # within AF_UNIX's 107 bytes.
    state = Path(tempfile.mkdtemp(prefix="gs"))
    env = {"GOSOK_STATE_DIR": str(state), "HYDRA_FULL_ERROR": "0"}
    paths: dict[str, Path] = {}
    for name in ("a", "b"):
        _ok(run_gosok("keys", "new", "--out", str(keys / name)))
        paths[f"{name}_key"], paths[f"{name}_pub"] = keys / f"{name}.key", keys / f"{name}.pub"
    for name in ("a", "b"):
        run_dir = tmp_path_factory.mktemp(f"run-{name}")
        result = run_gosok(
            "bench",
            *QUICK,
            f"cluster.name={name}",
            f"sign.key={paths[f'{name}_key']}",
            f"audit.nonce={NONCE}",
            f"hydra.run.dir={run_dir}",
            env=env,
            timeout=400,
        )
        _ok(result, codes=(0, 1))  # 1: a check failed on the shared CPU host; still signed
        paths[name] = run_dir / "results.json"
        assert paths[name].exists(), result.stdout[-3000:]
    yield paths
    shutil.rmtree(state, ignore_errors=True)


def test_signed_runs_record_the_audit_block(signed_runs) -> None:
    doc = json.loads(signed_runs["a"].read_text())
    assert doc["signature"]["algorithm"] == "ed25519"
    assert doc["audit"]["nonce"] == NONCE
    nodes = doc["audit"]["nodes"]
    assert len(nodes) == 2 and all(n["hostname"] and n["ray_node_id"] for n in nodes)
    step = doc["phases"]["compute"]["ranks"][0]["gemm"]["bf16"]["step"]
    assert step["times_us"] and doc["phases"]["intra_node"]["records"][0]["per_rank_time_us"]


def test_verify_with_the_right_and_the_wrong_key(signed_runs) -> None:
    out = _ok(
        run_gosok(
            "report", "verify", str(signed_runs["a"]), "--public-key", str(signed_runs["a_pub"]),
            "--nonce", NONCE,
        )
    )  # fmt: skip
    assert "VERIFIED" in out and "figures    OK" in out and "nonce      OK" in out
    out = _ok(
        run_gosok(
            "report", "verify", str(signed_runs["a"]), "--public-key", str(signed_runs["b_pub"])
        ),
        codes=(1,),
    )
    assert "wrong_key" in out


def test_hand_edits_and_resigning_are_caught(signed_runs, tmp_path: Path) -> None:
    edited = tmp_path / "edited.json"
    doc = json.loads(signed_runs["a"].read_text())
    step = doc["phases"]["compute"]["ranks"][0]["gemm"]["bf16"]["step"]
    step["times_us"] = [t / 3 for t in step["times_us"]]  # a GPU made to look 3x faster
    write_results(edited, {k: v for k, v in doc.items() if k != "sha256"})  # re-sealed
    out = _ok(
        run_gosok("report", "verify", str(edited), "--public-key", str(signed_runs["a_pub"])),
        codes=(1,),
    )
    assert "signature  FAIL" in out and "invalid" in out and "figures    FAIL" in out
    # The key holder's own tool refuses to vouch for the edit.
    out = _ok(
        run_gosok("report", "sign", str(edited), "--key", str(signed_runs["a_key"])), codes=(1,)
    )
    assert "refusing to sign" in out
    # Re-signed with the other key: wrong key for a, and the figures still do not follow.
    write_results(edited, sign_doc(json.loads(edited.read_text()), signed_runs["b_key"]))
    out = _ok(
        run_gosok("report", "verify", str(edited), "--public-key", str(signed_runs["a_pub"])),
        codes=(1,),
    )
    assert "wrong_key" in out and "figures    FAIL" in out
    out = _ok(
        run_gosok("report", "verify", str(edited), "--public-key", str(signed_runs["b_pub"])),
        codes=(1,),
    )
    assert "signature  OK" in out and "figures    FAIL" in out


def test_audit_page_names_both_clusters(signed_runs, tmp_path: Path) -> None:
    out_dir = tmp_path / "audit"
    _ok(
        run_gosok(
            "report", "audit", str(signed_runs["a"]), str(signed_runs["b"]),
            "--out-dir", str(out_dir), "--public-key", str(signed_runs["a_pub"]),
            "--public-key", str(signed_runs["b_pub"]), "--nonce", NONCE,
        )
    )  # fmt: skip
    page = (out_dir / "audit.html").read_text()
    assert "local / a" in page and "local / b" in page and "data:image/png;base64," in page
    assert (out_dir / "audit.csv").read_text().count("\n") == 3
