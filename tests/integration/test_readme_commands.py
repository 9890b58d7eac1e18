"""Every ``gosok`` command in the README's code blocks, run as a newcomer would type it.

Commands are read from the README itself (continuation lines joined, comments dropped), so
an example that drifts from the code fails here. Placeholders are filled by the test
(``<run>`` with a results file, keys made with ``gosok keys new``, scripts written where the
example names them). What needs a real cluster (``HEAD:6379``, Slurm, GPUs) runs with
``dry_run=true``, as the README's own examples of such clusters do; the CPU-fallback
benchmarks and launches run as dry runs too (the integration tests run them for real), the
local-cluster lifecycle (``cluster up|status|down``) and a ``-m`` sweep with no cluster
running run for real. A traceback, or an exit code the README does not document for that
command, fails the test.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from gosok.launcher.cluster.netns import problem as netns_problem
from tests.conftest import REPO, run_gosok

README = (REPO / "README.md").read_text()
# What each command may exit with, as the README documents it (exit-code table).
ALLOWED = {
    "report verify": {0, 1},
    "report compare": {0, 1},
    "report audit": {0, 1},
    "cluster status": {0, 1},
}


def readme_commands() -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            if line.startswith("gosok "):
                out.append(re.sub(r"\s+", " ", line))
    return out


COMMANDS = readme_commands()


def test_the_readme_has_commands_for_every_role():
    verbs = {" ".join(c.split()[1:2]) for c in COMMANDS}
    assert {"bench", "launch", "report", "keys", "ledger", "cluster"} <= verbs
    for sbatch in re.findall(r"^sbatch (?:[^\n]*\\\n)*[^\n]*", README, re.M):
        assert "deploy/slurm/gosok.sbatch" in sbatch, sbatch
    assert (REPO / "deploy" / "slurm" / "gosok.sbatch").is_file()


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A home, a working directory and the files the README's placeholders stand for."""
    from tests.unit.report.trust_docs import collectives_doc, save, suite_doc

    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("work")
    env = {
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "GOSOK_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        "HYDRA_FULL_ERROR": "0",
    }
    for prefix in ("provider", "grantee", "auditor"):
        made = run_gosok("keys", "new", "--out", f"{home}/.gosok/{prefix}", env=env)
        assert made.returncode == 0, made.stderr
    for name in ("a", "b"):
        run_gosok("keys", "new", "--out", str(work / name), env=env)
    key = home / ".gosok" / "provider.key"
    run = work / "outputs" / "bench" / "run"
    run.mkdir(parents=True)
    save(run / "results.json", collectives_doc(nonce="N"), key)
    for name in ("last-quarter", "this-quarter", "a", "b", "results", "old-results"):
        save(work / f"{name}.json", collectives_doc(nonce="N"), key)
    for site in ("site-a", "site-b"):
        (work / site).mkdir()
        save(work / site / "results.json", collectives_doc(nonce="N"), key)
    from gosok.launcher.ledger.db import Ledger

    ledger_path = home / ".local" / "share" / "gosok" / "ledger.sqlite"
    ledger_path.parent.mkdir(parents=True)
    with Ledger.open(ledger_path) as ledger:
        ledger.start_job("job-1", project="llm", cluster="c", gpu_type="H100", gpus=8,
                         started_unix=1.8e9)  # fmt: skip
        ledger.finish_job("job-1", exit_status="ok", finished_unix=1.8e9 + 3600)
    (work / "registry.yaml").write_text(
        "providers:\n  prov-c:\n    keys: [provider.pub]\n    clusters: [coll-cluster]\n"
        "    nonces: {coll-cluster: N}\n"
    )
    (work / "q3").mkdir()
    for i in range(2):
        save(work / "q3" / f"{i}.json", collectives_doc(nonce="N", seed=i), key)
    (work / "provider").mkdir()  # a provider's suite on <theirs> (4 nodes x 8 H200)
    save(work / "provider" / "results.json", suite_doc(4, 8, "h200", nonce="N"), key)
    (work / "provider-run").mkdir()  # a file nccl-tests wrote
    example = REPO / "tests" / "data" / "nccl_tests" / "all_reduce_2hosts_I1.json"
    (work / "provider-run" / "all_reduce.json").write_bytes(example.read_bytes())
    (work / "provider.pub").write_bytes((home / ".gosok" / "provider.pub").read_bytes())
    (work / "auditor.pub").write_bytes((home / ".gosok" / "auditor.pub").read_bytes())
    (work / "provider.key").write_bytes(key.read_bytes())
    os.chmod(work / "provider.key", 0o600)
    (work / "train.py").write_text("import torch.distributed as dist\nprint('train')\n")
    probe = tmp_path_factory.mktemp("shared-tmp")
    os.chmod(probe, 0o1777)
    (probe / "probe.py").write_text("print('probe')\n")
    return {"home": home, "work": work, "env": env, "probe": probe / "probe.py"}


