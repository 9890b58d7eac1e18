"""``gosok launch``: check the job against the cluster and the allocation rules, print the
plan (``dry_run=true``: nothing else happens, Ray is not contacted), or run it under the
supervisor with checkpoints, restarts, failover and W&B, then write ``launch.json``.

Run::

    gosok launch job=script job.script=train.py job.args='[--lr,3e-4]' cluster=local
    gosok launch job=recipe job.strategy=deepspeed deepspeed=zero2 cluster=local
    gosok launch cluster=naver_h200_32 cluster.address=HEAD:6379 dry_run=true
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console

from gosok.launcher.config.allocation import describe_allocation
from gosok.launcher.config.launch_validate import validate_launch
from gosok.launcher.config.validate import raise_if
from gosok.launcher.launch.checkpoint import CheckpointStore
from gosok.launcher.launch.wandb_logger import redact, wandb_mode
from gosok.launcher.ranks.plan import backend_for, make_plan, synthetic_nodes
from gosok.launcher.recipe.config import batch_arithmetic, deepspeed_json, recipe_peak_tflops
from gosok.launcher.results.run_dir import run_dir as current_run_dir
from gosok.launcher.results.store import atomic_write_bytes, write_results

RECIPE_MODULE = "gosok.launcher.recipe.train"
RUNNER_MODULE = "gosok.launcher.ranks.script_runner"


@dataclass
class LaunchPlan:
    """What the driver derived from the config, before anything runs."""

    run_dir: Path
    run_id: str
    job_id: str
    checkpoint_dir: Path
    argv: list[str]
    cwd: str
    env: dict[str, str]
    rank_env: dict[str, dict[str, str]]
    recipe: dict[str, Any] | None
    batch: dict[str, int] | None
    total_steps: int | None


def stable_run_id(name: str, run_dir: Path) -> str:
    """Same run directory, same id: a relaunch into it resumes checkpoints and W&B run."""
    digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:10]
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:40] or "job"
    return f"{clean}-{digest}"


def build_plan(cfg: Any, run_dir: Path, cwd: Path) -> LaunchPlan:
    job, cluster = cfg.job, cfg.cluster
    world = cluster.nodes * cluster.gpus_per_node
    run_id = cfg.run_id or stable_run_id(job.name, run_dir)
    job_id = cfg.job_id or job.name
    ckpt_dir = Path(cfg.checkpoint.dir or run_dir / "checkpoints").resolve()
    env = {
        "GOSOK_RUN_ID": run_id,
        "GOSOK_JOB_ID": job_id,
        "GOSOK_RUN_DIR": str(run_dir),
        "GOSOK_CHECKPOINT_DIR": str(ckpt_dir),
    }
    logger = cfg.logger
    mode = wandb_mode(logger.mode) if logger.kind == "wandb" else "disabled"
    if logger.kind == "wandb":
        env.update(
            WANDB_RUN_ID=run_id,
            WANDB_RESUME="allow",
            WANDB_RUN_GROUP=job_id,
            WANDB_PROJECT=logger.project,
            WANDB_DIR=logger.dir or str(run_dir),
        )
        if logger.entity:
            env["WANDB_ENTITY"] = logger.entity
    env["WANDB_MODE"] = mode
    rank_env: dict[str, dict[str, str]] = {}
    if logger.kind == "wandb" and os.environ.get("WANDB_API_KEY"):
        rank_env["0"] = {"WANDB_API_KEY": os.environ["WANDB_API_KEY"]}
    recipe = batch = None
    total_steps = None
    if job.kind == "script":
        python = job.python or sys.executable
        script = Path(job.script)
        script = script if script.is_absolute() else (cwd / script).resolve()
        argv = [python, "-m", RUNNER_MODULE, str(script), *[str(a) for a in job.args]]
        env.update({str(k): str(v) for k, v in job.env.items()})
        workdir = job.workdir or str(cwd)
    else:
        argv = [
            sys.executable, "-m", RUNNER_MODULE, "--module", RECIPE_MODULE,
            "--config", str(run_dir / "recipe.json"),
        ]  # fmt: skip
        workdir = str(cwd)
        batch = batch_arithmetic(job, world)
        total_steps = job.steps
        ds = deepspeed_json(cfg.deepspeed, job, world, cluster.gpu)
        if job.strategy == "deepspeed" and cluster.gpu == "cpu":
            env["DS_ACCELERATOR"] = "cpu"
        recipe = {
            "job": OmegaConf.to_container(job, resolve=True),
            "deepspeed": ds if job.strategy == "deepspeed" else None,
            "checkpoint": {
                "dir": str(ckpt_dir),
                "every_steps": cfg.checkpoint.every_steps,
                "keep_last": cfg.checkpoint.keep_last,
            },
            "logger": {**OmegaConf.to_container(logger, resolve=True), "mode": mode},
            "run_id": run_id,
            "job_id": job_id,
            "run_dir": str(run_dir),
            "result_file": str(run_dir / "result.json"),
            "peak_tflops": recipe_peak_tflops(cluster.gpu, job.precision),
            "gpu": cluster.gpu,
        }
    return LaunchPlan(
        run_dir, run_id, job_id, ckpt_dir, argv, workdir, env, rank_env, recipe, batch, total_steps
    )


def print_plan(cfg: Any, plan: LaunchPlan, console: Console) -> None:
    cluster, fault = cfg.cluster, cfg.fault
    backend = backend_for(cluster.gpu)
    port = cfg.master_port or 29500
    env = {**plan.env, "GOSOK_RESTART_COUNT": "0"}
    ranks = make_plan(synthetic_nodes(cluster.nodes), cluster.gpus_per_node, port, backend, env)
    out = lambda text="": console.print(text, markup=False, highlight=False)  # noqa: E731
    out(f"gosok launch plan (dry run): job {cfg.job.name!r} ({cfg.job.kind} mode)")
    out(f"cluster: {cluster.name} kind={cluster.kind} gpu={cluster.gpu} nodes={cluster.nodes} "
        f"x {cluster.gpus_per_node} rank(s), spare_nodes={cluster.spare_nodes}")  # fmt: skip
    out(f"allocation: {describe_allocation(cluster, cfg.allocation.track)}")
    out(f"plan: {json.dumps(ranks.summary())}")
    out("nodes (placed by Ray at run time; one placement bundle per node):")
    for index, node in enumerate(ranks.nodes):
        members = [r.rank for r in ranks.ranks_on_node(index)]
        out(f"  node_rank {index}: {node.node_id} ranks {members}")
    out(f"argv (every rank, no shell): {json.dumps(plan.argv)}")
    out(f"cwd: {plan.cwd}")
    shown = ranks.ranks if len(ranks.ranks) <= 16 else ranks.ranks[:4] + ranks.ranks[-2:]
    out("per-rank env:")
    for spec in shown:
        extra = sorted(plan.rank_env.get(str(spec.rank), {}))
        note = f" (+ {', '.join(extra)}=<redacted>)" if extra else ""
        out(f"  rank {spec.rank} (node_rank {spec.node_rank}, local_rank {spec.local_rank}): "
            f"{json.dumps(redact(spec.env), sort_keys=True)}{note}")  # fmt: skip
    if len(shown) < len(ranks.ranks):
        out(f"  ... {len(ranks.ranks) - len(shown)} more rank(s), same pattern")
    out(f"logs: {plan.run_dir / 'logs' / 'attempt-<n>' / 'rank-<r>.log'}; terminal: "
        f"ranks {list(cfg.tee_ranks)}")  # fmt: skip
    if plan.recipe is not None:
        job = cfg.job
        b = plan.batch or {}
        out(f"recipe: strategy={job.strategy} precision={job.precision} steps={job.steps} "
            f"model={json.dumps(plan.recipe['job']['model'])}")  # fmt: skip
        out(f"batch: micro {b['micro_batch_per_rank']} x grad_accum {b['grad_accum']} x world "
            f"{b['world_size']} = {b['global_batch_sequences']} sequences "
            f"= {b['tokens_per_step']} tokens per step")  # fmt: skip
        if plan.recipe["deepspeed"] is not None:
            out(f"deepspeed config: {json.dumps(plan.recipe['deepspeed'], sort_keys=True)}")
        peak = plan.recipe["peak_tflops"]
        out(f"MFU basis: {peak} TFLOPS per GPU ({cluster.gpu}, {job.precision})")
    store = CheckpointStore(plan.checkpoint_dir, cfg.checkpoint.keep_last)
    latest = store.latest(verify=False) if plan.checkpoint_dir.exists() else None
    resume = f"resume from step {latest.step}" if latest else "no checkpoint yet: from scratch"
    out(f"checkpoints: {plan.checkpoint_dir} (every {cfg.checkpoint.every_steps} steps, keep "
        f"last {cfg.checkpoint.keep_last}, manifest.json; {resume})")  # fmt: skip
    out(f"retry policy: up to {fault.max_failures} restart(s) from the latest checkpoint; "
        f"node/worker loss, signals and hangs are retried; the same non-infrastructure "
        f"failure {fault.same_failure_limit}x in a row stops the job; failed nodes "
        f"{'excluded when a spare exists' if fault.exclude_failed_nodes else 'kept'} "
        f"(spare_nodes={cluster.spare_nodes}); hang_timeout_s={fault.hang_timeout_s}, "
        f"startup_timeout_s={fault.startup_timeout_s}")  # fmt: skip
    out(f"logger: {cfg.logger.kind} mode={plan.env['WANDB_MODE']} run_id={plan.run_id} "
        f"group={plan.job_id} (rank 0 only, resume=allow)")  # fmt: skip
    out("dry run: nothing started, Ray not contacted")


def write_recipe_config(plan: LaunchPlan) -> None:
    if plan.recipe is not None:
        data = json.dumps(plan.recipe, indent=1) + "\n"
        atomic_write_bytes(plan.run_dir / "recipe.json", data.encode())


def summarize(console: Console, plan: LaunchPlan, result: Any, metrics: dict | None) -> None:
    restarts = len(result.attempts) - 1
    if metrics:
        mfu = metrics.get("mfu")
        console.print(
            f"final loss {metrics['final_loss']:.6f} | tokens/s {metrics['tokens_per_s']:.0f} | "
            f"step time {metrics['step_time_seconds'] * 1e3:.1f} ms | "
            f"MFU {'n/a' if mfu is None else f'{mfu:.2%}'} | restarts {restarts}",
            highlight=False,
        )
    state = "[bold green]finished[/]" if result.ok else f"[bold red]failed[/]: {result.message}"
    console.print(f"{state} after {len(result.attempts)} attempt(s)")
    if result.blocklist:
        console.print(f"blocklisted node(s): {[n[:12] for n in result.blocklist]}")


def launch_task(cfg: Any, console: Console) -> int:
    cwd = Path.cwd()
    raise_if(validate_launch(cfg, cwd))
    run_dir = current_run_dir()
    plan = build_plan(cfg, run_dir, cwd)
    if cfg.dry_run:
        print_plan(cfg, plan, console)
        return 0
    from gosok.launcher.cluster.connect import ray_cluster
    from gosok.launcher.launch.supervisor import RunSpec, Supervisor, outcome_dicts

    write_recipe_config(plan)
    spec = RunSpec(
        argv=plan.argv,
        cwd=plan.cwd,
        env=plan.env,
        rank_env=plan.rank_env,
        log_root=run_dir / "logs",
        tee_ranks=list(cfg.tee_ranks),
        expect_heartbeat=plan.recipe is not None,
        total_steps=plan.total_steps,
    )
    console.print(f"run {plan.run_id} in {run_dir}", highlight=False)
    with ray_cluster(cfg.cluster) as connection:
        console.print(f"ray: {connection.address}", highlight=False)
        result = Supervisor(cfg.cluster, cfg.fault, spec, console).run()
    metrics = None
    result_file = run_dir / "result.json"
    if plan.recipe is not None and result_file.exists():
        metrics = json.loads(result_file.read_text())
    doc = {
        "kind": "launch",
        "config": OmegaConf.to_container(cfg, resolve=True),
        "run_id": plan.run_id,
        "job_id": plan.job_id,
        "ok": result.ok,
        "message": result.message,
        "attempts": outcome_dicts(result.attempts),
        "restarts": len(result.attempts) - 1,
        "blocklist": result.blocklist,
        "checkpoint_dir": str(plan.checkpoint_dir),
        "metrics": metrics,
    }
    path = run_dir / "launch.json"
    write_results(path, doc)
    summarize(console, plan, result, metrics)
    console.print(f"results: {path}", highlight=False)
    return 0 if result.ok else 1
