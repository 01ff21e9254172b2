import itertools
import math
import random

import pytest
import torch

from fewstep.evaluation import calibration as cal


def brute_auroc(scores, labels):
    """P(score of a True item > score of a False item), ties half: every pair counted."""
    pairs = [(a, b) for a, b in itertools.product(
        [s for s, y in zip(scores, labels) if y], [s for s, y in zip(scores, labels) if not y])]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("scores,labels,expected", [
    ([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 1.0),  # perfect separation
    ([0.9, 0.8, 0.2, 0.1], [False, False, True, True], 0.0),  # perfectly reversed
    ([0.5, 0.5, 0.5, 0.5], [True, False, True, False], 0.5),  # all tied: no information
    ([0.3, 0.5, 0.5, 0.7], [False, True, False, True], 0.875),  # one tie across classes: 3.5 of 4 pairs
    ([0.2, 0.4, 0.4, 0.4, 0.9], [False, True, True, False, True], 5 / 6),  # 2 x (1 + 0.5) + 2 of 6 pairs
])
def test_auroc_by_hand(scores, labels, expected):
    assert cal.auroc(scores, labels) == pytest.approx(expected)
    assert cal.auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels))


def test_auroc_matches_every_pair_with_many_ties():
    rng = random.Random(0)
    scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(300)]
    labels = [rng.random() < s * 0.8 + 0.1 for s in scores]
    assert cal.auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels))
    flipped = cal.auroc(scores, [not y for y in labels])
    assert flipped == pytest.approx(1 - cal.auroc(scores, labels))


def test_auroc_degenerate():
    assert cal.auroc([0.1, 0.9], [True, True]) is None
    assert cal.auroc([0.1, 0.9], [False, False]) is None
    assert cal.auroc([], []) is None
    with pytest.raises(ValueError):
        cal.auroc([0.1], [True, False])


def test_reliability_bins_and_summary():
    scores = [0.05, 0.15, 0.95, 1.0, 1.0, 0.55]
    labels = [False, False, True, True, False, True]
    bins = cal.reliability_bins(scores, labels, n_bins=10)
    assert len(bins) == 10 and sum(b["count"] for b in bins) == len(scores)
    assert bins[-1]["count"] == 3 and bins[-1]["fraction_right"] == pytest.approx(2 / 3)  # 1.0 is in the last bin
    assert bins[3]["count"] == 0 and bins[3]["mean_p"] is None
    s = cal.summarise_scores(scores, labels, n_bins=10)
    assert (s["n"], s["right"], s["wrong"]) == (6, 3, 3)
    assert s["mean_p_right"] == pytest.approx((0.95 + 1.0 + 0.55) / 3)
    assert 0 <= s["ece"] <= 1


def test_reference_tokens_pad_with_eos(tiny_dlm):
    tok = tiny_dlm.tokenizer
    ids = cal.reference_tokens(tok, "7 + 5 = 12 . #### 12", 24, tiny_dlm.eos_id)
    assert len(ids) == 24 and ids[:8] == tok.encode("7 + 5 = 12 . #### 12", add_special_tokens=False)
    assert ids[8:] == [tiny_dlm.eos_id] * 16
    assert len(cal.reference_tokens(tok, "1 + 1 = 2 .", 3, tiny_dlm.eos_id)) == 3


PROMPTS = ["Mia has 7 pens . She buys 5 more . How many pens does Mia have ?",
           "Tom has 30 coins . He keeps half of them . He loses 4 . How many coins are left ?",
           "Ava owns 12 eggs . She triples them . How many eggs are left ?"]


def test_draft_canvas_is_the_inject_warm_start(tiny_dlm, tiny_ar):
    """Every draft position visible, exactly the canvas init=inject with rho 1 starts from."""
    from fewstep.config import DecodeConfig
    from fewstep.drafting.warmstart import warm_start

    canvas = cal.draft_canvas(tiny_dlm, tiny_ar, PROMPTS, 24)
    cfg = DecodeConfig(strategy="threshold", gen_length=24, block_length=24, drafter="tiny-ar",
                       init="inject", rho=1.0)
    ws = warm_start(tiny_dlm, PROMPTS, cfg)
    assert torch.equal(canvas.tokens, ws.init.tokens)
    assert canvas.drafter_nfe == ws.drafter_nfe
    assert ((canvas.drafter_probs > 0) == (canvas.tokens >= 0)).all()


def test_judge_is_one_forward_of_the_left_padded_batch(random_dlm_dir):
    import fewstep

    model = fewstep.load_model(random_dlm_dir)
    g = 6
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 40, (2, g), generator=gen)
    tokens[0, 4:] = -1  # masked positions: no judgement
    prompts = ["Mia has 7 pens .", "Tom has 30 coins . He keeps half of them . How many coins are left ?"]
    calls = []
    hook = model.module.register_forward_hook(lambda *a: calls.append(1))
    try:
        p = cal.judge(model, prompts, tokens)
    finally:
        hook.remove()
    assert len(calls) == 1 and p.shape == (2, g) and p.dtype == torch.float64
    assert torch.isnan(p[0, 4:]).all() and not torch.isnan(p[0, :4]).any() and not torch.isnan(p[1]).any()
    for i, prompt in enumerate(prompts):  # each row alone, no padding: the same probabilities
        ids = model.encode_prompt(prompt)
        canvas = torch.where(tokens[i] >= 0, tokens[i], model.mask_id)
        x = torch.tensor([ids + canvas.tolist()])
        logits = model.logits(input_ids=x, attention_mask=torch.ones_like(x)).float()[0, len(ids):]
        logits[:, model.mask_id] = -math.inf
        probs = torch.softmax(logits, -1, dtype=torch.float64)
        want = probs.gather(-1, tokens[i].clamp(min=0)[:, None]).squeeze(-1)
        seen = tokens[i] >= 0
        torch.testing.assert_close(p[i][seen], want[seen], atol=1e-5, rtol=1e-4)
