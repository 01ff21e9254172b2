"""Bridges to other tools. Each submodule imports its tool only when it is imported itself:
``import fewstep`` never loads them.

- :mod:`fewstep.integrations.lm_eval`: the ``fewstep`` model of EleutherAI's lm-evaluation-harness.
"""
