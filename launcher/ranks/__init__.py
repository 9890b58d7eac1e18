"""Ranks on a Ray cluster: the pure launch plan, the placement group and rank actors, the
process each rank runs, heartbeats and node fingerprints.
"""
