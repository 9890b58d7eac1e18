"""Bad-node and bad-link isolation: which node(s) make a collective slow, in few rounds.

Pure logic (no Ray): the caller supplies ``measure(groups) -> values``, which measures a
list of *disjoint* node groups concurrently (one round) and returns one figure per group,
higher is better (bus bandwidth). Nothing here knows what a node is beyond its index, so
the logic is tested at 510 nodes with simulated measurements.

Two modes:

- ``bisect`` (the default from ``exhaustive_below`` nodes up). Round 1 screens the whole
  allocation in groups of ``group_size`` nodes, all measured at once; the median group is
  the reference (a majority of healthy groups is assumed). Every slow group is split in
  two halves, each half padded with nodes already proven good back to the screened group
  size so its figure stays comparable with the reference, and all halves of all slow
  groups are measured in the next round, side by side. A slow single node is a culprit.
  When both halves of a slow group are fast, the group is measured once more: still slow
  means the slowdown needs both halves together (for two nodes: a bad link between them),
  fast means the first reading was noise. Rounds: 1 + ceil(log2(group_size)) plus at most
  a few for confirmations, leftovers and padding shortage, independent of the node count
  and always within ``round_budget(n) = 2 * ceil(log2 n) + 2``.
- ``exhaustive`` (tiny allocations, where a median of groups has no majority): every pair,
  disjoint pairs measured together (round-robin schedule, n - 1 or n rounds). A node's
  score is its best pair; a node whose best pair is slow, and stays slow when that pair is
  measured again, is a culprit; a slow pair of two healthy nodes that stays slow when
  measured again is a bad link.

Use::

    outcome = isolate(n_nodes, measure, group_size=4, slow_below=0.10)
    outcome.culprits, outcome.bad_links, outcome.evidence(node)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Measure = Callable[[list[list[int]]], list[float]]


@dataclass(frozen=True)
class GroupResult:
    """One group measured in one round."""

    round: int
    purpose: str  # screen | bisect | confirm | leftover | pair
    nodes: tuple[int, ...]  # every node in the measured group
    tested: tuple[int, ...]  # the nodes under test; the rest are known-good padding
    value: float
    reference: float
    slow: bool

    @property
    def shortfall(self) -> float:
        """How far below the reference, as a fraction (0.25 = 25% slower)."""
        return 1.0 - self.value / self.reference if self.reference > 0 else 0.0

    def describe(self) -> str:
        pads = [n for n in self.nodes if n not in self.tested]
        padding = f" + good {pads}" if pads else ""
        return (
            f"round {self.round} {self.purpose} {list(self.tested)}{padding}: "
            f"{self.value:.4g} vs reference {self.reference:.4g} "
            f"({-self.shortfall:+.1%}){' SLOW' if self.slow else ''}"
        )


@dataclass
class IsolationOutcome:
    n_nodes: int
    mode: str
    group_size: int
    slow_below: float
    reference: float = 0.0
    rounds: list[list[GroupResult]] = field(default_factory=list)
    culprits: list[int] = field(default_factory=list)
    bad_links: list[tuple[int, int]] = field(default_factory=list)
    unresolved: list[tuple[int, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def round_count(self) -> int:
        return len(self.rounds)

    @property
    def budget(self) -> int:
        return round_budget(self.n_nodes)

    @property
    def measurements(self) -> int:
        return sum(len(r) for r in self.rounds)

    def evidence(self, node: int) -> list[GroupResult]:
        """Slow groups in which ``node`` was under test."""
        return [g for r in self.rounds for g in r if g.slow and node in g.tested]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_nodes": self.n_nodes,
            "mode": self.mode,
            "group_size": self.group_size,
            "slow_below": self.slow_below,
            "reference": self.reference,
            "round_count": self.round_count,
            "round_budget": self.budget,
            "measurements": self.measurements,
            "culprits": list(self.culprits),
            "bad_links": [list(p) for p in self.bad_links],
            "unresolved": [list(u) for u in self.unresolved],
            "notes": list(self.notes),
            "rounds": [[{**asdict(g), "shortfall": g.shortfall} for g in r] for r in self.rounds],
            "evidence": {
                str(n): [g.describe() for g in self.evidence(n)]
                for n in sorted({*self.culprits, *(x for p in self.bad_links for x in p)})
            },
        }


def round_budget(n_nodes: int) -> int:
    """The most rounds isolation may take for ``n_nodes``: grows like log2 of the size."""
    return 2 * math.ceil(math.log2(max(2, n_nodes))) + 2


def partition(nodes: list[int], size: int) -> tuple[list[list[int]], list[int]]:
    """Consecutive groups of ``size``; the remainder (fewer than ``size``) separately."""
    full = len(nodes) - len(nodes) % size
    return [nodes[i : i + size] for i in range(0, full, size)], nodes[full:]


def halves(nodes: tuple[int, ...]) -> list[tuple[int, ...]]:
    mid = (len(nodes) + 1) // 2
    return [nodes[:mid], nodes[mid:]]


def pair_rounds(n: int) -> list[list[tuple[int, int]]]:
    """Round-robin (circle method): every pair once, disjoint pairs in each round."""
    players: list[int | None] = list(range(n)) + ([None] if n % 2 else [])
    count = len(players)
    rounds = []
    for _ in range(count - 1):
        pairs = []
        for i in range(count // 2):
            a, b = players[i], players[count - 1 - i]
            if a is not None and b is not None:
                pairs.append((min(a, b), max(a, b)))
        rounds.append(pairs)
        players = [players[0], players[-1], *players[1:-1]]
    return rounds


def screen_size(n_nodes: int, group_size: int) -> int:
    """Screening group size: as asked, but small enough for at least 3 groups."""
    return max(2, min(group_size, n_nodes // 3))


@dataclass
class _Pending:
    tested: tuple[int, ...]
    purpose: str
    parent: int | None  # id of the slow group this half came from


def isolate(
    n_nodes: int,
    measure: Measure,
    group_size: int = 4,
    slow_below: float = 0.10,
    exhaustive_below: int = 6,
    reference: float | None = None,
) -> IsolationOutcome:
    """Find the nodes (and node pairs) that slow a collective down; see the module doc."""
    if not 0.0 < slow_below < 1.0:
        raise ValueError(f"slow_below={slow_below} must be in (0, 1)")
    if n_nodes < exhaustive_below:
        return _exhaustive(n_nodes, measure, slow_below)
    return _bisect(n_nodes, measure, group_size, slow_below, reference)


def _measure_round(
    outcome: IsolationOutcome,
    measure: Measure,
    groups: list[tuple[tuple[int, ...], tuple[int, ...], str]],
    reference: float | None,
) -> list[GroupResult]:
    values = measure([list(nodes) for nodes, _, _ in groups])
    if len(values) != len(groups):
        raise ValueError(f"measure returned {len(values)} values for {len(groups)} groups")
    ref = statistics.median(values) if reference is None else reference
    number = len(outcome.rounds) + 1
    results = [
        GroupResult(
            number, purpose, nodes, tested, float(v), ref, v < (1 - outcome.slow_below) * ref
        )
        for (nodes, tested, purpose), v in zip(groups, values, strict=True)
    ]
    outcome.rounds.append(results)
    return results


def _bisect(
    n_nodes: int, measure: Measure, group_size: int, slow_below: float, reference: float | None
) -> IsolationOutcome:
    size = screen_size(n_nodes, group_size)
    outcome = IsolationOutcome(n_nodes, "bisect", size, slow_below)
    full, leftover = partition(list(range(n_nodes)), size)
    screened = _measure_round(
        outcome, measure, [(tuple(g), tuple(g), "screen") for g in full], reference
    )
    outcome.reference = screened[0].reference
    ref = outcome.reference
    good: set[int] = {n for g in screened if not g.slow for n in g.tested}
    parents: dict[int, tuple[int, ...]] = {}
    children_left: dict[int, int] = {}
    children_slow: dict[int, bool] = {}
    pending: list[_Pending] = []

    def split(nodes: tuple[int, ...]) -> None:
        pid = len(parents)
        parents[pid] = nodes
        children_left[pid] = 2
        children_slow[pid] = False
        pending.extend(_Pending(h, "bisect", pid) for h in halves(nodes))

    for group in screened:
        if group.slow:
            split(group.tested)
    if leftover:
        pending.append(_Pending(tuple(leftover), "leftover", None))

    while pending:
        if outcome.round_count >= outcome.budget:
            outcome.unresolved += [p.tested for p in pending]
            outcome.notes.append(f"stopped at the round budget ({outcome.budget})")
            break
        pool = sorted(good)
        batch: list[tuple[tuple[int, ...], tuple[int, ...], str]] = []
        scheduled: list[_Pending] = []
        deferred: list[_Pending] = []
        for item in pending:
            need = max(0, size - len(item.tested))
            if need > len(pool):
                deferred.append(item)
                continue
            pads, pool = pool[:need], pool[need:]
            batch.append((item.tested + tuple(pads), item.tested, item.purpose))
            scheduled.append(item)
        if not scheduled:
            outcome.unresolved += [p.tested for p in deferred]
            outcome.notes.append("not enough nodes proven good to pad the remaining groups")
            break
        pending = deferred
        for item, result in zip(
            scheduled, _measure_round(outcome, measure, batch, ref), strict=True
        ):
            if item.purpose == "confirm":
                if result.slow:
                    nodes = item.tested
                    if len(nodes) == 2:
                        outcome.bad_links.append((nodes[0], nodes[1]))
                    else:
                        outcome.unresolved.append(nodes)
                else:
                    good.update(item.tested)
                    outcome.notes.append(
                        f"group {list(item.tested)} was slow once, fast when re-measured: noise"
                    )
                continue
            if result.slow:
                if len(item.tested) == 1:
                    outcome.culprits.append(item.tested[0])
                else:
                    split(item.tested)
            else:
                good.update(item.tested)
            if item.parent is not None:
                pid = item.parent
                children_left[pid] -= 1
                children_slow[pid] = children_slow[pid] or result.slow
                if children_left[pid] == 0 and not children_slow[pid]:
                    # Both halves fast although their union was slow: confirm once.
                    good.difference_update(parents[pid])
                    pending.append(_Pending(parents[pid], "confirm", None))
    outcome.culprits.sort()
    outcome.bad_links.sort()
    return outcome


LINK_CONFIRMATIONS = 2  # extra readings before a pair is called a bad link


def _exhaustive(n_nodes: int, measure: Measure, slow_below: float) -> IsolationOutcome:
    outcome = IsolationOutcome(n_nodes, "exhaustive", 2, slow_below)
    if n_nodes < 3:
        outcome.notes.append(
            f"{n_nodes} node(s): a slow pair cannot be pinned on either node without a third"
        )
        return outcome
    values: dict[tuple[int, int], float] = {}
    for pairs in pair_rounds(n_nodes):
        measured = measure([list(p) for p in pairs])
        if len(measured) != len(pairs):
            raise ValueError(f"measure returned {len(measured)} values for {len(pairs)} groups")
        values.update(zip(pairs, measured, strict=True))
        outcome.rounds.append([])
        for pair, value in zip(pairs, measured, strict=True):
            outcome.rounds[-1].append(
                GroupResult(len(outcome.rounds), "pair", pair, pair, float(value), 0.0, False)
            )
    best = {n: max(v for p, v in values.items() if n in p) for n in range(n_nodes)}
    ref = statistics.median(best.values())
    outcome.reference = ref
    line = (1 - slow_below) * ref
    outcome.rounds = [
        [
            GroupResult(g.round, g.purpose, g.nodes, g.tested, g.value, ref, g.value < line)
            for g in r
        ]
        for r in outcome.rounds
    ]
    culprits = sorted(n for n, score in best.items() if score < line)
    for _ in range(LINK_CONFIRMATIONS):  # a culprit's best pair must stay slow when measured again
        if not culprits or outcome.round_count >= outcome.budget:
            break
        pairs = sorted(
            {max((p for p in values if n in p), key=values.__getitem__) for n in culprits}
        )
        _confirm_links(pairs, values, measure, outcome, ref, line)
        best = {n: max(v for p, v in values.items() if n in p) for n in range(n_nodes)}
        culprits = [n for n in culprits if best[n] < line]
    outcome.culprits = culprits
    bad = set(outcome.culprits)
    suspects = [p for p, v in values.items() if v < line and not (set(p) & bad)]
    for _ in range(LINK_CONFIRMATIONS):
        if not suspects or outcome.round_count >= outcome.budget:
            break
        suspects = _confirm_links(suspects, values, measure, outcome, ref, line)
    outcome.bad_links = sorted(suspects)
    return outcome


def _confirm_links(
    suspects: list[tuple[int, int]],
    values: dict[tuple[int, int], float],
    measure: Measure,
    outcome: IsolationOutcome,
    ref: float,
    line: float,
) -> list[tuple[int, int]]:
    """Measure suspected pairs again (disjoint ones together) and keep the best reading:
    a bad link stays slow every time, a noisy dip does not."""
    pending = list(suspects)
    while pending:
        batch: list[tuple[int, int]] = []
        used: set[int] = set()
        for pair in pending:
            if not used & set(pair):
                batch.append(pair)
                used |= set(pair)
        pending = [p for p in pending if p not in batch]
        measured = measure([list(p) for p in batch])
        number = len(outcome.rounds) + 1
        outcome.rounds.append(
            [
                GroupResult(number, "confirm", p, p, float(v), ref, float(v) < line)
                for p, v in zip(batch, measured, strict=True)
            ]
        )
        for pair, value in zip(batch, measured, strict=True):
            values[pair] = max(values[pair], float(value))
    return [p for p in suspects if values[p] < line]
