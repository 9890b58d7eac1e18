"""Semantic checks of a composed ``gosok launch`` config, run before anything starts.

Hydra has already refused unknown keys and wrong types (``launcher.job_schema``); this
adds ranges, closed sets, cross-field rules (batch arithmetic, heads dividing the width,
tee ranks inside the world) and the programme's allocation rules. Every problem names
its full key.

Use: ``raise_if(validate_launch(cfg, cwd))``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from gosok.launcher.config.allocation import check_allocation
from gosok.launcher.config.launch_schema import (
    JOB_KINDS,
    LOGGER_KINDS,
    PRECISIONS,
    STRATEGIES,
    TRACKS,
    WANDB_MODES,
    ZERO_STAGES,
)
from gosok.launcher.config.ledger_schema import validate_ledger
from gosok.launcher.config.trust import validate_trust
from gosok.launcher.config.validate import one_of, positive, timeout, validate_cluster
from gosok.launcher.recipe.config import batch_problems

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_script(job: Any, cwd: Path) -> list[str]:
    problems: list[str] = []
    if not job.script:
        return ["job.script is empty; give the path of a torchrun-style script"]
    path = Path(job.script)
    path = path if path.is_absolute() else cwd / path
    if not path.is_file():
        problems.append(f"job.script={job.script!r}: no such file ({path})")
    if job.python and shutil.which(job.python) is None and not Path(job.python).is_file():
        problems.append(f"job.python={job.python!r}: no such interpreter")
    if job.workdir and not Path(job.workdir).is_dir():
        problems.append(f"job.workdir={job.workdir!r}: no such directory")
    if job.code_dir:
        code = Path(job.code_dir) if Path(job.code_dir).is_absolute() else cwd / job.code_dir
        if not code.is_dir():
            problems.append(f"job.code_dir={job.code_dir!r}: no such directory")
        elif path.is_file() and not path.resolve().is_relative_to(code.resolve()):
            problems.append(
                f"job.code_dir={job.code_dir!r} does not hold job.script={job.script!r}; "
                "allowed: a directory the script is inside"
            )
    problems += env_problems("job.env", list(job.env))
    problems += env_problems("job.env_from_host", list(job.env_from_host))
    missing = [n for n in job.env_from_host if isinstance(n, str) and n not in os.environ]
    if missing:
        problems.append(
            f"job.env_from_host names {missing}, which the launching environment does not set"
        )
    return problems


# Set by gosok for every rank: a job may not override them.
RESERVED_ENV = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "NODE_RANK", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_NAME", "ROLE_RANK", "ROLE_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE",
    "CUDA_VISIBLE_DEVICES", "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_DIR", "PYTHONPATH",
)  # fmt: skip
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def env_problems(key: str, names: list[str]) -> list[str]:
    """Variable names a job may set: well-formed, not gosok's or torchrun's own."""
    problems = []
    bad = [n for n in names if not isinstance(n, str) or not ENV_NAME.match(n)]
    if bad:
        problems.append(
            f"{key} has invalid variable name(s) {bad}; allowed: letters, digits and '_', "
            "not starting with a digit"
        )
    reserved = [n for n in names if n in RESERVED_ENV or str(n).startswith("GOSOK_")]
    if reserved:
        problems.append(
            f"{key} sets {reserved}, which gosok sets for every rank; reserved: "
            f"{', '.join(RESERVED_ENV)}, GOSOK_*"
        )
    return problems


def validate_recipe(job: Any, ds: Any, world: int) -> list[str]:
    problems: list[str] = []
    problems += one_of("job.strategy", job.strategy, STRATEGIES)
    problems += one_of("job.precision", job.precision, PRECISIONS)
    for key in ("steps", "micro_batch", "grad_accum", "log_every"):
        problems += positive(f"job.{key}", getattr(job, key), 1, maximum=1_000_000_000)
    problems += positive("job.lr", job.lr, 1e-12, maximum=10.0)
    problems += positive("job.grad_clip", job.grad_clip, 0, maximum=1e6)
    model = job.model
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
        problems += positive(f"job.model.{key}", getattr(model, key), 1, maximum=1 << 20)
    problems += positive("job.model.seq_len", model.seq_len, 2, maximum=1 << 20)
    if problems:
        return problems
    if model.n_heads >= 1 and model.d_model % model.n_heads:
        problems.append(
            f"job.model.d_model={model.d_model} must be divisible by "
            f"job.model.n_heads={model.n_heads}"
        )
    problems += one_of("job.data.source", job.data.source, ("markov",))
    if job.strategy == "deepspeed":
        problems += one_of("deepspeed.zero_stage", ds.zero_stage, ZERO_STAGES)
        problems += batch_problems(ds, job, world)
    return problems


TRAIN_EXTRA = "pip install 'gosok[train]'"


def training_extra_problems(cfg: Any) -> list[str]:
    """The training-only packages a job needs (``gosok[train]``) and this environment lacks:
    a benchmark-only install (``pip install gosok``) is told which to add."""
    import importlib.util

    needs = []
    if cfg.job.kind == "recipe" and cfg.job.strategy == "deepspeed":
        needs.append(("deepspeed", "job.strategy=deepspeed", "another job.strategy"))
    if cfg.logger.kind == "wandb":
        needs.append(("wandb", "logger=wandb", "logger=none"))
    return [
        f"{setting} needs the {module!r} package, which is not installed; {TRAIN_EXTRA} "
        f"(on every node), or {instead}"
        for module, setting, instead in needs
        if importlib.util.find_spec(module) is None
    ]


def validate_launch(cfg: Any, cwd: Path) -> list[str]:
    cluster = cfg.cluster
    problems = validate_cluster(cluster)
    world = cluster.nodes * cluster.gpus_per_node
    job = cfg.job
    problems += one_of("job.kind", job.kind, JOB_KINDS)
    if job.kind == "script":
        problems += validate_script(job, cwd)
    elif job.kind == "recipe":
        problems += validate_recipe(job, cfg.deepspeed, world)
    problems += positive("checkpoint.every_steps", cfg.checkpoint.every_steps, 1, 1_000_000_000)
    problems += positive("checkpoint.keep_last", cfg.checkpoint.keep_last, 1, maximum=1000)
    fault = cfg.fault
    problems += positive("fault.max_failures", fault.max_failures, 0, maximum=10_000)
    problems += positive("fault.same_failure_limit", fault.same_failure_limit, 1, maximum=10_000)
    for key in ("hang_timeout_s", "startup_timeout_s", "placement_timeout_s"):
        problems += timeout(f"fault.{key}", getattr(fault, key))
    problems += positive("fault.poll_s", fault.poll_s, 0.01, maximum=600)
    problems += positive("fault.report_timeout_s", fault.report_timeout_s, 0.1, maximum=3600)
    problems += positive("fault.missed_reports", fault.missed_reports, 1, maximum=1000)
    problems += one_of("logger.kind", cfg.logger.kind, LOGGER_KINDS)
    problems += one_of("logger.mode", cfg.logger.mode, WANDB_MODES)
    problems += training_extra_problems(cfg)
    bad_tee = [r for r in cfg.tee_ranks if not 0 <= r < world]
    if bad_tee:
        problems.append(
            f"tee_ranks {bad_tee} outside the world of {world} rank(s) (0..{world - 1})"
        )
    if cfg.run_id and not RUN_ID.match(cfg.run_id):
        problems.append(
            f"run_id={cfg.run_id!r}: use 1-64 letters, digits, '_', '.', '-' (W&B run id rules)"
        )
    if not 0 <= cfg.master_port <= 65535:
        problems.append(f"master_port={cfg.master_port} must be in 0..65535 (0: free port)")
    problems += validate_trust(cfg)
    problems += one_of("allocation.track", cfg.allocation.track, TRACKS)
    if cfg.allocation.track in TRACKS and cfg.allocation.track != "none":
        problems += [f"allocation: {p}" for p in check_allocation(cluster, cfg.allocation.track)]
    problems += validate_ledger(cfg.ledger)
    return problems
