"""Shared Triton helper: which output tile a GEMM program instance computes.

Imported only by the Triton kernel modules (see ``triton_env`` for why they load
lazily). ``tile_coordinates`` maps a flat program id to (pid_m, pid_n) in groups of
GROUP_M tile-rows, so programs that run together reuse the same B columns from L2.
"""

from __future__ import annotations

import triton
import triton.language as tl


def gemm_grid(m: int, n: int):
    """Launch grid for a GEMM kernel that maps one program to one BLOCK_M x BLOCK_N tile."""
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)


@triton.jit
def tile_coordinates(
    pid,
    M,
    N,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * tiles_n
    first_m = (pid // programs_per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_in_group = pid % programs_per_group
    pid_m = first_m + pid_in_group % group_rows
    pid_n = pid_in_group // group_rows
    return pid_m, pid_n
