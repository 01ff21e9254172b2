"""The engine's seams: canvas states, commit / revoke decisions, the loop's termination bound,
block-local logits, the strategy registry and result compatibility. Hand-made tensors and
scripted models; no trained model."""

from __future__ import annotations

import json

import pytest
import torch

import fewstep
from fewstep import ConfigError
from fewstep.config import DecodeConfig, override, same_settings
from fewstep.decoding import canvas
from fewstep.decoding.loop import decode
from fewstep.decoding.scoring import LAST, candidates_and_confidence
from fewstep.strategies import REGISTRY, describe
from fewstep.strategies.base import Decision, Policy
from scripted import EOS, MASK, scripted_model


def test_canvas_states_and_undecided():
    state = torch.tensor([[canvas.MASKED, canvas.PROVISIONAL, canvas.COMMITTED, canvas.COMMITTED]], dtype=torch.int8)
    assert canvas.undecided(state).tolist() == [[True, True, False, False]]
    assert canvas.progress(state).tolist() == [0.5]  # provisional positions are not progress
    tokens, st = canvas.initial_state(2, 3, canvas.CanvasInit(tokens=torch.tensor([[5, -1, 7], [-1, -1, MASK]])),
                                      MASK, "cpu")
    assert tokens.tolist() == [[5, MASK, 7], [MASK, MASK, MASK]]
    assert st.tolist() == [[canvas.PROVISIONAL, canvas.MASKED, canvas.PROVISIONAL], [canvas.MASKED] * 3]


