"""Shared pytest fixtures: one real local Ray cluster (head + workers on loopback) per
test session, and helpers to run the ``gosok`` CLI in a subprocess against it.

The cluster has 3 nodes x 2 rank slots so jobs asking for 2 nodes leave a spare. It is
registered under the state dir ``$GOSOK_STATE_DIR`` with the name ``local``, so any
``gosok ... cluster=local`` started by a test reuses it instead of starting its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gosok.launcher.cluster import local as local_cluster
from gosok.launcher.config.schema import ClusterConfig

REPO = Path(__file__).resolve().parent.parent
SESSION_CLUSTER = "local"

# Ray fixes its auth mode when first imported, which test collection does: the session's
# state dir and its cluster's token path are set before any test module imports ray.
if "GOSOK_TEST_STATE_DIR" not in os.environ:
    os.environ["GOSOK_TEST_STATE_DIR"] = tempfile.mkdtemp(prefix="gosok-test-state-")
os.environ["GOSOK_STATE_DIR"] = os.environ["GOSOK_TEST_STATE_DIR"]
# The goodput ledger of test runs goes to the session's state dir, not the user's.
os.environ["XDG_DATA_HOME"] = os.path.join(os.environ["GOSOK_TEST_STATE_DIR"], "data")
os.environ.update(local_cluster.auth_env(SESSION_CLUSTER))

# nccl-tests doc/PERFORMANCE.md: busbw = algbw x factor(n), written out independently of
# the registry so tests check the code against the formulas, not against itself.
NCCL_TESTS_BUSBW_FACTORS = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
    "sendrecv": lambda n: 1.0,
}
SESSION_NODES = 3
SLOTS = 2


def cluster_config(
    name: str = "local", nodes: int = 2, gpus_per_node: int = SLOTS, **overrides
) -> ClusterConfig:
    """A typed local cluster config as Hydra would compose it."""
    cfg = OmegaConf.structured(ClusterConfig(name=name, nodes=nodes, gpus_per_node=gpus_per_node))
    return OmegaConf.merge(cfg, overrides) if overrides else cfg


@pytest.fixture(scope="session")
def state_dir() -> Path:
    os.environ["RAY_DEDUP_LOGS"] = "0"
    return Path(os.environ["GOSOK_STATE_DIR"])


@pytest.fixture(scope="session")
def ray_cluster(state_dir):
    """Start the session's local cluster and connect this process to it."""
    import ray

    cfg = cluster_config(name=SESSION_CLUSTER, nodes=SESSION_NODES)
    state = local_cluster.start(cfg)
    ray.init(address=state.address, logging_level="ERROR", log_to_driver=False)
    try:
        from gosok.launcher.ranks.agent import start_cluster_agents

        start_cluster_agents()  # as `gosok cluster up` does
        yield state
    finally:
        ray.shutdown()
        local_cluster.stop(cfg.name)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (see ``tests/postgres_server.py``)."""
    from tests.postgres_server import PostgresServer

    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres, request, monkeypatch) -> str:
    """An empty database of its own on the session's server, the password in PGPASSWORD."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    monkeypatch.setenv("PGPASSWORD", postgres.env["PGPASSWORD"])
    return postgres.fresh_database(f"{name}_{os.getpid()}")


def run_gosok(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run the real CLI (``python -m gosok.launcher.cli``) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gosok.launcher.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def run_refused(
    command: str, cases: list[list[str]], tmp_path_factory, cwd=None
) -> tuple[Path, list[subprocess.CompletedProcess]]:
    """Run ``gosok <command> <overrides>`` for each case (two at a time), each with its own
    run dir and all sharing one fresh state dir, which must stay empty: nothing started."""
    from concurrent.futures import ThreadPoolExecutor

    state = tmp_path_factory.mktemp("refused-state")
    env = {"GOSOK_STATE_DIR": str(state), "HYDRA_FULL_ERROR": "0"}

    def attempt(overrides: list[str]) -> subprocess.CompletedProcess:
        run_dir = tmp_path_factory.mktemp("refused-run")
        return run_gosok(
            command, *overrides, f"hydra.run.dir={run_dir}", env=env, cwd=cwd, timeout=120
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        return state, list(pool.map(attempt, cases))


def assert_refused_clearly(
    result: subprocess.CompletedProcess, needles: list[str], state: Path
) -> None:
    """Non-zero exit, every needle (field names, allowed values) in the message, no
    traceback, no Ray contact, no local cluster recorded."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for needle in needles:
        assert needle in output, f"{needle!r} missing from:\n{output}"
    assert "Traceback" not in output
    assert "Connected to Ray" not in output and "NodeAgent" not in output
    assert not list(state.iterdir()), "a local Ray cluster was started"


def live_actors() -> list[dict]:
    """Actors still alive in the connected Ray cluster (a leak check after a run); the
    cluster's node agents outlive launches on purpose and are not counted."""
    from ray._private import state

    return [
        a
        for a in state.actors().values()
        if a.get("State") != "DEAD" and not str(a.get("Name") or "").startswith("gosok-agent-")
    ]


def rank_processes(cluster) -> list[int]:
    """Pids of the ranks that the node agents' zygotes of ``cluster`` (a local cluster's
    state: its nodes' session leaders) have forked and not reaped; other clusters on
    this host (another test run) are not counted."""
    zygotes, parents = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(stat[1])
        if b"gosok.launcher.ranks.zygote" in argv:
            zygotes.add(int(entry.name))

    def under_cluster(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            if pid in cluster.pgids:
                return True
            seen.add(pid)
            pid = parents.get(pid, 0)
        return False

    mine = {z for z in zygotes if under_cluster(z)}
    return sorted(pid for pid, parent in parents.items() if parent in mine)


def placement_groups_alive() -> list[dict]:
    import ray

    return [
        pg
        for pg in ray.util.placement_group_table().values()
        if pg.get("state") not in ("REMOVED",)
    ]
