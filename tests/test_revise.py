"""The revise stage inside the loop (warm starts): revoked draft tokens are re-decoded at the
strategy's own pace, no draft token is returned unjudged, the embedding prior decays per block,
and settings whose budget cannot judge every draft token are refused. Scripted models only."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep.decoding import canvas
from fewstep.decoding.loop import decode
from scripted import EOS, MASK, recording_model, scripted_model


def run(model, cfg, tokens):
    return list(decode(model, [[3]], cfg, init=canvas.CanvasInit(tokens=torch.tensor([tokens]))))


def test_llada_redecodes_revoked_draft_tokens_at_its_own_pace():
    """All eight positions start as draft tokens, four of them wrong. The fixed schedule planned
    nothing (no position was masked when the block started); the four revoked at the first forward
    are spread over the steps left: one per step, not all four at the block's last step."""
    model = scripted_model(gen_length=8, answer_len=6, p=0.9)  # wants 10..15, EOS, EOS
    cfg = fewstep.DecodeConfig(strategy="llada", gen_length=8, block_length=8, steps=8, drafter="x", init="inject",
                               remask_threshold=0.5)
    events = run(model, cfg, [10, 20, 12, 21, 14, 22, EOS, 23])
    assert events[0].revoked[0].nonzero().squeeze(1).tolist() == [1, 3, 5, 7]
    assert [int(e.committed.sum()) for e in events[1:-1]] == [1, 1, 1]  # one re-decoded position per step
    last = events[-1]
    assert last.canvas[0].tolist() == [10, 11, 12, 13, 14, 15, EOS, EOS]
    assert last.nfe.item() == 5  # one judging forward, four decoding ones (main: 2, the last committing 4 at once)


@pytest.mark.parametrize("settings", [dict(strategy="llada", steps=1), dict(strategy="cad", max_steps_per_block=1),
                                      dict(strategy="threshold")])
def test_no_draft_token_is_returned_unjudged(settings):
    """A budget of one step per block: that step is the block's last and still runs the revise
    stage; the wrong draft token (model probability 0.003) is rejected and takes the step's candidate."""
    model = scripted_model(gen_length=4, answer_len=2, p=0.9)  # wants 10, 11, EOS, EOS
    cfg = fewstep.DecodeConfig(gen_length=4, block_length=4, drafter="x", init="inject", remask_threshold=0.5,
                               **settings)
    last = run(model, cfg, [10, 20, EOS, EOS])[-1]
    assert last.canvas[0].tolist() == [10, 11, EOS, EOS]
    assert int(last.counts["revoked"][0]) == 1 and int(last.counts["injected"][0]) == 4
    assert int(last.counts["confirmed"][0]) == 3  # the rejected one holds the candidate: not a kept draft token


def test_a_budget_that_cannot_judge_every_group_is_refused():
    with pytest.raises(fewstep.ConfigError, match=r"verify_groups \(2\) exceeds llada's 1 step per block"):
        fewstep.DecodeConfig(strategy="llada", steps=1, drafter="x", init="inject", verify_groups=2)
    with pytest.raises(fewstep.ConfigError, match="verify_groups"):
        fewstep.DecodeConfig(strategy="cad", max_steps_per_block=2, drafter="x", init="inject", verify_groups=3)
    fewstep.DecodeConfig(strategy="cad", max_steps_per_block=2, drafter="x", init="inject", verify_groups=2)


def test_every_group_is_judged_before_the_block_completes():
    """verify_groups=2 and two steps per block: each half of the draft is judged at one of them."""
    model = scripted_model(gen_length=4, answer_len=2, p=0.9)
    cfg = fewstep.DecodeConfig(strategy="llada", steps=2, gen_length=4, block_length=4, drafter="x", init="inject",
                               remask_threshold=0.5, verify_groups=2)
    events = run(model, cfg, [20, 11, EOS, 21])  # position 0 is judged at step 0, position 3 at step 1
    assert events[0].revoked[0].tolist() == [True, False, False, False]
    last = events[-1]
    assert last.canvas[0].tolist() == [10, 11, EOS, EOS] and int(last.counts["revoked"][0]) == 2


def test_embedding_prior_decays_within_each_block():
    """alpha_decay counts the steps of the block: every block starts from alpha."""
    model = recording_model(gen_length=4, answer_len=2, p=0.9)
    seen = model.module.seen
    table = model.module.embed_tokens.weight.detach()
    target = table[torch.tensor([[10, 11, 12, 13]])]
    init = canvas.CanvasInit(embeds=target, embed_mask=torch.ones(1, 4, dtype=torch.bool), alpha=0.5,
                             alpha_decay=0.5)
    cfg = fewstep.DecodeConfig(gen_length=4, block_length=2, steps=4)
    events = list(decode(model, [[3]], cfg, init=init))
    assert len(seen) == 4 and [e.block for e in events] == [0, 0, 1, 1]
    second = int((~events[0].committed[0, :2]).nonzero()[0])  # block 0's position still open at its step 1
    torch.testing.assert_close(seen[1][0, 1 + second], 0.75 * table[MASK] + 0.25 * target[0, second])
    block_start = seen[2][0, 1 + 2:1 + 4]  # block 1's first forward (global step 2): the weight is alpha again
    torch.testing.assert_close(block_start, 0.5 * table[MASK] + 0.5 * target[0, 2:4])
