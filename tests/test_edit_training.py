"""The edit objective of ``fewstep distill`` (fewstep.training.edit): the corruption it draws, the
canvas it shows the model, the loss, and a run with every source (random, own answers, a drafter,
interpolated embeddings) that resumes exactly."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewstep.errors import ConfigError
from fewstep.training import edit
from fewstep.training.config import DistillConfig
from fewstep.training.distill import distill


def tiny(teacher, drafter, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher), objective="edit", gen_length=24, steps=4, batch_size=8, lr=1e-3, warmup=1,
                val_size=8, val_every=2, save_every=1, threads=1, edit_drafter_name=str(drafter))
    return DistillConfig(**{**base, **kw})


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def draw(b=4000, g=12, **kw):
    cfg = DistillConfig(objective="edit", **kw)
    return edit.draw(cfg, b, g, torch.arange(5, 50), torch.Generator().manual_seed(0))


def test_sources_follow_the_fractions_and_corrupt_only_their_rows():
    c = draw(edit_random=0.2, edit_self=0.1, edit_drafter=0.3, edit_rate=0.4, edit_visible=0.5)
    share = [float((c.source == k).float().mean()) for k in (edit.RANDOM, edit.SELF, edit.DRAFTER, edit.CLEAN)]
    assert share == pytest.approx([0.2, 0.1, 0.3, 0.4], abs=0.03)
    assert not c.replace[c.source != edit.RANDOM].any()  # only random rows are replaced
    assert not (c.replace & c.masked).any()  # and only at visible positions
    rate = c.replace[c.source == edit.RANDOM].float().mean()
    assert 0.1 < float(rate) < 0.2  # each row replaces with probability U(0, 0.4): 0.2 on average, less the masked
    clean_masked = c.masked[c.source == edit.CLEAN].any(1).float().mean()
    corrupted_visible = (~c.masked[c.source != edit.CLEAN].any(1)).float().mean()
    assert float(clean_masked) > 0.9 and float(corrupted_visible) == pytest.approx(0.5, abs=0.05)
    assert set(c.random_ids.unique().tolist()) <= set(range(5, 50))


def test_the_draw_is_a_function_of_the_generator():
    a, b = draw(b=64), draw(b=64)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("source", "masked", "replace", "random_ids"))
    with pytest.raises(ConfigError, match="must not exceed 1"):
        DistillConfig(objective="edit", edit_random=0.5, edit_self=0.5, edit_drafter=0.5)


def test_the_canvas_shows_each_rows_source():
    c = edit.Corruption(source=torch.tensor([edit.CLEAN, edit.RANDOM, edit.SELF, edit.DRAFTER]),
                        masked=torch.tensor([[False, True, False]] * 4),
                        replace=torch.tensor([[False] * 3, [True, False, False], [False] * 3, [False] * 3]),
                        random_ids=torch.full((4, 3), 7), interpolate=torch.zeros(4, dtype=torch.bool),
                        alpha=torch.zeros(4))
    clean = torch.tensor([[1, 2, 3]] * 4)
    rows = torch.arange(4)
    own = torch.tensor([[-1] * 3, [-1] * 3, [1, 9, 9], [-1] * 3])
    draft = torch.tensor([[-1] * 3, [-1] * 3, [-1] * 3, [4, 2, -1]])
    shown = edit.proposal(clean, c, rows, own, draft)
    assert shown.tolist() == [[1, 2, 3], [7, 2, 3], [1, 9, 9], [4, 2, 3]]
    masked = c.masked | edit.unproposed(c, rows, draft)  # the draft's empty position is masked, as at inference
    assert masked[3].tolist() == [False, True, True]
    ids = torch.tensor([[0, 0, 1, 2, 3]] * 4)
    x = edit.inputs(ids, 3, shown, masked, mask_id=99)
    assert x[3].tolist() == [0, 0, 4, 99, 99] and x[0].tolist() == [0, 0, 1, 99, 3]


def test_the_loss_asks_for_the_clean_token_everywhere():
    clean = torch.tensor([[0, 1]])
    right = torch.full((1, 2, 3), -9.0)
    right[0, 0, 0] = right[0, 1, 1] = 9.0
    wrong = right.flip(-1)
    w = torch.tensor([[1.0, 0.5]])
    assert float(edit.token_loss(right, clean, w)) < 1e-6 < float(edit.token_loss(wrong, clean, w))
    assert float(edit.token_loss(wrong, clean, torch.zeros(1, 2))) == 0.0


def test_interpolated_embeddings_mix_toward_the_draft_at_masked_draft_positions():
    table = torch.eye(4)
    c = edit.Corruption(torch.tensor([edit.DRAFTER]), torch.tensor([[True, True, False]]),
                        torch.zeros(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.long),
                        torch.tensor([True]), torch.tensor([0.25]))
    x = torch.tensor([[1, 3, 3, 2]])  # mask id 3
    draft = torch.tensor([[0, -1, 2]])
    emb = edit.interpolated_embeds(lambda t: table[t], x, 3, draft, c.masked, c, torch.arange(1))
    assert emb[0, 1].tolist() == [0.25, 0.0, 0.0, 0.75]  # masked, draft 0: mixed
    assert emb[0, 2].tolist() == [0.0, 0.0, 0.0, 1.0]  # masked, no draft token: the mask's embedding
    assert emb[0, 3].tolist() == [0.0, 0.0, 1.0, 0.0]  # visible
    c.interpolate[:] = False
    assert edit.interpolated_embeds(lambda t: table[t], x, 3, draft, c.masked, c, torch.arange(1)) is None


def test_an_edit_run_with_every_source_trains_validates_and_resumes(tmp_path, random_dlm_dir, random_ar_dir):
    cfg = tiny(random_dlm_dir, random_ar_dir, edit_random=0.3, edit_self=0.3, edit_drafter=0.3, edit_interpolate=0.5,
               edit_self_steps=2)
    distill(cfg, tmp_path / "full", progress=False)
    distill(cfg, tmp_path / "run", progress=False, stop_at=2)
    distill(cfg, tmp_path / "run", progress=False)
    full, resumed = metrics(tmp_path / "full"), metrics(tmp_path / "run")
    drop = ("elapsed_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
           [{k: v for k, v in r.items() if k not in drop} for r in full]
    vals = [r for r in full if "val_loss" in r]
    assert len(vals) == 2 and all(0 <= r["val_p_right"] <= 1 and 0 <= r["val_p_wrong"] <= 1 and 0 <= r["val_auroc"] <= 1
                                  for r in vals)
    assert all(r["loss"] > 0 for r in full if "loss" in r)
    a = load_file(tmp_path / "full" / "last" / "model.safetensors")
    teacher = load_file(random_dlm_dir / "model.safetensors")
    assert any(not torch.equal(a[k], teacher[k]) for k in a)


def test_masked_positions_weigh_one_over_t_and_a_clean_rows_loss_is_llada_s():
    drawn = torch.tensor([[True, False, True], [False, False, False]])
    masked = drawn | torch.tensor([[False, False, False], [False, False, True]])  # row 1: a draft left one empty
    t = torch.tensor([0.5, 0.0])
    corrupted = torch.tensor([True, True])
    w = edit.weights(masked, drawn, t, corrupted, 0.25, inverse_t=True)
    assert w.tolist() == [[2.0, 0.25, 2.0], [0.25, 0.25, 1.0]]
    assert edit.weights(masked, drawn, t, corrupted, 0.25, inverse_t=False).tolist() == \
        [[1.0, 0.25, 1.0], [0.25, 0.25, 1.0]]
    clean = edit.weights(masked, drawn, t, torch.tensor([False, True]), 0.25, inverse_t=True)
    assert clean[0].tolist() == [2.0, 0.0, 2.0]  # a clean row's visible tokens carry no loss


def test_interpolating_rows_show_the_reference_and_carry_llada_s_loss():
    c = edit.Corruption(torch.tensor([edit.DRAFTER, edit.DRAFTER]), torch.tensor([[False, True, False]] * 2),
                        torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.long),
                        torch.tensor([True, False]), torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.0]))
    rows, clean = torch.arange(2), torch.tensor([[1, 2, 3]] * 2)
    draft = torch.tensor([[4, 5, -1]] * 2)
    assert edit.proposal(clean, c, rows, None, draft).tolist() == [[1, 2, 3], [4, 5, 3]]
    assert edit.unproposed(c, rows, draft).tolist() == [[False] * 3, [False, False, True]]
    assert edit.judging(c, rows).tolist() == [False, True]
