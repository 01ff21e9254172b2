"""How often a warm start's revoked draft tokens were right: decode arith test problems with a
draft and prior skepticism, and count the revoked draft positions whose final token is the draft's
own token (the model took back a token it then wrote again) against those it changed.

    python scripts/revoked_draft_tokens.py --limit 200 --set strategy=llada --set rho=1.0
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from fewstep.config import override
from fewstep.engine import stream
from fewstep.tasks.base import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-dlm")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--set", dest="settings", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = fewstep.load_model(args.model)
    cfg = override(fewstep.DecodeConfig(strategy="llada", drafter="tiny-ar", init="inject", remask_threshold=0.5,
                                        confirm_threshold=0.5), args.settings)
    prompts = [e.prompt for e in get_task("arith").examples()][:args.limit]
    same = changed = 0
    for i in range(0, len(prompts), args.batch_size):
        revoked, up = None, None
        for up in stream(model, prompts[i:i + args.batch_size], cfg):
            assert up.event is not None
            revoked = up.event.revoked if revoked is None else revoked | up.event.revoked
        assert up is not None and up.event is not None and revoked is not None
        drafted = up.injected()
        if drafted is None:
            continue
        back = revoked & (drafted >= 0)
        same += int((back & (drafted == up.event.canvas)).sum())
        changed += int((back & (drafted != up.event.canvas)).sum())
    total = max(same + changed, 1)
    print(f"{cfg.strategy}, {len(prompts)} problems: {same + changed} draft tokens revoked; {same} "
          f"({same / total:.0%}) decoded again to the draft's own token, {changed} to another")


if __name__ == "__main__":
    main()
