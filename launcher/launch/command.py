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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape

from gosok.launcher.config.allocation import describe_allocation
from gosok.launcher.config.launch_validate import validate_launch
from gosok.launcher.config.secrets import Redactor, current, redacted_config
from gosok.launcher.config.validate import raise_if
from gosok.launcher.launch.checkpoint import CheckpointStore
from gosok.launcher.launch.wandb_logger import redact, wandb_mode
from gosok.launcher.ranks.plan import backend_for, make_plan, synthetic_nodes
from gosok.launcher.ranks.script_runner import Program
from gosok.launcher.recipe.config import batch_arithmetic, deepspeed_json, recipe_peak_tflops
from gosok.launcher.results.run_dir import run_dir as current_run_dir
from gosok.launcher.results.store import atomic_write_bytes, write_results

RECIPE_MODULE = "gosok.launcher.recipe.train"


@dataclass
class LaunchPlan:
    """What the driver derived from the config, before anything runs."""

    run_dir: Path
    run_id: str
    job_id: str
    checkpoint_dir: Path
    program: Program
    cwd: str
    env: dict[str, str]
    rank_env: dict[str, dict[str, str]]
    recipe: dict[str, Any] | None
    batch: dict[str, int] | None
    total_steps: int | None


RECIPE_ENV = "GOSOK_RECIPE_CONFIG"


def default_checkpoint_root(cluster: Any, run_dir: Path, run_id: str) -> Path:
    """Where checkpoints go unless checkpoint.dir says: the run dir, or on a local cluster
    whose nodes are separate hosts, the directory standing for its shared storage."""
    if cluster.kind == "local" and cluster.isolation == "netns":
        from gosok.launcher.cluster.local import state_dir
        from gosok.launcher.cluster.netns import shared_dir

        return shared_dir(state_dir(), cluster.name, create=False) / run_id / "checkpoints"
    return run_dir / "checkpoints"


def printable(env: dict[str, str]) -> dict[str, str]:
    """The env as printed: the recipe's config is shown on its own below."""
    return {k: ("<the recipe config below>" if k == RECIPE_ENV else v) for k, v in env.items()}


def code_dir(job: Any, cwd: Path) -> Path | None:
    if job.kind != "script" or not job.code_dir:
        return None
    return Path(job.code_dir) if Path(job.code_dir).is_absolute() else cwd / job.code_dir


def shipped_code(script: Path, code_dir: Path | None = None) -> dict[str, Any]:
    """The code directory packed for every node (see ``ranks.shipping``)."""
    from dataclasses import asdict

    from gosok.launcher.errors import ConfigError
    from gosok.launcher.ranks.shipping import ShippingError, is_shared_temp, pack

    script = script.resolve()
    directory = (code_dir or script.parent).resolve()
    only = [script] if code_dir is None and is_shared_temp(directory) else None
    try:
        bundle = pack(directory, only=only)
    except (ShippingError, OSError) as err:
        key = "job.code_dir" if code_dir else "job.script"
        raise ConfigError([f"{key}={str(code_dir or script)!r}: {err}"]) from err
    return {
        "bundle": asdict(bundle),
        "bundle_script": str(script.relative_to(directory)),
    }


def stable_run_id(name: str, run_dir: Path) -> str:
    """Same run directory, same id: a relaunch into it resumes checkpoints and W&B run."""
    digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:10]
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:40] or "job"
    return f"{clean}-{digest}"


def torchelastic_env(run_id: str, max_restarts: int, ranks_per_node: int) -> dict[str, str]:
    """What torchrun's agent adds for its workers (torch's ``local_elastic_agent.py``):
    ``TORCHELASTIC_RUN_ID`` makes ``torch.distributed.is_torchelastic_launched()`` true, so
    frameworks (Lightning, Accelerate) take their torchrun path; the restart count is set per
    attempt by the supervisor. Values the user's shell sets win."""
    env = {
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
    }
    if ranks_per_node > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = "1"  # as torchrun does with several processes per node
    return env


