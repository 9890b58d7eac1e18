"""``verify --registry``: a file is judged against the auditor's registry of providers,
their keys, clusters and issued nonces, never against what the file says of itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from trust_docs import collectives_doc, save

from gosok.benchmarks.report.command import run_report_command
from gosok.launcher.results.signing import new_keypair


@pytest.fixture
def world(tmp_path: Path):
    a_key, a_pub = new_keypair(tmp_path / "provider-a")
    b_key, b_pub = new_keypair(tmp_path / "provider-b")
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        yaml.safe_dump(
            {
                "providers": {
                    "prov-c": {"keys": [a_pub.name], "clusters": ["coll-cluster"],
                               "nonces": {"coll-cluster": "q3-issued"}},
                    "prov-b": {"keys": [b_pub.name], "clusters": ["b-cluster"]},
                }
            }
        )
    )  # fmt: skip
    return {"a": a_key, "b": b_key, "registry": registry, "dir": tmp_path}


def verify(capsys, *argv) -> tuple[int, str]:
    code = run_report_command(["verify", *map(str, argv)])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out + out.err


def signed(world, file: str, key: str, nonce: str | None = "q3-issued", **cluster) -> Path:
    doc = collectives_doc(nonce=nonce)
    doc["config"]["cluster"].update(cluster)
    path = world["dir"] / f"{file}.json"
    save(path, doc, world[key])
    return path


def test_the_providers_own_key_and_cluster_with_the_issued_nonce_verify(world, capsys):
    code, out = verify(capsys, signed(world, "ok", "a"), "--registry", world["registry"])
    assert code == 0 and ": VERIFIED" in out and "identity   OK" in out, out


@pytest.mark.parametrize(
    "key, nonce, cluster, failing",
    [
        ("a", "q3-issued", {"provider": "prov-b", "name": "b-cluster"}, "signature"),  # relabelled
        ("b", "q3-issued", {}, "signature"),  # another provider's key
        ("a", "q3-issued", {"name": "other-cluster"}, "identity"),  # a cluster not theirs
        ("a", "q2-old", {}, "nonce"),  # an older run's nonce
        ("a", "q3-issued", {"provider": "unknown"}, "identity"),
    ],
    ids=["relabelled", "foreign-key", "foreign-cluster", "old-nonce", "unknown-provider"],
)
def test_identity_forgeries_fail(world, capsys, key, nonce, cluster, failing):
    path = signed(world, "forged", key, nonce, **cluster)
    code, out = verify(capsys, path, "--registry", world["registry"])
    assert code == 1 and "NOT VERIFIED" in out and failing in out.splitlines()[0], out


@pytest.mark.parametrize(
    "content, needle",
    [
        ("providers: []", "providers:"),
        ("providers: {p: {keys: [missing.pub], clusters: [c]}}", "missing.pub"),
        ("providers: {p: {keys: x, clusters: [c]}}", "keys"),
        ("providers: {p: {kyes: [], clusters: [c]}}", "unknown field"),
        (": : :", "not YAML"),
    ],
)
def test_a_bad_registry_is_one_line_exit_2(world, capsys, content, needle):
    bad = world["dir"] / "bad.yaml"
    bad.write_text(content)
    code, out = verify(capsys, signed(world, "ok", "a"), "--registry", bad)
    assert code == 2 and needle in out and len(out.strip().splitlines()) == 1, out


def test_registry_and_public_key_together_are_refused(world, capsys):
    path = signed(world, "ok", "a")
    code, out = verify(capsys, path, "--registry", world["registry"], "--public-key", path)
    assert code == 2 and "not both" in out
