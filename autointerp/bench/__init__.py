"""Benchmarks: each prints the figures an issue names, as ratios measured in one run.

They live outside the stage packages so that a stage never imports a harness, and may use several stages.
"""
