"""The benchmark registry, after nccl-tests' pattern: each entry declares how it counts
bytes or FLOPs and its bus-bandwidth factor right beside the code that runs it.

Two levels:
- ``BenchmarkEntry`` (family "collective", "gemm", "hbm", ...): one measurable operation,
  with ``bytes_for`` / ``busbw_factor`` (or FLOPs) and a ``run`` hook the family's rank
  code calls. Kernels and acceptance add entries with ``register``.
- ``bench driver``: what ``gosok bench bench=<name>`` runs, registered with
  ``@bench_driver("<name>")``; it receives the composed config and returns an exit code.

Use: ``get("all_reduce").busbw_factor(8)`` -> 1.75; ``driver_for("collectives")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BenchmarkEntry:
    name: str
    family: str
    description: str
    # Bytes the result is counted over, from the entry's own size unit and the group size.
    bytes_for: Callable[[int, int], int] = lambda size, n: size
    # nccl-tests bus bandwidth factor for n ranks (1 for non-collectives).
    busbw_factor: Callable[[int], float] = lambda n: 1.0
    run: Callable[..., Any] | None = None
    properties: dict[str, Any] = field(default_factory=dict)


_ENTRIES: dict[str, BenchmarkEntry] = {}
_DRIVERS: dict[str, Callable[..., int]] = {}


def register(entry: BenchmarkEntry) -> BenchmarkEntry:
    if entry.name in _ENTRIES:
        raise ValueError(f"benchmark entry {entry.name!r} registered twice")
    _ENTRIES[entry.name] = entry
    return entry


def get(name: str) -> BenchmarkEntry:
    if name not in _ENTRIES:
        raise KeyError(f"unknown benchmark {name!r}; registered: {', '.join(sorted(_ENTRIES))}")
    return _ENTRIES[name]


def family(name: str) -> dict[str, BenchmarkEntry]:
    return {k: v for k, v in _ENTRIES.items() if v.family == name}


def bench_driver(name: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    def decorate(fn: Callable[..., int]) -> Callable[..., int]:
        _DRIVERS[name] = fn
        return fn

    return decorate


def driver_for(name: str) -> Callable[..., int]:
    if name not in _DRIVERS:
        raise KeyError(f"bench={name!r} has no driver; allowed: {', '.join(sorted(_DRIVERS))}")
    return _DRIVERS[name]


def drivers() -> list[str]:
    return sorted(_DRIVERS)
