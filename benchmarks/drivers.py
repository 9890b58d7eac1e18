"""Imports every benchmark driver so its ``@bench_driver`` registration runs.

Add a line here when a new ``bench=<name>`` or ``suite=<name>`` driver module appears.
"""

from gosok.benchmarks import (
    collectives_driver,  # noqa: F401
    compute_driver,  # noqa: F401  (bench=gemm, bench=hbm)
    suite_driver,  # noqa: F401  (suite=quick|acceptance|audit)
)
