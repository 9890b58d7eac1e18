"""Is Triton usable here, and in which mode? Checked without importing any kernel module.

Use: ``triton_problem(device)`` returns ``None`` when our Triton kernels can run on
``device`` and otherwise a sentence saying why not (the GEMM and HBM front ends turn
it into ``KernelUnsupportedError``).

Why this exists: ``triton.jit`` decides at *decoration* time whether a kernel is
compiled for the GPU or run by the Triton interpreter (``TRITON_INTERPRET=1``,
numpy on the CPU). Our kernels therefore live in their own modules
(``triton_fp8_gemm``, ``triton_bf16_gemm``, ``triton_triad``) that are imported only
when a Triton backend is first used; each records the mode it was decorated in as
``INTERPRETED``. CPU tensors need interpreter mode, so on CPU set
``TRITON_INTERPRET=1`` in the environment before the first Triton call of the process
(tests do it in a subprocess).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

import torch

KERNEL_MODULES: tuple[str, ...] = (
    "gosok.kernels.triton.fp8_gemm",
    "gosok.kernels.triton.bf16_gemm",
    "gosok.kernels.triton.triad",
)


@functools.cache
def triton_installed() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreter_requested() -> bool:
    """True when TRITON_INTERPRET is set truthy now (read the way Triton reads it)."""
    try:
        from triton import knobs
    except ImportError:  # triton < 3.4 has no knobs and reads the variable directly
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    return bool(knobs.runtime.interpret)


def _modes_of_loaded_kernel_modules() -> set[bool]:
    return {sys.modules[name].INTERPRETED for name in KERNEL_MODULES if name in sys.modules}


def triton_problem(device: torch.device) -> str | None:
    """Why our Triton kernels cannot run on ``device``, or None when they can."""
    if not triton_installed():
        return "the triton backend needs the triton package (pip install 'gosok[triton]')"
    if device.type == "cuda":
        return None
    if device.type != "cpu":
        return f"the triton backend runs on cuda, or on cpu under the interpreter, not {device}"
    loaded_modes = _modes_of_loaded_kernel_modules()
    if False in loaded_modes:
        return (
            "the Triton kernels were already decorated in compiled (GPU) mode in this process; "
            "CPU tensors need TRITON_INTERPRET=1 set before their first import"
        )
    if not loaded_modes and not interpreter_requested():
        return (
            "the triton backend on cpu runs only under the Triton interpreter: "
            "set TRITON_INTERPRET=1"
        )
    return None
