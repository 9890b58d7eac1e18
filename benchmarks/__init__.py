"""gosok benchmarks: collective and compute benchmarks as registry entries."""
