"""Where a run's files go: Hydra's run directory (``hydra.run.dir``), or the current
directory when gosok code runs outside a Hydra command (scripts, tests).

Use: ``run_dir() / "results.json"``; ``hydra_output_dir()`` is None outside Hydra.
"""

from __future__ import annotations

from pathlib import Path


def hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir).resolve()
    except ValueError:
        return None


def run_dir() -> Path:
    return hydra_output_dir() or Path.cwd()
