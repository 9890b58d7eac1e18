"""The built-in training recipe: a torchrun-style script that trains ``TinyGPT`` on
generated Markov-chain data with DDP, FSDP or DeepSpeed ZeRO, resuming from the latest
checkpoint in ``$GOSOK_CHECKPOINT_DIR``.

``gosok launch job=recipe`` passes the resolved config in ``$GOSOK_RECIPE_CONFIG``
(``--config env:GOSOK_RECIPE_CONFIG``; nothing is read from a shared directory) and runs
this module on every rank; it also runs under plain torchrun:
``torchrun --standalone --nproc-per-node 2 -m gosok.launcher.recipe.train --config recipe.json``.
Per step it sends a heartbeat (step, loss, tokens/s); rank 0 prints every ``log_every``
steps, logs to W&B, and sends the final metrics (loss, tokens/s, step time, MFU) with its
last heartbeat (and to ``result_file`` when the config names one).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gosok.launcher.launch.checkpoint import CheckpointStore, disk_full, key_from_env, load_state
from gosok.launcher.launch.wandb_logger import RankZeroLogger
from gosok.launcher.ranks.heartbeat import beat
from gosok.launcher.recipe.data import MarkovData
from gosok.launcher.recipe.model import TinyGPT, flops_per_token, param_count
from gosok.launcher.results.store import atomic_write_bytes

CHECKPOINT_LOG = 16  # saves listed in each heartbeat


class Trainer:
    """One strategy's model, optimizer, step and checkpoint save/load."""

    def __init__(self, cfg: dict[str, Any], device: torch.device) -> None:
        job = cfg["job"]
        self.cfg, self.job, self.device = cfg, job, device
        self.strategy = job["strategy"]
        self.bf16 = job["precision"] == "bf16"
        torch.manual_seed(job["seed"])
        model = TinyGPT(job["model"]).to(device)
        self.n_params = param_count(model)
        if self.strategy == "deepspeed":
            import deepspeed

            # DeepSpeed announces the ops it builds on stdout and calls a torch collective
            # torch has deprecated: neither is the user's to act on in gosok's own recipe.
            warnings.filterwarnings(
                "ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                category=FutureWarning,
            )  # fmt: skip
            said = io.StringIO()
            with contextlib.redirect_stdout(said):
                self.engine, _, _, _ = deepspeed.initialize(
                    model=model, model_parameters=model.parameters(), config=cfg["deepspeed"]
                )
            for line in said.getvalue().splitlines():
                if not line.endswith("built successfully"):
                    print(line, flush=True)
            self.model = self.engine
            return
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16) if self.bf16 else None
            kwargs = {"mp_policy": policy} if policy else {}
            for block in model.blocks:
                fully_shard(block, **kwargs)
            self.model = fully_shard(model, **kwargs)
        else:
            ids = [device.index] if device.type == "cuda" else None
            # DDP rebuilds its gradient buckets after the first step unless it must look
            # for unused parameters; a restarted run would then sum gradients in another
            # order than the uninterrupted one. Keeping the first layout makes a resume
            # from a checkpoint reproduce the uninterrupted run bit for bit.
            self.model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=True
            )
        self.optim = torch.optim.AdamW(
            self.model.parameters(), lr=job["lr"], weight_decay=job["weight_decay"]
        )

    def autocast(self):
        if self.bf16 and self.strategy == "ddp":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        accum = len(batches)
        if self.strategy == "deepspeed":
            for x, y in batches:
                loss = self.engine(x, y)
                self.engine.backward(loss)
                self.engine.step()
                total += loss.detach().float() / accum
            return total
        for index, (x, y) in enumerate(batches):
            sync = index == accum - 1
            no_sync = getattr(self.model, "no_sync", None)
            ctx = no_sync() if (no_sync and not sync) else contextlib.nullcontext()
            if self.strategy == "fsdp":
                self.model.set_requires_gradient_sync(sync)
            with ctx, self.autocast():
                loss = self.model(x, y) / accum
            loss.backward()
            total += loss.detach().float()
        if self.job["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.job["grad_clip"])
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        return total

    def save(self, store: CheckpointStore, step: int, meta: dict[str, Any]) -> None:
        rank = dist.get_rank()
        if rank == 0:
            store.begin(step)
        dist.barrier()
        tmp = store.tmp_path(step)
        try:
            if self.strategy == "deepspeed":
                self.engine.save_checkpoint(str(tmp), tag="ds", save_latest=False)
            elif self.strategy == "fsdp":
                from torch.distributed.checkpoint.state_dict import get_state_dict

                model_sd, optim_sd = get_state_dict(self.model, self.optim)
                torch.save({"model": model_sd, "optim": optim_sd}, tmp / f"shard-{rank}.pt")
                os.chmod(tmp / f"shard-{rank}.pt", 0o600)
            elif rank == 0:
                state = {"model": self.model.module.state_dict(), "optim": self.optim.state_dict()}
                torch.save(state, tmp / "state.pt")
                os.chmod(tmp / "state.pt", 0o600)
        except (OSError, RuntimeError) as err:  # torch.save says RuntimeError on a full disk
            full = disk_full(store.root, err)
            # Free what was written of this step; the committed checkpoints are untouched.
            shutil.rmtree(tmp, ignore_errors=True)
            if full is None:
                raise
            raise OSError(errno.ENOSPC, f"writing checkpoint step {step}: {full}") from err
        dist.barrier()
        if rank == 0:
            store.commit(step, meta)
        dist.barrier()

    def own_files(self, rank: int) -> list[str] | None:
        """The checkpoint files this rank reads (None: DeepSpeed's own layout, all files)."""
        if self.strategy == "fsdp":
            return [f"shard-{rank}.pt"]
        if self.strategy == "deepspeed":
            return None
        return ["state.pt"]

    def load(self, path: Path) -> None:
        if self.strategy == "deepspeed":
            self.engine.load_checkpoint(str(path), tag="ds")
        elif self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import set_state_dict

            shard = torch.load(path / f"shard-{dist.get_rank()}.pt", weights_only=True)
            set_state_dict(
                self.model,
                self.optim,
                model_state_dict=shard["model"],
                optim_state_dict=shard["optim"],
            )
        else:
            from gosok.launcher.launch.checkpoint import CheckpointEntry

            state = load_state(CheckpointEntry(0, path))
            self.model.module.load_state_dict(state["model"])
            self.optim.load_state_dict(state["optim"])


RESUME_ENV = "GOSOK_RESUME_STEP"


def resume_entry(store: CheckpointStore, own_files: list[str] | None) -> Any:
    """The checkpoint this rank loads: the step the driver chose (``$GOSOK_RESUME_STEP``,
    the same on every rank), with only this rank's own files verified; without gosok's
    driver (plain torchrun), the newest checkpoint that verifies."""
    chosen = os.environ.get(RESUME_ENV)
    if chosen is None:
        return store.latest()
    if int(chosen) == 0:
        return None
    entry = store.entry(int(chosen))
    if entry is None or not store.verify(entry, own_files):
        raise RuntimeError(
            f"checkpoint step {chosen} chosen by the driver is missing or damaged on this "
            f"rank ({store.root}): files {own_files or 'all'} do not match the manifest"
        )
    return entry


STALE_LOCK_S = 600.0  # building DeepSpeed's ops takes about a minute


def clear_stale_build_locks(now: float | None = None) -> list[Path]:
    """Remove torch extension build locks left by a killed attempt: a lock older than any
    build takes would otherwise make every later attempt wait on it."""
    root = Path(
        os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    )
    now = time.time() if now is None else now
    removed = []
    for lock in root.glob("*/*/lock") if root.is_dir() else []:
        try:
            if now - lock.stat().st_mtime > STALE_LOCK_S:
                lock.unlink()
                removed.append(lock)
        except OSError:
            continue
    for path in removed:
        print(f"gosok: removed a stale extension build lock {path}", flush=True)
    return removed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    source = args.config
    if source.startswith("env:"):
        cfg = json.loads(os.environ[source[4:]])
    else:
        cfg = json.loads(Path(source).read_text())
    job = cfg["job"]
    use_cuda = torch.cuda.is_available() and cfg.get("gpu", "cpu") != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if job["strategy"] == "deepspeed" and not use_cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if job["strategy"] == "deepspeed" and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        clear_stale_build_locks()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device(f"cuda:{torch.cuda.current_device()}") if use_cuda else torch.device("cpu")
    )
    ckpt = cfg["checkpoint"]
    store = CheckpointStore(
        os.environ.get("GOSOK_CHECKPOINT_DIR") or ckpt["dir"], ckpt["keep_last"], key_from_env()
    )
    trainer = Trainer(cfg, device)
    start_step = 0
    entry = resume_entry(store, trainer.own_files(rank))
    if entry is not None:
        trainer.load(entry.path)
        start_step = entry.step
    restarts = int(os.environ.get("GOSOK_RESTART_COUNT", "0"))
    model_cfg = job["model"]
    data = MarkovData(model_cfg["vocab_size"], model_cfg["seq_len"], job["data"]["seed"])
    logger = RankZeroLogger(
        cfg["logger"],
        cfg["run_id"],
        cfg["job_id"],
        rank,
        {"job": job, "world_size": world, "deepspeed": cfg.get("deepspeed")},
        cfg["run_dir"],
    )
    tokens_per_step = world * job["micro_batch"] * job["grad_accum"] * model_cfg["seq_len"]
    flops_token = flops_per_token(model_cfg, trainer.n_params)
    peak = cfg.get("peak_tflops")
    if rank == 0:
        where = f"resumed from step {start_step} ({entry.path})" if entry else "from scratch"
        print(
            f"recipe {job['name']}: {trainer.n_params} params, strategy={job['strategy']}, "
            f"precision={job['precision']}, world={world}, {where}, restarts={restarts}",
            flush=True,
        )
    step_times: list[float] = []
    # Sent with every heartbeat for the goodput ledger: where this attempt resumed, when its
    # first step ended and how long its checkpoint saves blocked training.
    report = {"resumed_from_step": start_step, "checkpoints": 0, "checkpoint_s": 0.0}
    loss_value = float(entry.meta.get("loss", "nan")) if entry else float("nan")
    for step in range(start_step + 1, job["steps"] + 1):
        start = time.perf_counter()
        batches = [
            tuple(t.to(device) for t in data.batch(step, micro, rank, job["micro_batch"]))
            for micro in range(job["grad_accum"])
        ]
        loss = trainer.train_step(batches)
        dist.all_reduce(loss)
        loss_value = float(loss) / world
        elapsed = time.perf_counter() - start
        step_times.append(elapsed)
        tokens_per_s = tokens_per_step / elapsed
        report.setdefault("first_step_unix", time.time())
        beat(step, loss=loss_value, tokens_per_s=tokens_per_s, restarts=restarts, **report)
        if rank == 0 and (step % job["log_every"] == 0 or step == job["steps"]):
            mfu = flops_token * tokens_per_s / world / 1e12 / peak if peak else None
            print(
                f"step {step}/{job['steps']} loss {loss_value:.4f} tokens/s {tokens_per_s:.0f} "
                f"step_time {elapsed * 1e3:.1f} ms" + (f" mfu {mfu:.2%}" if mfu else ""),
                flush=True,
            )
            logger.log(
                {"loss": loss_value, "tokens_per_s": tokens_per_s, "restarts": restarts}, step
            )
        if step % ckpt["every_steps"] == 0 or step == job["steps"]:
            saving = time.time()
            trainer.save(store, step, {"loss": loss_value, "world_size": world})
            report["checkpoint_unix"] = time.time()
            report["checkpoint_step"] = step
            report["checkpoints"] += 1
            report["checkpoint_s"] += report["checkpoint_unix"] - saving
            # The last few saves, so a reader polling slower than saves happen loses none.
            log = report.setdefault("checkpoint_log", [])
            log.append([step, report["checkpoint_unix"], report["checkpoint_unix"] - saving])
            del log[:-CHECKPOINT_LOG]
            beat(step, loss=loss_value, tokens_per_s=tokens_per_s, restarts=restarts, **report)
    if rank == 0:
        timed = step_times[1:] or step_times
        step_s = sum(timed) / len(timed) if timed else float("nan")
        tps = tokens_per_step / step_s if timed else float("nan")
        achieved = flops_token * tps / world / 1e12
        result = {
            "final_loss": loss_value,
            "final_step": job["steps"],
            "resumed_from_step": start_step,
            "restarts": restarts,
            "world_size": world,
            "params": trainer.n_params,
            "tokens_per_s": tps,
            "step_time_seconds": step_s,
            "achieved_tflops_per_gpu": achieved,
            "peak_tflops_per_gpu": peak,
            "mfu": achieved / peak if peak else None,
            "data_entropy_nats": data.entropy_nats(),
        }
        if cfg.get("result_file"):
            atomic_write_bytes(cfg["result_file"], (json.dumps(result, indent=1) + "\n").encode())
        # The result travels back to the driver with rank 0's last heartbeat.
        beat(job["steps"], loss=loss_value, restarts=restarts, result=result, **report)
        logger.finish()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
