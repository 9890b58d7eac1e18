"""Benchmarks of gosok itself: its collective overhead against a bare loop, and its launch time
against torchrun.
"""
