"""Clusters: start, find and stop the local Ray cluster, connect to any Ray cluster, and the
``gosok cluster`` command.
"""