def build_plan(cfg: Any, run_dir: Path, cwd: Path) -> LaunchPlan:
    job, cluster = cfg.job, cfg.cluster
    world = cluster.nodes * cluster.gpus_per_node
    run_id = cfg.run_id or stable_run_id(job.name, run_dir)
    job_id = cfg.job_id or job.name
    ckpt_dir = Path(cfg.checkpoint.dir or default_checkpoint_root(cluster, run_dir, run_id))
    ckpt_dir = ckpt_dir.resolve()
    env = {
        "GOSOK_RUN_ID": run_id,
        "GOSOK_JOB_ID": job_id,
        "GOSOK_RUN_DIR": str(run_dir),
        "GOSOK_CHECKPOINT_DIR": str(ckpt_dir),
        **torchelastic_env(run_id, cfg.fault.max_failures, cluster.gpus_per_node),
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
        program = Program(python, str(script), tuple(str(a) for a in job.args))
        env.update({str(k): str(v) for k, v in job.env.items()})
        env.update({name: os.environ[name] for name in job.env_from_host if name in os.environ})
        workdir = job.workdir or str(cwd)
    else:
        program = Program(sys.executable, RECIPE_MODULE, ("--config", f"env:{RECIPE_ENV}"), True)
        workdir = str(cwd)
        batch = batch_arithmetic(job, world)
        total_steps = job.steps
        ds = deepspeed_json(cfg.deepspeed, job, world, cluster.gpu)
        # The recipe is gosok's code: torch's C++ warnings about it (DDP's search for unused
        # parameters, kept on purpose for bit-exact resumes) are not the user's to act on.
        env["TORCH_CPP_LOG_LEVEL"] = os.environ.get("TORCH_CPP_LOG_LEVEL", "ERROR")
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
            "peak_tflops": recipe_peak_tflops(cluster.gpu, job.precision),
            "gpu": cluster.gpu,
        }
    if recipe is not None:
        # The job spec travels with the ranks' environment (through Ray), not a shared file.
        env[RECIPE_ENV] = json.dumps(recipe, separators=(",", ":"))
    return LaunchPlan(
        run_dir,
        run_id,
        job_id,
        ckpt_dir,
        program,
        workdir,
        env,
        rank_env,
        recipe,
        batch,
        total_steps,
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
    out(f"argv (every rank, no shell): {json.dumps(plan.program.fresh_argv())}")
    out(f"cwd: {plan.cwd}")
    if cfg.launch.fresh_process:
        out("rank start: fresh processes, started by each node's agent (launch.fresh_process=true)")
    else:
        out(f"rank start: warm, forked from each node's zygote with "
            f"{', '.join(warm_preload(cfg.job))} imported (fresh processes, with the reason, "
            "where it cannot serve the job)")  # fmt: skip
    shown = ranks.ranks if len(ranks.ranks) <= 16 else ranks.ranks[:4] + ranks.ranks[-2:]
    out("per-rank env:")
    for spec in shown:
        extra = sorted(plan.rank_env.get(str(spec.rank), {}))
        note = f" (+ {', '.join(extra)}=<redacted>)" if extra else ""
        out(f"  rank {spec.rank} (node_rank {spec.node_rank}, local_rank {spec.local_rank}): "
            f"{json.dumps(redact(printable(spec.env)), sort_keys=True)}{note}")  # fmt: skip
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
        f"startup_timeout_s={fault.startup_timeout_s}; a node is lost after "
        f"{fault.missed_reports} report(s) missed by {fault.report_timeout_s}s")  # fmt: skip
    out(f"logger: {cfg.logger.kind} mode={plan.env['WANDB_MODE']} run_id={plan.run_id} "
        f"group={plan.job_id} (rank 0 only, resume=allow)")  # fmt: skip
    out("dry run: nothing started, Ray not contacted")


def warm_preload(job: Any) -> tuple[str, ...]:
    """What the nodes' zygotes import before forking this job's ranks."""
    if job.kind != "recipe":
        return ("torch",)
    if job.strategy == "deepspeed":
        return ("torch", "deepspeed", RECIPE_MODULE)
    return ("torch", RECIPE_MODULE)