def test_candidates_and_confidence_on_hand_made_logits():
    cfg = DecodeConfig()
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[[0.0, 5.0, 1.0, 0.0], [0.0, 0.0, 3.0, 2.0]]])  # [1, 2, V=4]; mask id 1, EOS 2
    cand, conf, probs = candidates_and_confidence(logits.clone(), cfg, eos_id=2, generator=gen, mask_id=1)
    assert cand.tolist() == [[2, 2]]  # the mask token (logit 5) is never a candidate
    want = torch.softmax(torch.tensor([0.0, float("-inf"), 1.0, 0.0], dtype=torch.float64), -1)[2]
    assert conf[0, 0].item() == pytest.approx(want.item())
    assert probs.dtype == torch.float64 and probs[0, 0, 1].item() == 0.0
    # an EOS penalty moves the candidate off EOS
    cand, _, _ = candidates_and_confidence(logits.clone(), DecodeConfig(eos_logit_penalty=2.0), 2, gen, 1)
    assert cand.tolist() == [[0, 3]]
    # eos_confidence=last: EOS candidates rank below every other candidate, still finite
    cand, conf, _ = candidates_and_confidence(torch.tensor([[[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]),
                                              DecodeConfig(eos_confidence="last"), 2, gen, 1)
    assert cand.tolist() == [[2, 3]] and conf[0, 0].item() == LAST and conf[0, 1].item() > LAST


class Reviser(Policy):
    """A hand-made policy: commits the first eligible position, revokes every committed one at
    step 1, and otherwise commits nothing; its budget is 4 steps."""

    budget = 4

    def step(self, ctx):
        commit = torch.zeros_like(ctx.eligible)
        if ctx.step == 0:
            commit[:, 0] = ctx.eligible[:, 0]
        revoke = torch.ones_like(ctx.eligible) if ctx.step == 1 else None
        return Decision(commit, revoke)


def test_revoke_and_the_loops_termination_bound(monkeypatch):
    import fewstep.decoding.loop as loop

    monkeypatch.setattr(loop, "make_policy", lambda cfg: Reviser())
    model = scripted_model(gen_length=4, answer_len=2)
    events = list(decode(model, [[3]], DecodeConfig(strategy="threshold", gen_length=4, block_length=4)))
    assert [int(e.committed.sum()) for e in events] == [1, 0, 4]
    assert events[1].revoked[0].tolist() == [True, False, False, False]  # the committed one, not masks
    assert events[1].canvas[0].tolist() == [MASK] * 4 and events[1].committed_at[0, 0].item() == -1
    # the policy never completes the block: at step 2 it changes nothing, so the loop completes the
    # block there (a further forward would see the same canvas) instead of waiting for step 3
    last = events[-1]
    assert last.done and last.canvas[0].tolist() == [10, 11, EOS, EOS] and last.nfe.item() == 3
    assert (last.state == canvas.COMMITTED).all()


def test_provisional_tokens_are_confirmed_or_kept_never_overwritten():
    """A position that starts provisional keeps its token when committed (a confirmation), even
    where the model would pick another token."""
    model = scripted_model(gen_length=4, answer_len=4, p=0.9)  # wants 10, 11, 12, 13
    init = canvas.CanvasInit(tokens=torch.tensor([[20, -1, -1, 23]]))
    ev = list(decode(model, [[3]], DecodeConfig(strategy="threshold", gen_length=4, block_length=4), init=init))[-1]
    assert ev.canvas[0].tolist() == [20, 11, 12, 23]


def test_logits_are_block_local(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    ids = torch.tensor([[5, 6, 7, MASK, MASK, MASK]])
    att = torch.ones_like(ids)
    full = model.logits(input_ids=ids, attention_mask=att)
    part = model.logits(input_ids=ids, attention_mask=att, positions=slice(3, 5))
    assert part.shape == (1, 2, full.shape[-1])
    torch.testing.assert_close(part, full[:, 3:5], rtol=1e-5, atol=1e-5)
    assert model.module(input_ids=ids, attention_mask=att).logits.shape == full.shape  # the raw module: all T
    with pytest.raises(ValueError, match="window forward needs a cache"):
        model.logits(input_ids=ids, attention_mask=att, positions=slice(3, 5), window=slice(3, 5))


def test_snapshots_only_when_asked():
    model = scripted_model(gen_length=8, answer_len=3)
    cfg = DecodeConfig(gen_length=8, block_length=4, steps=8)
    every = list(decode(model, [[3]], cfg))
    only_last = list(decode(model, [[3]], cfg, snapshots=False))
    assert len(every) == 8 and len(only_last) == 1 and only_last[0].done
    assert torch.equal(every[-1].canvas, only_last[0].canvas) and torch.equal(every[-1].nfe, only_last[0].nfe)


def test_registry_declares_parameters_once():
    names = {d["name"]: d for d in describe()}
    assert set(names) == set(REGISTRY)
    thr = {p["name"]: p for p in names["threshold"]["params"]}["threshold"]
    assert (thr["default"], thr["range"], thr["type"]) == (0.9, "(0, 1]", "float")
    assert [p["name"] for p in names["cad"]["params"]] == ["tau", "min_tokens", "max_tokens", "max_steps_per_block",
                                                            "eos_min_progress"]


@pytest.mark.parametrize("settings,message", [
    (["tau=0.5"], "strategy 'llada' has no setting 'tau' \\(a parameter of cad\\)"),
    (["strategy=threshold", "steps=4"], "strategy 'threshold' has no setting 'steps' \\(a parameter of llada\\)"),
    (["strategy=cad", "tau=nan"], "cad: tau must be in"),
    (["strategy=threshold", "threshold=inf"], "threshold: threshold must be in"),
    (["temperature=nan"], "temperature must be in"),
    (["strategy=warp"], "unknown strategy 'warp'"),
])
def test_settings_of_another_strategy_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        override(DecodeConfig(), settings)


def test_replace_switches_strategy_and_keeps_loop_settings():
    import dataclasses

    cfg = DecodeConfig(gen_length=48, block_length=8, steps=12)
    fast = dataclasses.replace(cfg, strategy="cad", tau=0.9)
    assert (fast.gen_length, fast.block_length, fast.tau, fast.min_tokens) == (48, 8, 0.9, 1)
    with pytest.raises(AttributeError, match="no setting 'steps'"):
        _ = fast.steps
    assert DecodeConfig.from_dict(fast.to_dict()) == fast


OLD_SUMMARY_CONFIG = {  # summary.json "config" as written before the strategy registry (every field, flat)
    "strategy": "threshold", "gen_length": 24, "block_length": 24, "steps": 24, "temperature": 0.0,
    "remasking": "low_confidence", "cfg_scale": 0.0, "seed": 0, "threshold": 0.8, "factor": 1.0, "tau": 0.95,
    "min_tokens": 1, "max_tokens": 0, "max_steps_per_block": 0, "eos_min_progress": 0.0, "early_stop": False,
    "eos_logit_penalty": 0.0, "eos_confidence": "keep",
}


def test_recorded_configs_from_before_the_registry_still_match():
    cfg = DecodeConfig(strategy="threshold", threshold=0.8)
    assert same_settings(json.loads(json.dumps(OLD_SUMMARY_CONFIG)), cfg)
    assert not same_settings(OLD_SUMMARY_CONFIG, DecodeConfig(strategy="threshold", threshold=0.9))
    assert not same_settings(OLD_SUMMARY_CONFIG, DecodeConfig(strategy="cad", tau=0.95))
    newer = {k: v for k, v in OLD_SUMMARY_CONFIG.items() if k != "eos_confidence"}  # a setting added later
    assert same_settings(newer, cfg)
    assert not same_settings(newer, DecodeConfig(strategy="threshold", threshold=0.8, eos_confidence="last"))


def test_an_eval_directory_written_before_the_registry_resumes(tmp_path, random_dlm_dir):
    from fewstep.evaluation.runner import EvalRequest, run_eval

    req = EvalRequest(task="arith", model=str(random_dlm_dir), out=str(tmp_path), strategy="threshold",
                      settings=("threshold=0.8",), limit=3, batch_size=3)
    run_eval(req, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary["config"] = dict(OLD_SUMMARY_CONFIG)  # the flat record of every strategy's fields
    for key in ("data_sha256", "model_sha256"):  # not recorded before
        summary.pop(key, None)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "run.json").unlink()  # directories of that time have only summary.json
    import dataclasses

    resumed = run_eval(dataclasses.replace(req, limit=5), progress=False)
    assert resumed["n"] == 5
    with pytest.raises(fewstep.FewstepError, match="different run"):
        run_eval(dataclasses.replace(req, settings=("threshold=0.9",)), progress=False)


def test_eval_uses_the_tasks_generation_length(tmp_path, make_random_dlm):
    """gsm8k with a model that declares no decode defaults: gen_length 256 from the task, recorded."""
    from fewstep.evaluation.runner import EvalRequest, run_eval

    model_dir = make_random_dlm(tmp_path / "m", d_model=16, layers=1, max_len=512)
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "Tom has 9 eggs. He sells 4. How many are left?",
                                "answer": "9 - 4 = 5\n#### 5"}) + "\n")
    summary = run_eval(EvalRequest(task="gsm8k", model=str(model_dir), out=str(tmp_path / "out"), strategy="threshold",
                                   settings=("threshold=0.01",), data=str(data)), progress=False)
    assert (summary["config"]["gen_length"], summary["config"]["block_length"]) == (256, 256)
