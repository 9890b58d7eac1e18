"""Derived settings of the recipe: batch arithmetic, the generated DeepSpeed JSON and the
peak TFLOPS used for MFU. Pure functions of the composed config (no torch, no Ray).

Use: ``batch = batch_arithmetic(job, world)``; ``deepspeed_json(ds, job, world, gpu)``.
"""

from __future__ import annotations

from typing import Any

from gosok.launcher.config.catalogue import gpu_spec, peak_tflops


def batch_arithmetic(job: Any, world: int) -> dict[str, int]:
    """global batch = micro x grad_accum x data-parallel world (sequences, then tokens)."""
    global_batch = job.micro_batch * job.grad_accum * world
    return {
        "micro_batch_per_rank": job.micro_batch,
        "grad_accum": job.grad_accum,
        "world_size": world,
        "global_batch_sequences": global_batch,
        "tokens_per_step": global_batch * job.model.seq_len,
    }


def batch_problems(ds: Any, job: Any, world: int, prefix: str = "deepspeed") -> list[str]:
    expected = job.micro_batch * job.grad_accum * world
    if ds.train_batch_size is not None and ds.train_batch_size != expected:
        return [
            f"{prefix}.train_batch_size={ds.train_batch_size} but job.micro_batch "
            f"({job.micro_batch}) x job.grad_accum ({job.grad_accum}) x world size ({world}) "
            f"= {expected}; fix one of them or leave train_batch_size null"
        ]
    return []


def deepspeed_json(ds: Any, job: Any, world: int, gpu: str) -> dict[str, Any]:
    """The DeepSpeed config dict, generated from the Hydra ``deepspeed`` group and the job."""
    torch_adam = ds.torch_adam if ds.torch_adam is not None else gpu == "cpu"
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": ds.contiguous_gradients,
        "reduce_bucket_size": ds.reduce_bucket_size,
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_batch_size": job.micro_batch * job.grad_accum * world,
        "train_micro_batch_size_per_gpu": job.micro_batch,
        "gradient_accumulation_steps": job.grad_accum,
        "gradient_clipping": job.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": job.lr, "weight_decay": job.weight_decay, "torch_adam": torch_adam},
        },
        "bf16": {"enabled": job.precision == "bf16"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def recipe_peak_tflops(gpu: str, precision: str) -> float | None:
    """Peak per GPU for MFU: bf16 Tensor Core for bf16; TF32 for fp32 on GPUs, fp32 on CPU."""
    spec = gpu_spec(gpu)
    if precision == "bf16":
        return peak_tflops(spec, "bf16")
    return peak_tflops(spec, "fp32" if gpu == "cpu" else "tf32")
