"""The compute benchmark: GEMM (BF16, FP8 recipes) and HBM bandwidth, one per-rank step shared
with the acceptance suite.
"""
