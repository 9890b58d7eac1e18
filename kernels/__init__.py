"""gosok kernels: FP8/BF16 GEMM and HBM bandwidth kernels.

Use ``from gosok.kernels import fp8_gemm, bf16_gemm, select_backend`` (or the modules:
``quant`` for FP8 quantisation and the scale convention, ``gemm`` for the GEMM
interface and backend choice, ``hbm`` for copy/triad bandwidth kernels). Importing
this package never imports the Triton kernel modules; they load on first use of a
Triton backend (see ``triton_env`` for why).
"""

from .errors import KernelUnsupportedError
from .gemm import bf16_gemm, fp8_gemm, fp8_gemm_quantized, select_backend
from .hbm import device_copy, hbm_bytes, make_buffers, stream_triad
from .quant import RECIPES, dequantize_operands, quantize_operands

__all__ = [
    "RECIPES",
    "KernelUnsupportedError",
    "bf16_gemm",
    "dequantize_operands",
    "device_copy",
    "fp8_gemm",
    "fp8_gemm_quantized",
    "hbm_bytes",
    "make_buffers",
    "quantize_operands",
    "select_backend",
    "stream_triad",
]
