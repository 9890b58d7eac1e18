"""The restart policy with no Ray and no processes: every failure kind, same-failure
detection, ``max_failures``, failover to spare nodes and the blocklist."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gosok.launcher.launch.policy import KINDS, Ended, RestartPolicy


def policy(max_failures=3, same_failure_limit=2, exclude=True, nodes=2) -> RestartPolicy:
    fault = SimpleNamespace(
        max_failures=max_failures, same_failure_limit=same_failure_limit,
        exclude_failed_nodes=exclude,
    )  # fmt: skip
    return RestartPolicy(fault, nodes_needed=nodes)


NODES = ["node-a", "node-b", "node-c"]


def test_success_ends_the_run() -> None:
    decision = policy().after(Ended("ok"))
    assert decision.ok and not decision.restart


def test_node_lost_with_a_spare_fails_over_and_blocklists_the_node() -> None:
    p = policy()
    decision = p.after(Ended("node_lost", True, blamed_node_ids=("node-a",)), NODES)
    assert decision.restart and decision.excluded == ("node-a",) and p.blocklist == ["node-a"]
    # the blocklist holds for the rest of the run; a second loss has no spare left
    decision = p.after(Ended("node_lost", True, blamed_node_ids=("node-b",)), NODES)
    assert decision.restart and decision.kept == ("node-b",) and p.blocklist == ["node-a"]


def test_node_lost_without_a_spare_keeps_the_node_in_the_pool() -> None:
    p = policy(nodes=3)
    decision = p.after(Ended("node_lost", True, blamed_node_ids=("node-a",)), NODES)
    assert decision.restart and decision.kept == ("node-a",) and p.blocklist == []


def test_no_failover_when_excluding_is_off() -> None:
    p = policy(exclude=False)
    decision = p.after(Ended("worker_lost", True, blamed_node_ids=("node-a",)), NODES)
    assert decision.restart and not decision.excluded and p.blocklist == []


@pytest.mark.parametrize(
    "kind", ["worker_lost", "hang", "signal", "spawn", "startup_timeout", "placement"]
)
def test_infrastructure_failures_are_retried_up_to_max_failures(kind: str) -> None:
    p = policy(max_failures=2)
    assert p.after(Ended(kind, True, "same")).restart
    assert p.after(Ended(kind, True, "same")).restart  # infra never counts as "the same"
    last = p.after(Ended(kind, True, "same"))
    assert not last.restart and "fault.max_failures=2" in last.message


def test_the_same_exit_twice_is_a_code_error_not_retried() -> None:
    p = policy(same_failure_limit=2)
    assert p.after(Ended("exit", False, "ValueError: bad lr")).restart
    last = p.after(Ended("exit", False, "ValueError: bad lr"))
    assert not last.restart and "config or code error" in last.message


def test_different_exits_or_an_infra_failure_between_reset_the_count() -> None:
    p = policy(max_failures=5, same_failure_limit=2)
    assert p.after(Ended("exit", False, "A")).restart
    assert p.after(Ended("exit", False, "B")).restart
    assert p.after(Ended("node_lost", True)).restart
    assert p.after(Ended("exit", False, "B")).restart


def test_a_full_disk_stops_at_once() -> None:
    decision = policy().after(Ended("disk_full", False, "No space left on device"))
    assert not decision.restart and "cannot help" in decision.message


def test_an_unknown_kind_is_a_bug_not_a_decision() -> None:
    with pytest.raises(ValueError, match="unknown failure kind"):
        policy().after(Ended("meteor"))
    assert "node_lost" in KINDS
