"""A bad link found by isolation: nodes in network namespaces, one link rate-limited.

Three Ray nodes, each in its own Linux network namespace joined by veth pairs to a
bridge, run the quick suite's inventory, inter-node and isolation phases (isolation
forced on: on the CPU fallback there is no NIC spec to fail first). One node's link is
limited with ``tc`` (token bucket, 200 Mbit/s both ways; this kernel may lack
``netem``). Isolation must name exactly that node in 5 runs, the limited node rotating,
and name no node once the limit is lifted.

Marked ``netns``; needs root, ``ip`` and ``tc``, and runs only with
``GOSOK_NETNS_TESTS=1`` because it takes several minutes:
``GOSOK_NETNS_TESTS=1 pytest tests/suite/test_suite_netns.py -m netns -q``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netns_cluster import NetnsCluster, available

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.environ.get("GOSOK_NETNS_TESTS") != "1", reason="set GOSOK_NETNS_TESTS=1 to run"
    ),
]


@pytest.fixture(scope="module")
def netns_cluster():
    reason = available()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    with NetnsCluster(nodes=3, prefix=f"gsk{os.getpid() % 1000}") as cluster:
        yield cluster


def run_suite(cluster: NetnsCluster, out_dir: Path) -> tuple[int, str, dict]:
    cmd = cluster.run_in(
        0,
        [
            sys.executable,
            "-m",
            "gosok.launcher.cli",
            "bench",
            "suite=quick",
            "cluster=existing",
            f"cluster.address={cluster.address}",
            "cluster.gpu=cpu",
            "cluster.nodes=3",
            "cluster.gpus_per_node=2",
            "suite.phases=[inventory,inter_node,isolation]",
            "suite.isolation.trigger=always",
            f"hydra.run.dir={out_dir}",
        ],
    )
    out = subprocess.run(cmd, env=cluster.env(), capture_output=True, text=True, timeout=300)
    results = out_dir / "results.json"
    doc = json.loads(results.read_text()) if results.exists() else {}
    return out.returncode, out.stdout + out.stderr, doc


def test_rate_limited_node_is_named_in_every_run(netns_cluster, tmp_path: Path) -> None:
    for attempt, node in enumerate([2, 1, 0, 2, 1]):
        netns_cluster.slow_link(node)
        try:
            code, output, doc = run_suite(netns_cluster, tmp_path / f"slow{attempt}")
        finally:
            netns_cluster.heal_link(node)
        assert doc, output[-4000:]
        expected = [n["node_rank"] for n in doc["nodes"] if n["ip"] == netns_cluster.ip_of(node)]
        assert code == 1, output[-4000:]
        assert [n["node_rank"] for n in doc["verdict"]["failing_nodes"]] == expected
        assert doc["phases"]["isolation"]["outcome"]["culprits"] == expected


def test_no_node_named_when_no_link_is_limited(netns_cluster, tmp_path: Path) -> None:
    code, output, doc = run_suite(netns_cluster, tmp_path / "healthy")
    assert code == 0, output[-4000:]
    assert doc["verdict"]["failing_nodes"] == []
    assert doc["phases"]["isolation"]["outcome"]["culprits"] == []
