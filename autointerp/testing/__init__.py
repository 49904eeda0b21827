"""Test harnesses shared by tests and benchmarks: an OpenAI-protocol test server, synthetic and planted stores.

Outside the stage packages on purpose: a harness may drive several stages; a stage never imports one.
"""
