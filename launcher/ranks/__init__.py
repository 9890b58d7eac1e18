"""Ranks on a node: the pure launch plan, the node agent and its zygote, the process each
rank runs (a script, or a benchmark's rank serving the driver's calls), code shipping,
heartbeats and node fingerprints.
"""
