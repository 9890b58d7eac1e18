"""A bad link found by isolation: the product's netns cluster (``cluster.isolation=netns``:
each worker node a host of its own on a bridge), one worker's link rate-limited.

Four nodes (the head is this machine, three workers in their own namespaces) run the quick
suite's inventory, inter-node and isolation phases (isolation forced on: on the CPU
fallback there is no NIC spec to fail first). One worker's link is limited with ``tc``
(token bucket, 200 Mbit/s both ways; this kernel may lack ``netem``). Isolation must name
exactly that node in 5 runs, the limited worker rotating, and name no node once the limit
is lifted.

Marked ``netns``; needs root, ``ip``, ``unshare`` and ``tc``, and runs only with
``GOSOK_NETNS_TESTS=1`` because it takes several minutes:
``GOSOK_NETNS_TESTS=1 pytest tests/integration/suite/test_suite_netns.py -m netns -q``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gosok.launcher.cluster.netns import NetnsNetwork, problem
from tests.conftest import run_gosok

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.environ.get("GOSOK_NETNS_TESTS") != "1", reason="set GOSOK_NETNS_TESTS=1 to run"
    ),
]
NAME = "nslink"
NODES = 4
CLUSTER = ["cluster=local", f"cluster.name={NAME}", f"cluster.nodes={NODES}",
           "cluster.gpus_per_node=2", "cluster.isolation=netns"]  # fmt: skip


@pytest.fixture(scope="module")
def network():
    reason = problem() or (None if shutil.which("tc") else "needs `tc`")
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    up = run_gosok("cluster", "up", *CLUSTER, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield NetnsNetwork.for_cluster(NAME, NODES)
    finally:
        run_gosok("cluster", "down", f"cluster.name={NAME}", timeout=120)


def run_suite(out_dir: Path) -> tuple[int, str, dict]:
    out = run_gosok(
        "bench", "suite=quick", *CLUSTER, "suite.phases=[inventory,inter_node,isolation]",
        "suite.isolation.trigger=always", f"hydra.run.dir={out_dir}", timeout=300,
    )  # fmt: skip
    results = out_dir / "results.json"
    doc = json.loads(results.read_text()) if results.exists() else {}
    return out.returncode, out.stdout + out.stderr, doc


def test_rate_limited_node_is_named_in_every_run(network, tmp_path: Path) -> None:
    for attempt, node in enumerate([3, 1, 2, 3, 1]):
        network.slow_link(node)
        try:
            code, output, doc = run_suite(tmp_path / f"slow{attempt}")
        finally:
            network.heal_link(node)
        assert doc, output[-4000:]
        expected = [n["node_rank"] for n in doc["nodes"] if n["ip"] == network.ip_of(node)]
        assert code == 1, output[-4000:]
        assert [n["node_rank"] for n in doc["verdict"]["failing_nodes"]] == expected
        assert doc["phases"]["isolation"]["outcome"]["culprits"] == expected


def test_no_node_named_when_no_link_is_limited(network, tmp_path: Path) -> None:
    code, output, doc = run_suite(tmp_path / "healthy")
    assert code == 0, output[-4000:]
    assert doc["verdict"]["failing_nodes"] == []
    assert doc["phases"]["isolation"]["outcome"]["culprits"] == []
