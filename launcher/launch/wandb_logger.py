"""Weights & Biases logging for the recipe: rank 0 only, one stable run per job.

The run id is gosok's run id with ``resume="allow"``, so a job restarted after a failure
keeps writing to the same run; runs are grouped by the job id. ``mode=auto`` is online
when ``WANDB_API_KEY`` is set and offline (files under ``<dir>/wandb/offline-run-*``)
otherwise; ``logger.kind=none`` turns logging off. The API key is read by wandb from the
environment only: it is never put into a config, a log line or a results file.

Use: ``log = RankZeroLogger(logger_cfg, run_id, job_id, rank, config)``;
``log.log({"loss": 1.2}, step)``; ``log.finish()``.
"""

from __future__ import annotations

import os
from typing import Any

SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def wandb_mode(requested: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if requested == "auto":
        return "online" if env.get("WANDB_API_KEY") else "offline"
    return requested


def redact(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` fit to print or write: secret-looking values replaced."""
    return {
        k: ("<redacted>" if any(m in k.upper() for m in SECRET_MARKERS) else v)
        for k, v in env.items()
    }


class RankZeroLogger:
    def __init__(
        self,
        cfg: dict[str, Any],
        run_id: str,
        job_id: str,
        rank: int,
        config: dict[str, Any],
        run_dir: str,
    ) -> None:
        self.run = None
        if rank != 0 or cfg["kind"] != "wandb":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        directory = cfg.get("dir") or run_dir
        os.makedirs(directory, exist_ok=True)
        self.run = wandb.init(
            project=cfg["project"],
            entity=cfg.get("entity"),
            id=run_id,
            resume="allow",
            group=job_id,
            name=run_id,
            dir=directory,
            mode=wandb_mode(cfg["mode"]),
            tags=list(cfg.get("tags", [])),
            config=config,
        )
        self.run.define_metric("trainer/step")
        self.run.define_metric("*", step_metric="trainer/step")

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log({**metrics, "trainer/step": step})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
