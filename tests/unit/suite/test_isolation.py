"""Isolation logic at programme scale (510 nodes), with simulated measurements.

A simulated group's figure is its slowest member's speed (a ring is as fast as its
slowest link) with multiplicative noise; culprit nodes run at a fraction of full speed;
a bad link slows any group containing both of its ends.

Run: ``pytest tests/suite/test_isolation.py -q``.
"""

from __future__ import annotations

import math
import random

import pytest

from gosok.benchmarks.suite.isolation import isolate, pair_rounds, partition, round_budget


class Simulated:
    def __init__(
        self,
        culprits: set[int] = frozenset(),
        links: tuple[tuple[int, int], ...] = (),
        slow: float = 0.6,
        noise: float = 0.03,
        seed: int = 0,
    ):
        self.culprits = set(culprits)
        self.links = links
        self.slow = slow
        self.noise = noise
        self.rng = random.Random(seed)
        self.rounds: list[list[list[int]]] = []

    def __call__(self, groups: list[list[int]]) -> list[float]:
        self.rounds.append(groups)
        seen: set[int] = set()
        values = []
        for group in groups:
            assert not seen & set(group), "groups of one round must be disjoint"
            seen |= set(group)
            speed = min(self.slow if n in self.culprits else 1.0 for n in group)
            for a, b in self.links:
                if a in group and b in group:
                    speed = min(speed, self.slow)
            values.append(100.0 * speed * (1 + self.rng.uniform(-self.noise, self.noise)))
        return values


N = 510


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_finds_exactly_the_culprits_at_510_nodes(k: int, group_size: int) -> None:
    rng = random.Random(1000 * k + group_size)
    culprits = set(rng.sample(range(N), k))
    measure = Simulated(culprits, seed=k)
    outcome = isolate(N, measure, group_size=group_size, slow_below=0.10)
    assert set(outcome.culprits) == culprits
    assert outcome.bad_links == [] and outcome.unresolved == []
    assert outcome.round_count == len(measure.rounds)
    assert outcome.round_count <= round_budget(N) <= 2 * math.ceil(math.log2(N)) + 2
    # Every culprit comes with evidence: the slow groups it was measured in.
    for node in culprits:
        evidence = outcome.evidence(node)
        assert evidence and all(g.slow and g.shortfall > 0.10 for g in evidence)