def filled(command: str, place: dict) -> list[str]:
    """The command's argv with the README's placeholders replaced."""
    text = command.replace(" ...", "").replace("[--plot busbw.png]", "--plot busbw.png")
    text = text.replace("<theirs>", "naver_h200_32 cluster.address=HEAD:6379")
    text = text.replace("outputs/bench/<run>/", "outputs/bench/run/")
    text = text.replace("outputs/launch/<run>", "outputs/launch/run").replace("<yours>", "llm")
    text = text.replace("/tmp/probe.py", str(place["probe"]))
    text = text.replace("~/", f"{place['home']}/")
    argv = shlex.split(text)[1:]
    expanded = []
    for arg in argv:
        matches = sorted(glob.glob(arg, root_dir=place["work"])) if "*" in arg else []
        expanded += matches or [arg]
    verb = expanded[0]
    if verb in ("bench", "launch") and "--cfg" not in expanded and "dry_run=true" not in argv:
        expanded.append("dry_run=true")
    if verb == "ledger" and expanded[1] in ("watch", "serve"):
        expanded += ["--duration-s", "1"]
    if verb == "ledger" and expanded[1] == "serve":
        expanded[expanded.index("--port") + 1] = "0"
    if "postgres" in place:  # a README server is the tests' real one
        expanded = [re.sub(r"^postgresql://\S+$", place["postgres"].url, a) for a in expanded]
        expanded = [re.sub(r"=postgresql://\S+$", "=" + place["postgres"].url, a) for a in expanded]
    return expanded


def _allowed(argv: list[str]) -> set[int]:
    return ALLOWED.get(" ".join(argv[:2]), {0})


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:70] for c in COMMANDS])
def test_readme_command_works_as_written(command, place, tmp_path, request):
    if command.split()[1] == "cluster":
        pytest.skip("run in order by test_local_cluster_lifecycle_as_written")
    if "isolation=netns" in command and netns_problem():
        pytest.skip(f"netns: {netns_problem()}")
    env = place["env"]
    if "postgresql://" in command:  # the tests' server, or skipped where there is none
        server = request.getfixturevalue("postgres")
        place = {**place, "postgres": server}
        env = {**env, **server.env}
    if command.startswith("gosok keys new"):  # a newcomer's first key: a home without one
        home = tmp_path / "fresh-home"
        home.mkdir()
        env = {**env, "HOME": str(home)}
        command = command.replace("~/", f"{home}/")
    argv = filled(command, place)
    result = run_gosok(*argv, env=env, cwd=place["work"], timeout=300)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode in _allowed(argv), (argv, result.returncode, output[-3000:])


def test_local_cluster_lifecycle_as_written(place, tmp_path):
    """``cluster up`` / ``status`` / ``down`` as the README lists them (the plain local
    cluster), for real."""
    env = {**place["env"], "GOSOK_STATE_DIR": str(tmp_path)}
    lifecycle = [c for c in COMMANDS if c.split()[1] == "cluster" and "netns" not in c]
    assert [c.split()[2] for c in lifecycle][:3] == ["up", "status", "down"]
    seen = []
    for command in lifecycle[:3]:
        argv = shlex.split(command)[1:]
        result = run_gosok(*argv, env=env, timeout=300)
        seen.append(result.stdout)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "3" in seen[1]


def test_a_sweep_with_no_cluster_running_runs_every_job(tmp_path):
    """The README's ``-m`` sweep on a machine with no cluster up: each job starts (and
    stops) its own local cluster, every one connects."""
    env = {"GOSOK_STATE_DIR": str(tmp_path / "state"), "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "gosok.launcher.cli", "bench", "-m", "cluster=local",
         "cluster.name=sweep", "bench.ops=[all_reduce]", "bench.max_bytes=4096,8192",
         f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    assert len(list((tmp_path / "multirun").glob("*/results.json"))) == 2
