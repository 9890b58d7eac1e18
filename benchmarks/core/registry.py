"""Typed registries: benchmarks (``bench=<name>`` / ``suite=<name>``), collectives, compute
kernels and suite phases are each one record, registered by name at the end of the file
that defines it; a name registered twice is refused.

``Benchmark`` is the lifecycle every benchmark follows (after SuperBench's fixed
preprocess → benchmark → postprocess and nccl-tests' ``struct testColl``):

- ``validate(cfg)`` checks every setting before anything starts (no torch, no Ray);
- ``plan(cfg)`` is pure and returns the lines ``dry_run=true`` prints;
- ``run(cfg, console)`` drives the ranks and writes the results file, returns the exit code;
- ``render(doc, args)`` derives the report of a results file of kind ``kind``;
- ``rederive(doc)`` recomputes every derived figure from the raw data (audits);
- ``reference(doc, rederived, contract)`` lists how a file differs from the auditor's
  reference (gosok's catalogue, contracts and settings, or the auditor's contract).

Benchmarks are found through the ``gosok.benchmarks`` entry points (``pyproject.toml``).

Use: ``benchmark("collectives").validate(cfg)``; ``for_kind("suite").render(doc, args)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
ENTRY_POINT_GROUP = "gosok.benchmarks"


class Registry(Generic[T]):
    """Records of one kind by name, in registration order; duplicates refused."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._items[name] = item
        return item

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise KeyError(f"unknown {self.what} {name!r}; registered: {', '.join(self._items)}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())


@dataclass(frozen=True)
class Benchmark:
    """One ``gosok bench`` benchmark and the results kind it writes."""

    name: str
    kind: str
    summary: str
    validate: Callable[[Any], list[str]]
    plan: Callable[[Any], list[str]]
    run: Callable[[Any, Any], int]
    render: Callable[[dict[str, Any], Any], int]
    rederive: Callable[[dict[str, Any]], list[str]] | None = None
    compare: Callable[[dict[str, Any], dict[str, Any], Any], int] | None = None
    reference: Callable[[dict[str, Any], dict[str, Any], str | None], list[str]] | None = None


_BENCHMARKS: Registry[Benchmark] | None = None


def benchmarks() -> Registry[Benchmark]:
    """Every benchmark the installed packages register (loaded once)."""
    global _BENCHMARKS
    if _BENCHMARKS is None:
        from importlib.metadata import entry_points

        found: Registry[Benchmark] = Registry("benchmark")
        for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
            record = point.load()
            if not isinstance(record, Benchmark) or record.name != point.name:
                raise TypeError(f"entry point {point.value!r} is not Benchmark {point.name!r}")
            found.add(record.name, record)
        _BENCHMARKS = found
    return _BENCHMARKS


def benchmark(name: str) -> Benchmark:
    return benchmarks()[name]


def for_kind(kind: str) -> Benchmark | None:
    """The benchmark that writes results of ``kind`` (the first registered one)."""
    for _, record in benchmarks().items():
        if record.kind == kind:
            return record
    return None