PROFILE_PHASES = (
    ("cli", "Python start, imports, Hydra compose, validation, run directory"),
    ("connect", "import ray and the supervisor, ray.init"),
    ("placement", "node check, placement group, node agents and their zygotes"),
    ("process start", "spawn request -> rank 0 runs its script"),
    ("script imports", "rank 0: script start -> init_process_group called"),
    ("process group", "rank 0: init_process_group"),
    ("first step", "rank 0: process group up -> first heartbeat"),
)


def launch_profile(marks: dict[str, float | None], outcome: Any) -> dict[str, Any]:
    """Seconds per phase from the command's start to rank 0's first step (None where a
    mark is missing: a script that sends no heartbeat has no first step)."""
    rank0 = outcome.timings.get("rank0", {})
    seen: dict[str, float] = {}
    for mark in rank0.get("marks", []):
        seen.setdefault(mark["event"], mark["unix"])
    times = [
        marks["process_start"],
        marks["connect_start"],
        marks["connected"],
        rank0.get("spawn_unix"),
        seen.get("start"),
        seen.get("pg_init_start"),
        seen.get("pg_init_end"),
        outcome.first_beat_unix,
    ]
    phases = {}
    for (name, _), begin, end in zip(PROFILE_PHASES, times[:-1], times[1:], strict=True):
        phases[name] = None if begin is None or end is None else round(end - begin, 4)
    first = outcome.first_beat_unix
    return {
        "phases_s": phases,
        "command_to_first_step_s": None if first is None else round(first - times[0], 4),
        "rank_start": outcome.rank_start,
        "details_s": {k: round(v, 4) for k, v in outcome.timings.items() if k.endswith("_s")},
        "rank0_marks": rank0.get("marks", []),
    }


def print_profile(console: Console, profile: dict[str, Any]) -> None:
    out = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    out(f"profile ({profile['rank_start'].get('mode', '?')} ranks; seconds):")
    for name, what in PROFILE_PHASES:
        value = profile["phases_s"][name]
        out(f"  {name:<15s}{'n/a' if value is None else f'{value:6.2f}':>7s}  {what}")
    total = profile["command_to_first_step_s"]
    out(f"  command -> first step: {'n/a (no heartbeat)' if total is None else f'{total:.2f}'}")
    details = ", ".join(f"{k} {v:.2f}" for k, v in profile["details_s"].items())
    if details:
        out(f"  inside: {details}")


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
    failed = f"[bold red]failed[/]: {escape(result.message)}"
    state = "[bold green]finished[/]" if result.ok else failed
    console.print(f"{state} after {len(result.attempts)} attempt(s)")
    if result.blocklist:
        console.print(f"blocklisted node(s): {[n[:12] for n in result.blocklist]}")


def recipe_checkpoint_key(plan: LaunchPlan) -> bytes | None:
    """The key that authenticates the recipe's checkpoint manifest (made on the first
    launch into this checkpoint directory, kept in the user's state directory); refuses,
    naming the manifest, checkpoints it did not write."""
    if plan.recipe is None:
        return None
    from gosok.launcher.cluster.local import state_dir
    from gosok.launcher.errors import ConfigError
    from gosok.launcher.launch.checkpoint import UnauthenticatedCheckpointError, checkpoint_key

    key = checkpoint_key(plan.checkpoint_dir, state_dir())
    try:
        CheckpointStore(plan.checkpoint_dir, key=key).read_manifest()
    except UnauthenticatedCheckpointError as err:
        raise ConfigError([f"checkpoint.dir: {err}"]) from None
    except (OSError, ValueError):
        pass  # unreadable: the supervisor says so and starts from scratch
    return key


def with_checkpoint_key(
    rank_env: dict[str, dict[str, str]], key: bytes | None, world: int
) -> dict[str, dict[str, str]]:
    """Every rank's private environment, with the checkpoint key (never printed)."""
    if key is None:
        return rank_env
    from gosok.launcher.launch.checkpoint import KEY_ENV

    return {str(r): {**rank_env.get(str(r), {}), KEY_ENV: key.hex()} for r in range(world)}


