"""The collective benchmark (nccl-tests' method): one typed record per collective, the per-rank
step, the sweep driver, its table and plot.
"""
