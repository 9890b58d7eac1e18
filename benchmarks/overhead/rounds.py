"""What the start-up benchmarks share (``launch.py``, ``recovery.py``): commands measured
in alternating rounds against torchrun, medians and ratios, and the facts every result
file carries (device, CPU, software versions, settings)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from importlib import metadata
from typing import Any

from gosok.launcher.ranks.fingerprint import driver_fingerprint

BASELINE = "torchrun"


def versions() -> dict[str, Any]:
    found = {}
    for name in ("gosok", "torch", "ray", "hydra-core", "omegaconf", "deepspeed"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def alternate(
    names: list[str],
    rounds: int,
    one: Callable[[str, int], dict[str, float]],
    keys: tuple[str, ...],
) -> dict[str, dict[str, list[float]]]:
    """One untimed round, then ``rounds`` rounds of ``one(name, index)`` for every name,
    the order rotated each round; every figure of every round, by name and key."""
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in names}
    for name in names:  # untimed: the first launch starts the nodes' zygotes
        one(name, -1)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            result = one(name, index)
            for key in keys:
                times[name][key].append(result[key])
            shown = "  ".join(f"{k.replace('_', ' ')} {result[k]:6.2f} s" for k in keys)
            print(f"round {index}: {name:<12s} {shown}", flush=True)
    return times


def medians_and_ratios(
    times: dict[str, dict[str, list[float]]],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Median of every figure, and each command's median over the baseline's."""
    medians = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    base = medians[BASELINE]
    ratios = {
        n: {k: value / base[k] for k, value in m.items()}
        for n, m in medians.items()
        if n != BASELINE
    }
    return medians, ratios


def print_table(medians: dict[str, dict[str, float]], ratios: dict[str, dict[str, float]]) -> None:
    keys = list(next(iter(medians.values())))
    head = "".join(f"{k.replace('_', ' '):>12s}" for k in keys)
    print(f"{'':<16s}{head}" + "".join(f"{'ratio ' + k.replace('_', ' '):>18s}" for k in keys))
    for name, figures in medians.items():
        ratio = ratios.get(name, dict.fromkeys(keys, 1.0))
        print(f"{name:<16s}" + "".join(f"{figures[k]:12.2f}" for k in keys)
              + "".join(f"{ratio[k]:18.2f}" for k in keys))  # fmt: skip


def facts(settings: dict[str, Any]) -> dict[str, Any]:
    """Device, CPU, software versions, settings and the driver's fingerprint."""
    fingerprint = driver_fingerprint()
    return {
        "device": "cpu",
        "cpu_model": fingerprint["cpu_model"],
        "cpu_count": fingerprint["cpu_count"],
        "software": {**versions(), "python": fingerprint["python"]},
        "settings": settings,
        "env": fingerprint,
    }
