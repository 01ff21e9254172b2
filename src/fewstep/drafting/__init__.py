"""Warm starts (context-aware initialization, arXiv 2512.19004): a small autoregressive drafter
answers first and its answer starts the diffusion canvas.

- ``drafter.py``: loading a causal LM as a drafter (once per process) and batched greedy drafting
  with its KV cache, returning per row the draft, its per-token probabilities, forwards and seconds;
- ``bridge.py``: drafter tokens -> text -> diffusion tokens -> canvas positions, and the drafter's
  probability of each diffusion token;
- ``warmstart.py``: the initial canvas (``inject`` / ``interpolate``, dropout ``rho`` seeded per
  prompt, calibrated injection) that the decode loop starts from.
"""
