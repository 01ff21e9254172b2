"""Warm starts (context-aware initialization, arXiv 2512.19004): a small autoregressive drafter
answers first and its answer starts the diffusion canvas.

- ``drafter.py``: loading a causal LM as a drafter (once per process, its one-time seconds kept
  apart) and batched greedy drafting, returning per row the draft, its per-token probabilities,
  forwards and seconds;
- ``lean.py``: the greedy loop drafting uses for Llama-family drafters (its own forward over the
  module's weights, a preallocated key/value cache, finished rows dropped); other architectures
  draft through transformers' ``generate()``;
- ``bridge.py``: drafter tokens -> text -> diffusion tokens -> canvas positions, and the drafter's
  probability of each diffusion token;
- ``warmstart.py``: the initial canvas (``inject`` / ``interpolate``, dropout ``rho`` seeded per
  prompt, calibrated injection) that the decode loop starts from.
"""
