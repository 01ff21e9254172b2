"""Wall time spent inside model forwards, measured with forward hooks on the module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class ForwardTimer:
    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def _sync(self, module: torch.nn.Module) -> None:
        p = next(module.parameters(), None)
        if p is not None and p.device.type == "cuda":
            torch.cuda.synchronize(p.device)

    @contextmanager
    def attach(self, module: torch.nn.Module) -> Iterator[ForwardTimer]:
        def pre(mod, args, kwargs):
            self._sync(mod)
            self._start = time.perf_counter()

        def post(mod, args, kwargs, out):
            self._sync(mod)
            self.seconds += time.perf_counter() - self._start

        h1 = module.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = module.register_forward_hook(post, with_kwargs=True)
        try:
            yield self
        finally:
            h1.remove()
            h2.remove()