def test_rounds_grow_like_log_of_group_size_not_node_count() -> None:
    counts = {}
    for n in (64, 128, 256, 510, 1024):
        outcome = isolate(n, Simulated({n // 3}), group_size=8)
        counts[n] = outcome.round_count
        assert outcome.culprits == [n // 3]
    # 1 screen + log2(8) bisection rounds, whatever the size.
    assert set(counts.values()) == {4}


def test_pure_bisection_from_halves_stays_within_log2() -> None:
    """One huge screening group per third of the cluster: rounds ~ log2(N)."""
    outcome = isolate(N, Simulated({417}), group_size=N)
    assert outcome.culprits == [417]
    assert outcome.round_count <= math.ceil(math.log2(N)) + 2


def test_healthy_cluster_names_no_node() -> None:
    for seed in range(20):
        outcome = isolate(N, Simulated(set(), noise=0.04, seed=seed), group_size=4)
        assert outcome.culprits == [] and outcome.bad_links == []
        assert outcome.round_count <= 2


def test_culprits_sharing_a_group() -> None:
    outcome = isolate(N, Simulated({0, 1, 2, 3, 9}), group_size=4)
    assert outcome.culprits == [0, 1, 2, 3, 9]


def test_leftover_nodes_are_tested_too() -> None:
    outcome = isolate(N + 1, Simulated({N}), group_size=4)
    assert outcome.culprits == [N]


def test_bad_link_inside_a_group_is_named_as_a_link() -> None:
    outcome = isolate(N, Simulated(links=((10, 11),)), group_size=4)
    assert outcome.culprits == []
    assert outcome.bad_links == [(10, 11)]
    assert outcome.round_count <= round_budget(N)


def test_noise_once_is_cleared_on_confirmation() -> None:
    calls = {"n": 0}
    inner = Simulated(set())

    def measure(groups: list[list[int]]) -> list[float]:
        values = inner(groups)
        calls["n"] += 1
        if calls["n"] == 1:
            values[5] *= 0.5  # one slow reading of group 5 in the screen only
        return values

    outcome = isolate(N, measure, group_size=2)
    assert outcome.culprits == [] and outcome.bad_links == []
    assert any("noise" in note for note in outcome.notes)


def test_exhaustive_mode_for_tiny_allocations() -> None:
    for n in (3, 4, 5):
        for culprit in range(n):
            outcome = isolate(n, Simulated({culprit}, slow=0.3, noise=0.1), group_size=4)
            assert outcome.mode == "exhaustive"
            assert outcome.culprits == [culprit]
            assert outcome.round_count <= round_budget(n)
        assert isolate(n, Simulated(set(), noise=0.1)).culprits == []


def test_exhaustive_mode_confirms_a_slow_pair_before_naming_a_link() -> None:
    healthy = Simulated(set(), noise=0.05)
    readings = {"n": 0}

    def one_dip(groups: list[list[int]]) -> list[float]:
        values = healthy(groups)
        readings["n"] += 1
        if readings["n"] == 1:
            values[0] *= 0.4  # the first reading of the first pair dips once
        return values

    outcome = isolate(3, one_dip)
    assert outcome.culprits == [] and outcome.bad_links == []
    assert any(g.purpose == "confirm" for r in outcome.rounds for g in r)
    assert outcome.round_count <= round_budget(3)


def test_exhaustive_mode_confirms_a_slow_node_before_naming_it() -> None:
    """Measured on a healthy 3x2 local cluster: node 2 read 0.43 and 0.45 of the reference
    in its two pairs once; measured again it was fast. A culprit must stay slow."""
    healthy = Simulated(set(), noise=0.05)
    readings = {"n": 0}

    def node_2_dips_twice(groups: list[list[int]]) -> list[float]:
        values = healthy(groups)
        readings["n"] += 1
        if readings["n"] <= 3:
            values = [v * 0.45 if 2 in g else v for g, v in zip(groups, values, strict=True)]
        return values

    outcome = isolate(3, node_2_dips_twice)
    assert outcome.culprits == [], outcome.evidence(2)
    assert any(g.purpose == "confirm" for r in outcome.rounds for g in r)
    assert outcome.round_count <= round_budget(3)


def test_exhaustive_mode_names_a_link_that_stays_slow() -> None:
    outcome = isolate(4, Simulated(set(), noise=0.05, links=((1, 3),)))
    assert outcome.mode == "exhaustive"
    assert outcome.culprits == [] and outcome.bad_links == [(1, 3)]
    assert outcome.round_count <= round_budget(4)


def test_two_nodes_cannot_be_told_apart() -> None:
    outcome = isolate(2, Simulated({1}))
    assert outcome.culprits == [] and outcome.notes


def test_pair_rounds_cover_every_pair_once_with_disjoint_rounds() -> None:
    for n in range(2, 12):
        rounds = pair_rounds(n)
        pairs = [p for r in rounds for p in r]
        assert len(pairs) == len(set(pairs)) == n * (n - 1) // 2
        for r in rounds:
            nodes = [x for p in r for x in p]
            assert len(nodes) == len(set(nodes))


def test_partition_and_outcome_serialise() -> None:
    full, rest = partition(list(range(10)), 4)
    assert full == [[0, 1, 2, 3], [4, 5, 6, 7]] and rest == [8, 9]
    doc = isolate(N, Simulated({7}), group_size=4).to_dict()
    assert doc["culprits"] == [7] and doc["evidence"]["7"]
    assert doc["round_count"] <= doc["round_budget"]