def launch_task(cfg: Any, console: Console) -> int:
    from gosok.launcher.cli import process_start_unix

    # Without /proc the profile's "cli" phase starts here, at the task.
    marks: dict[str, float | None] = {"process_start": process_start_unix() or time.time()}
    cwd = Path.cwd()
    raise_if(validate_launch(cfg, cwd))
    run_dir = current_run_dir()
    plan = build_plan(cfg, run_dir, cwd)
    if cfg.dry_run:
        print_plan(cfg, plan, console)
        return 0
    marks["connect_start"] = time.time()
    from gosok.launcher.cluster.connect import ray_cluster
    from gosok.launcher.launch.supervisor import RunSpec, Supervisor, outcome_dicts
    from gosok.launcher.ledger.recorder import LaunchRecorder

    write_recipe_config(plan)
    key = recipe_checkpoint_key(plan)
    spec = RunSpec(
        program=plan.program,
        cwd=plan.cwd,
        env=plan.env,
        rank_env=with_checkpoint_key(
            plan.rank_env, key, cfg.cluster.nodes * cfg.cluster.gpus_per_node
        ),
        checkpoint_key=key,
        log_root=run_dir / "logs",
        tee_ranks=list(cfg.tee_ranks),
        expect_heartbeat=plan.recipe is not None,
        total_steps=plan.total_steps,
        code=shipped_code(Path(plan.program.target), code_dir(cfg.job, cwd))
        if plan.recipe is None
        else {},
        preload=warm_preload(cfg.job),
        fresh_process=cfg.launch.fresh_process,
        profile=cfg.launch.profile,
    )
    console.print(f"run {plan.run_id} in {run_dir}", highlight=False)
    bundle = spec.code.get("bundle") or {}
    if bundle:
        left_out = list(bundle.get("left_out") or [])
        console.print(
            f"code: {bundle['files']} file(s) shipped to every node"
            + (f"; left out: {', '.join(left_out[:8])}" if left_out else ""),
            highlight=False, markup=False,
        )  # fmt: skip
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    recorder = LaunchRecorder.for_launch(cfg, plan, say)
    with recorder, ray_cluster(cfg.cluster) as connection:
        marks["connected"] = time.time()
        console.print(f"ray: {connection.address}", highlight=False)
        if plan.recipe is not None or cfg.checkpoint.dir:
            from gosok.launcher.errors import ConfigError
            from gosok.launcher.launch.storage import shared_storage_problem

            problem = shared_storage_problem(plan.checkpoint_dir)
            if problem:
                raise ConfigError([problem])
        result = Supervisor(cfg.cluster, cfg.fault, spec, console, observer=recorder).run()
    metrics = None
    if plan.recipe is not None and result.attempts:
        # Rank 0's last heartbeat carries the recipe's result, wherever rank 0 ran.
        metrics = (result.attempts[-1].rank0_beat or {}).get("result")
        if metrics:
            atomic_write_bytes(run_dir / "result.json", json.dumps(metrics, indent=1).encode())
    redactor = current().merge(Redactor.for_config(cfg))
    recorder.finish(result.ok, redactor.text(result.message), metrics)
    doc = {
        "kind": "launch",
        "config": redacted_config(cfg),
        "run_id": plan.run_id,
        "job_id": plan.job_id,
        "ok": result.ok,
        "message": result.message,
        "attempts": outcome_dicts(result.attempts),
        "restarts": len(result.attempts) - 1,
        "blocklist": result.blocklist,
        "checkpoint_dir": str(plan.checkpoint_dir),
        "metrics": metrics,
        "rank_start": result.attempts[-1].rank_start if result.attempts else {},
    }
    if cfg.launch.profile and result.attempts:
        doc["profile"] = launch_profile(marks, result.attempts[0])
    if cfg.audit.nonce is not None:
        doc["audit"] = {"nonce": cfg.audit.nonce}
    path = run_dir / "launch.json"
    doc = redactor.data(doc)  # failure messages quote rank logs, which may hold secrets
    write_results(path, doc)
    if cfg.sign.key:
        from gosok.launcher.results.signing import sign_file

        sign_file(path, cfg.sign.key)
        console.print(f"signed with {cfg.sign.key}", highlight=False)
    summarize(console, plan, result, metrics)
    if "profile" in doc:
        print_profile(console, doc["profile"])
    console.print(f"results: {path}", highlight=False)
    return 0 if result.ok else 1
