"""gosok's own Triton kernels (FP8/BF16 GEMM, STREAM triad). Import lazily: see ``env``."""
