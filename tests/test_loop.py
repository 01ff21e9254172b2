"""Loop-level guarantees: termination, no mask left, early stop, per-row NFE, batch invariance."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep.decoding.loop import decode
from fewstep.tasks import arith
from scripted import EOS, MASK, Out, Scripted, final, scripted_model


@pytest.mark.parametrize("strategy", ["llada", "threshold", "factor", "cad"])
def test_every_strategy_fills_the_canvas(strategy):
    model = scripted_model()
    steps = {"steps": 16} if strategy == "llada" else {}
    cfg = fewstep.DecodeConfig(strategy=strategy, gen_length=16, block_length=4, **steps)
    ev = final(model, [[3, 4, 5], [6]], cfg)[-1]
    assert not (ev.canvas == MASK).any()
    assert ev.canvas[0, :5].tolist() == [10, 11, 12, 13, 14]
    assert (ev.committed_at >= 0).all()


def test_threshold_saves_forwards_on_confident_model():
    model = scripted_model(p=0.95)
    base = fewstep.DecodeConfig(gen_length=16, block_length=4, steps=16)
    llada_nfe = final(model, [[3]], base)[-1].nfe.item()
    thr = final(model, [[3]], fewstep.DecodeConfig(strategy="threshold", threshold=0.9, gen_length=16,
                                                   block_length=4))[-1]
    assert llada_nfe == 16 and thr.nfe.item() == 4  # one forward per block


def test_cad_eos_guard_never_leaves_masks_nor_wastes_forwards():
    """The corner case: every candidate of the block is EOS while progress is below the guard, so
    CAD's k is 0. The canvas would not change before the block's last step, so the loop completes
    the block at once: one forward per block, not the whole budget (main spent 3 per block)."""
    model = scripted_model(gen_length=16, answer_len=0, p=0.99)  # the model only ever wants EOS
    cfg = fewstep.DecodeConfig(strategy="cad", gen_length=16, block_length=4, eos_min_progress=0.9,
                               max_steps_per_block=3)
    events = final(model, [[3]], cfg)
    ev = events[-1]
    assert not (ev.canvas == MASK).any() and (ev.canvas == EOS).all()
    assert ev.nfe.item() == 4  # no forward that commits nothing
    committed_per_step = [int(e.committed.sum()) for e in events]
    assert committed_per_step == [4] * 4


def test_early_stop_fills_eos_without_forwards():
    model = scripted_model(gen_length=16, answer_len=5, p=0.9)
    cfg = fewstep.DecodeConfig(gen_length=16, block_length=4, steps=16)
    full = final(model, [[3]], cfg)[-1]
    stopped = final(model, [[3]], fewstep.DecodeConfig(gen_length=16, block_length=4, steps=16, early_stop=True))[-1]
    assert torch.equal(full.canvas, stopped.canvas)
    assert full.nfe.item() == 16
    assert stopped.nfe.item() == 8  # blocks 1 and 2 decoded; blocks 3 and 4 filled


def test_early_stop_keeps_decoding_after_eos_then_text():
    class EosThenText(Scripted):
        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
            out = super().forward(input_ids, attention_mask, inputs_embeds).logits
            t = input_ids.shape[1]
            out[:, t - self.gen_length + 3] = out[:, t - self.gen_length]  # text again at position 3
            return Out(out)

    model = scripted_model(gen_length=16, answer_len=2)
    model.module = EosThenText(16, 2, 0.9)
    ev = final(model, [[3]], fewstep.DecodeConfig(gen_length=16, block_length=4, steps=16, early_stop=True))[-1]
    assert ev.canvas[0, :4].tolist() == [10, 11, EOS, 10]  # EOS, then text again
    assert ev.nfe.item() == 16  # the answer did not end cleanly: no early stop


def test_rows_finish_independently():
    """Per-row NFE: a row whose answer ends early stops costing forwards; the other goes on."""

    class TwoLengths(Scripted):
        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
            out = super().forward(input_ids, attention_mask, inputs_embeds).logits
            long_rows = input_ids[:, -self.gen_length - 1] == 7  # last prompt token 7: long answer
            t = input_ids.shape[1]
            for i in range(5, 14):
                out[long_rows, t - self.gen_length + i] = out[long_rows, t - self.gen_length].roll(i, -1)
            return Out(out)

    model = scripted_model()
    model.module = TwoLengths(16, 5, 0.9)
    cfg = fewstep.DecodeConfig(gen_length=16, block_length=4, steps=16, early_stop=True)
    ev = final(model, [[3], [7]], cfg)[-1]
    assert ev.nfe.tolist() == [8, 16]


@pytest.mark.parametrize("strategy", ["llada", "threshold", "cad", "factor"])
def test_batch_invariance_on_random_model(random_dlm_dir, strategy):
    model = fewstep.load_model(random_dlm_dir)
    questions = [p.question for p in arith.test_set()[:12]]
    params = {"threshold": {"threshold": 0.5}, "cad": {"tau": 0.5}}.get(strategy, {})
    cfg = fewstep.DecodeConfig(strategy=strategy, early_stop=True, **params)
    alone = [fewstep.generate(model, [q], cfg)[0] for q in questions]
    batched = fewstep.generate(model, questions, cfg)
    assert [r.token_ids for r in alone] == [r.token_ids for r in batched]
    assert [r.nfe for r in alone] == [r.nfe for r in batched]


def test_events_stream_the_canvas(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    prompts = [model.encode_prompt("Mia has 7 pens .")]
    events = list(decode(model, prompts, fewstep.DecodeConfig(steps=12)))
    assert len(events) == 12
    masks = [int((e.canvas == model.mask_id).sum()) for e in events]
    assert masks == sorted(masks, reverse=True) and masks[-1] == 0
    assert all(int(e.committed.sum()) == 2 for e in events)
    assert [e.nfe.item() for e in events] == list(range(1, 13))


def test_mask_token_is_never_a_candidate():
    class LovesMask(Scripted):
        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
            out = super().forward(input_ids, attention_mask, inputs_embeds).logits
            out[..., MASK] = 10.0  # the model's favourite token is the mask itself
            return Out(out)

    model = scripted_model()
    model.module = LovesMask(16, 5, 0.9)
    for strategy in ("llada", "threshold", "cad"):
        steps = {"steps": 16} if strategy == "llada" else {}
        ev = final(model, [[3]], fewstep.DecodeConfig(strategy=strategy, gen_length=16, block_length=4, **steps))[-1]
        assert not (ev.canvas == MASK).any()
        assert ev.canvas[0, :5].tolist() == [10, 11, 12, 13, 14]


@pytest.mark.slow
@pytest.mark.parametrize("spec", [dict(steps=6), dict(strategy="threshold", threshold=0.9),
                                  dict(strategy="cad", tau=0.9, block_length=8, early_stop=True)])
def test_batch_invariance_on_bundled_model(spec, tiny_dlm):
    """The trained lab model: ragged batches give exactly the tokens and NFE of decoding alone
    (the full 200-prompt check is scripts/check_batch_invariance.py)."""
    model = tiny_dlm
    questions = [p.question for p in arith.test_set()[:24]]
    cfg = fewstep.DecodeConfig(**spec)
    alone = [fewstep.generate(model, [q], cfg)[0] for q in questions]
    order = [5, 0, 17, 3, 22, 9, 11, 1, 14, 20, 7, 2, 19, 4, 23, 8, 12, 6, 16, 10, 21, 13, 18, 15]
    batched = {}
    for i in range(0, 24, 8):
        idx = order[i:i + 8]
        batched.update(zip(idx, fewstep.generate(model, [questions[k] for k in idx], cfg)))
    assert [(r.token_ids, r.nfe) for r in alone] == [(batched[i].token_ids, batched[i].nfe) for i in range(24)]
    task = arith.ArithTask()
    assert sum(task.score(e, r.text).correct for r, e in zip(alone, task.examples())) >= 18  # it is a trained model
