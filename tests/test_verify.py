"""One-forward verification with token editing (``reject=edit``): a rejected draft token takes the
step's candidate at once, committed; counts report it as revoked and edited. Scripted models only
(hand-made logits: the model wants 10 + i at position i < answer_len, EOS after, with probability p)."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep.decoding import canvas
from fewstep.decoding.loop import decode
from fewstep.engine import results_from_event
from scripted import EOS, MASK, scripted_model

WANTED = [10, 11, 12, 13, EOS, EOS]
ONE_WRONG = [10, 20, 12, 13, EOS, EOS]  # position 1: the model gives 20 probability 0.1 / 31


def run(cfg, tokens, p=0.9):
    model = scripted_model(gen_length=len(tokens), answer_len=4, p=p)
    events = list(decode(model, [[3]] * len(tokens[:1]), cfg, init=canvas.CanvasInit(tokens=torch.tensor([tokens]))))
    assert events[-1].done and sum(e.done for e in events) == 1
    return events


def verify(strategy="threshold", **kw):
    """Judge every draft token at the first forward: remask_threshold = confirm_threshold."""
    settings = dict(gen_length=6, block_length=6, drafter="x", init="inject", remask_threshold=0.5,
                    confirm_threshold=0.5)
    return fewstep.DecodeConfig(strategy=strategy, **{**settings, **kw})


def counts(event):
    return {k: int(v[0]) for k, v in event.counts.items()}


@pytest.mark.parametrize("strategy", ["threshold", "llada", "cad"])
def test_edit_resolves_a_draft_with_one_wrong_token_in_one_forward(strategy):
    events = run(verify(strategy, reject="edit"), ONE_WRONG)
    assert len(events) == 1
    first = events[0]
    assert first.canvas[0].tolist() == WANTED and first.nfe.item() == 1
    assert first.revoked[0].tolist() == [False, True, False, False, False, False]
    assert first.committed[0].all()  # the edited position is committed at the step, with the others
    assert first.committed_at[0].tolist() == [0] * 6
    assert counts(first) == {"injected": 6, "confirmed": 5, "revoked": 1, "edited": 1}


def test_mask_decodes_the_rejected_token_again_from_the_next_forward():
    events = run(verify(reject="mask"), ONE_WRONG)
    assert events[0].canvas[0].tolist() == [10, MASK, 12, 13, EOS, EOS]
    assert events[0].committed[0].tolist() == [True, False, True, True, True, True]
    last = events[-1]
    assert last.canvas[0].tolist() == WANTED and last.nfe.item() == 2
    assert counts(last) == {"injected": 6, "confirmed": 5, "revoked": 1}  # edited: counted with reject=edit only


def test_edit_min_confidence_falls_back_to_mask():
    """The candidate's probability is 0.9: 0.95 sends the rejected token back to mask, 0.9 edits it."""
    masked = run(verify(reject="edit", edit_min_confidence=0.95), ONE_WRONG)
    assert masked[0].canvas[0, 1].item() == MASK and masked[-1].nfe.item() == 2
    assert counts(masked[-1])["edited"] == 0 and masked[-1].canvas[0].tolist() == WANTED
    edited = run(verify(reject="edit", edit_min_confidence=0.9), ONE_WRONG)
    assert edited[-1].nfe.item() == 1 and counts(edited[-1])["edited"] == 1


def test_verify_prefix_edits_the_first_failure_and_decodes_the_suffix_again():
    """The first failure at position 1 revokes it and everything after; it takes its candidate at
    once, the rest of the suffix goes back to mask and is decoded from the next forward (its
    candidates saw the rejected draft)."""
    events = run(verify(reject="edit", verify_prefix=True), ONE_WRONG)
    assert events[0].canvas[0, 1].item() == WANTED[1] and (events[0].canvas[0, 2:] == MASK).all()
    last = events[-1]
    assert last.canvas[0].tolist() == WANTED and last.nfe.item() == 2
    assert counts(last) == {"injected": 6, "confirmed": 1, "revoked": 5, "edited": 1}


def test_the_strategy_continues_with_what_is_still_masked():
    """A partial draft: the first forward judges positions 0 and 1 (one edited) and the policy
    commits what it wants of the masked rest; no forward is spent on a block with nothing left."""
    events = run(verify("llada", reject="edit", steps=6), [10, 20, -1, -1, -1, -1])
    first, last = events[0], events[-1]
    assert first.canvas[0, :2].tolist() == [10, 11] and first.committed[0, :2].all()
    assert last.canvas[0].tolist() == WANTED
    assert last.nfe.item() == len(events) and not last.state[0].eq(canvas.MASKED).any()
    assert counts(last) == {"injected": 2, "confirmed": 1, "revoked": 1, "edited": 1}


def test_every_block_is_judged_by_one_forward():
    events = run(verify(reject="edit", block_length=3), ONE_WRONG)
    assert [e.block for e in events] == [0, 1] and events[-1].nfe.item() == 2
    assert events[-1].canvas[0].tolist() == WANTED


def test_with_verify_groups_the_edit_comes_from_the_forward_that_saw_the_position_masked():
    events = run(verify("llada", reject="edit", steps=2, verify_groups=2), [10, 11, 12, 20, EOS, EOS])
    assert events[0].revoked[0].tolist() == [False] * 6  # position 3 is in group 1: judged at step 1
    assert events[1].revoked[0].tolist() == [False, False, False, True, False, False]
    assert events[-1].canvas[0].tolist() == WANTED and events[-1].nfe.item() == 2
    assert counts(events[-1])["edited"] == 1


def test_bounded_revision_still_sends_committed_tokens_back_to_mask():
    """reject concerns draft tokens: a committed token below revise_threshold is masked, not edited."""
    cfg = fewstep.DecodeConfig(strategy="llada", gen_length=4, block_length=4, steps=4, revise_threshold=0.95,
                               reject="edit")
    model = scripted_model(gen_length=4, answer_len=2, p=0.9)
    events = list(decode(model, [[3]], cfg))
    assert int(events[-1].counts["revoked"][0]) > 0 and int(events[-1].counts["edited"][0]) == 0


class _Words:
    """Enough of a model for results_from_event: ids as text, the answer up to EOS."""

    def decode(self, ids):
        return " ".join(map(str, ids))

    def answer_length(self, ids):
        return ids.index(EOS) if EOS in ids else len(ids)


def test_results_report_edits():
    result = results_from_event(_Words(), run(verify(reject="edit"), ONE_WRONG)[-1])[0]
    assert (result.injected, result.confirmed, result.revoked, result.edited, result.nfe) == (6, 5, 1, 1, 1)


def test_reject_settings_are_checked():
    with pytest.raises(fewstep.ConfigError, match="reject must be one of mask, edit"):
        fewstep.DecodeConfig(reject="replace")
    with pytest.raises(fewstep.ConfigError, match=r"edit_min_confidence must be in \[0, 1\]"):
        fewstep.DecodeConfig(edit_min_confidence=1.5)
