"""DSCD (fewstep distill): nested masks, the loss, the lambda schedule, the run (resume, LoRA, the
ablation objective, data parallel) and its one-line errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fewstep
from fewstep.cli import main
from fewstep.errors import ConfigError, TaskError
from fewstep.training import dscd
from fewstep.training.config import DistillConfig
from fewstep.training.distill import distill

SRC = Path(__file__).resolve().parent.parent / "src"


def tiny(teacher, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher), gen_length=24, steps=4, batch_size=8, lr=1e-3, warmup=1, val_size=8,
                val_every=2, save_every=1, threads=1)
    return DistillConfig(**{**base, **kw})


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- masks


def hand_counts(length: int, u_s: float, u_t: float) -> tuple[int, int]:
    """design.md section 1, written out for one answer."""
    r_s = 0.4 + 0.5 * u_s
    if length < 20:
        r_s = min(r_s, 0.5)
    r_t = min(max(r_s * (0.3 + 0.4 * u_t), 0.1), 0.6)
    n_s = max(math.floor(length * r_s), max(2, math.ceil(0.1 * length)))
    n_t = min(math.floor(length * r_t), n_s)
    if length <= 10:
        n_s, n_t = 2, 1
    return n_s, n_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_counts_follow_the_design(seed):
    lengths = torch.tensor([1, 3, 10, 11, 15, 19, 20, 24, 37, 100, 256])
    n_s, n_t = dscd.mask_counts(lengths, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    u_s = torch.rand(len(lengths), generator=g, dtype=torch.float64).tolist()
    u_t = torch.rand(len(lengths), generator=g, dtype=torch.float64).tolist()
    for i, length in enumerate(lengths.tolist()):
        want_s, want_t = hand_counts(length, u_s[i], u_t[i])
        want_s = min(want_s, length)  # one-token answers: the only position
        want_t = min(want_t, want_s)
        assert (n_s[i].item(), n_t[i].item()) == (want_s, want_t), length
    short = lengths <= 10
    assert n_s[short].tolist() == [1, 2, 2] and n_t[short].tolist() == [1, 1, 1]
    mid = (lengths > 10) & (lengths < 20)
    assert (n_s[mid] <= torch.clamp(torch.floor(lengths[mid] * 0.5), min=2)).all()
    long = lengths >= 20
    assert (n_s[long] >= torch.floor(lengths[long] * 0.4)).all() and (n_s[long] <= lengths[long] * 0.9).all()
    assert (n_t <= n_s).all() and (n_t >= 1).all()


@pytest.mark.parametrize("seed", [0, 7])
def test_nested_masks_are_subsets_on_the_answer(seed):
    b, t = 64, 40
    answer = torch.zeros(b, t, dtype=torch.bool)
    lengths = torch.randint(1, 30, (b,), generator=torch.Generator().manual_seed(99))
    for i, n in enumerate(lengths.tolist()):
        answer[i, t - n:] = True
    student, teacher = dscd.nested_masks(answer, torch.Generator().manual_seed(seed))
    n_s, n_t = dscd.mask_counts(lengths, torch.Generator().manual_seed(seed))
    assert not (teacher & ~student).any()  # the teacher's masked set is inside the student's
    assert not (student & ~answer).any()  # the prompt is never masked
    assert student.sum(1).tolist() == n_s.tolist() and teacher.sum(1).tolist() == n_t.tolist()
    again = dscd.nested_masks(answer, torch.Generator().manual_seed(seed))
    assert torch.equal(again[0], student) and torch.equal(again[1], teacher)
    other = dscd.nested_masks(answer, torch.Generator().manual_seed(seed + 1))
    assert not torch.equal(other[0], student)
    # Positions are drawn uniformly: over many rows every answer position gets masked sometimes.
    wide = torch.ones(2000, 24, dtype=torch.bool)
    s, _ = dscd.nested_masks(wide, torch.Generator().manual_seed(seed))
    freq = s.float().mean(0)
    assert freq.min() > 0.5 and freq.max() < 0.8  # mean ratio of U(0.4, 0.9) is 0.65


# ---------------------------------------------------------------- loss and schedule


def softmax(xs, temp=1.0):
    e = [math.exp(x / temp) for x in xs]
    return [v / sum(e) for v in e]


def test_loss_on_hand_made_logits():
    # One row, three answer positions, vocabulary of 3; x0 = [2, 0, 2].
    ids = torch.tensor([[2, 0, 2]])
    student = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 12.0, -12.0]]])
    teacher = torch.tensor([[[0.5, 0.0, 3.0], [2.0, 1.0, 0.0], [0.0, -20.0, 20.0]]])
    s_mask = torch.tensor([[True, True, True]])
    t_mask = torch.tensor([[True, False, True]])  # the teacher sees position 1's token
    kl, ce = dscd.token_terms(student, teacher, ids, s_mask, t_mask, temperature=2.0, kl_clip=5.0, ce_clip=5.0)

    ps0, pt0 = softmax([0.0, 1.0, 2.0], 2), softmax([0.5, 0.0, 3.0], 2)
    kl0 = 4 * sum(p * math.log(p / q) for p, q in zip(pt0, ps0))
    kl1 = 4 * -math.log(softmax([1.0, 0.0, 0.0], 2)[0])  # clean target where the teacher sees x0
    ce0 = -math.log(softmax([0.0, 1.0, 2.0])[2])
    ce1 = -math.log(softmax([1.0, 0.0, 0.0])[0])
    # Position 2 disagrees hard: both terms are far above 5 and clipped.
    assert 4 * sum(p * math.log(p / q) for p, q in zip(softmax([0, -20, 20], 2), softmax([0, 12, -12], 2))) > 5
    torch.testing.assert_close(kl, torch.tensor([kl0, kl1, 5.0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, torch.tensor([ce0, ce1, 5.0]), rtol=1e-5, atol=1e-5)
    loss = dscd.combine(kl, ce, 0.9).mean()
    want = (0.9 * (kl0 + kl1 + 5) + 0.1 * (ce0 + ce1 + 5)) / 3
    assert loss.item() == pytest.approx(want, rel=1e-5)
    # The literal reading uses the teacher's logits at the visible position too.
    kl_raw, _ = dscd.token_terms(student, teacher, ids, s_mask, t_mask, visible_target="logits")
    pt1, ps1 = softmax([2.0, 1.0, 0.0], 2), softmax([1.0, 0.0, 0.0], 2)
    assert kl_raw[1].item() == pytest.approx(4 * sum(p * math.log(p / q) for p, q in zip(pt1, ps1)), rel=1e-5)
    # Clipped tokens pass no gradient; the others do.
    s = student.clone().requires_grad_(True)
    k, c = dscd.token_terms(s, teacher, ids, s_mask, t_mask)
    dscd.combine(k, c, 0.9).sum().backward()
    assert s.grad[0, 2].abs().sum() == 0 and s.grad[0, 0].abs().sum() > 0


def test_lambda_schedule():
    lams = [dscd.lambda_at(s, 100) for s in range(100)]
    assert lams[:11] == [0.9] * 11  # held for 10% of the steps, the cosine starts at 0.9
    assert lams[-1] == pytest.approx(0.5)
    assert lams[54] == pytest.approx(0.7, abs=0.02)
    assert all(a >= b for a, b in zip(lams, lams[1:]))
    assert dscd.lambda_at(0, 10, hold=0.0) == 0.9 and dscd.lambda_at(9, 10, hold=0.0) == pytest.approx(0.5)


# ---------------------------------------------------------------- the run


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(tmp_path, random_dlm_dir):
    cfg = tiny(random_dlm_dir, steps=12, batch_size=16, lr=3e-3, val_size=32, val_every=1, patience=0,
               save_every=12)
    result = distill(cfg, tmp_path, progress=False)
    vals = [r["val_loss"] for r in metrics(tmp_path) if "val_loss" in r]
    assert len(vals) == 12 and vals[-1] < 0.9 * vals[0]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["steps_done"] == 12 and run["world_size"] == 1 and result.name == "best"
    model = fewstep.load_model(result)
    assert model.kind == "diffusion" and (result / "tokenizer.json").is_file()
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_resume_reproduces_the_uninterrupted_run(tmp_path, random_dlm_dir):
    cfg = tiny(random_dlm_dir, steps=4)
    distill(cfg, tmp_path / "full", progress=False)
    stopped = distill(cfg, tmp_path / "run", progress=False, stop_at=2)
    assert stopped.name == "step_2"
    distill(cfg, tmp_path / "run", progress=False)
    full, resumed = metrics(tmp_path / "full"), metrics(tmp_path / "run")
    drop = ("elapsed_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
           [{k: v for k, v in r.items() if k not in drop} for r in full]
    a = load_file(tmp_path / "full" / "last" / "model.safetensors")
    b = load_file(tmp_path / "run" / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_and_full_fine_tuning_both_train(tmp_path, random_dlm_dir):
    teacher = load_file(random_dlm_dir / "model.safetensors")
    for name, kw in (("full", {}), ("lora", dict(lora_r=4, lora_targets="q_proj,v_proj"))):
        distill(tiny(random_dlm_dir, steps=2, lr=1e-2, **kw), tmp_path / name, progress=False)
        out = load_file(tmp_path / name / "last" / "model.safetensors")
        assert out.keys() == teacher.keys()  # LoRA merged back into the teacher's layout
        changed = {k for k in out if not torch.equal(out[k], teacher[k])}
        if name == "full":
            assert "model.transformer.wte.weight" in changed
        else:
            assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
        assert fewstep.load_model(tmp_path / name / "last").kind == "diffusion"


def test_the_ablation_objective_trains_without_a_teacher(tmp_path, random_dlm_dir):
    distill(tiny(random_dlm_dir, objective="mdlm", steps=2), tmp_path, progress=False)
    rows = [r for r in metrics(tmp_path) if "loss" in r]
    assert len(rows) == 2 and all(r["kl"] == 0 and r["loss"] > 0 for r in rows)


@pytest.mark.parametrize("objective", ["dscd", "mdlm", "edit", "trajectory"])
def test_gradient_accumulation_gives_the_same_step(tmp_path, random_dlm_dir, random_ar_dir, objective):
    """The step's loss, gradient norm and weights do not depend on how its rows are split (every
    objective draws its masks for the whole batch from the step's seed)."""
    kw = dict(steps=2, val_size=0, objective=objective, edit_drafter_name=str(random_ar_dir), edit_self_steps=2,
              traj_steps=6, traj_verified=False,
              autocast_bf16=False)  # float32: the splits may differ only by summation order
    distill(tiny(random_dlm_dir, **kw), tmp_path / "one", progress=False)
    distill(tiny(random_dlm_dir, grad_accum=4, **kw), tmp_path / "four", progress=False)
    one, four = metrics(tmp_path / "one"), metrics(tmp_path / "four")
    for a, b in zip(one, four):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    wa = load_file(tmp_path / "one" / "last" / "model.safetensors")
    wb = load_file(tmp_path / "four" / "last" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_jsonl_data(tmp_path, random_dlm_dir):
    rows = [{"question": f"Tom has {i} eggs . How many eggs does Tom have ?", "answer": f"#### {i}"}
            for i in range(1, 30)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    distill(tiny(random_dlm_dir, data=str(path), steps=2, val_size=4), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["steps_done"] == 2


# ---------------------------------------------------------------- bad input


def test_bad_inputs_give_one_clear_error(tmp_path, random_dlm_dir, random_ar_dir):
    with pytest.raises(ConfigError, match="not a masked diffusion model"):
        distill(tiny(random_ar_dir), tmp_path / "a", progress=False)
    no_answers = tmp_path / "q.jsonl"
    no_answers.write_text(json.dumps({"question": "Tom has 3 eggs ."}) + "\n")
    with pytest.raises(TaskError, match="has no answer"):
        distill(tiny(random_dlm_dir, data=str(no_answers)), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="match no linear layer"):
        distill(tiny(random_dlm_dir, lora_r=2, lora_targets="q_proj,c_attn"), tmp_path / "c", progress=False)
    distill(tiny(random_dlm_dir, steps=1), tmp_path / "d", progress=False)
    with pytest.raises(ConfigError, match="different configuration"):
        distill(tiny(random_dlm_dir, steps=1, temperature=1.0), tmp_path / "d", progress=False)
    for kw in (dict(objective="ppo"), dict(rs_min=0.95), dict(lambda_end=1.5), dict(batch_size=2, grad_accum=4)):
        with pytest.raises(ConfigError):
            tiny(random_dlm_dir, **kw)


def test_cli_prints_one_line(tmp_path, random_ar_dir, capsys):
    code = main(["distill", "--teacher", str(random_ar_dir), "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fewstep: error: teacher")


# ---------------------------------------------------------------- data parallel


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path, random_dlm_dir):
    args = ["distill", "--teacher", str(random_dlm_dir), "--gen-length", "24", "--steps", "3", "--batch-size", "8",
            "--lr", "1e-3", "--warmup", "1", "--val-size", "8", "--val-every", "3", "--no-progress",
            "--autocast-bf16", "false"]  # float32: one and two processes may differ only by summation order
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fewstep.cli", *args, "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("distilled") == 1  # printed once, by rank 0
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps_done"] == 3  # the ranks checked they agree on the weights
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["step"] == 3
    model = fewstep.load_model(tmp_path / "ddp" / "last")
    model.module.load_state_dict(ckpt["student"])
    # The same steps in one process: same batches and masks, so the same losses and gradient norms
    # at every step up to float rounding (a wrong gradient scale would show in the norms).
    # (in this process: the command's own code path, without a second interpreter's start-up)
    from fewstep.cli import main

    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    ddp, alone = ([r for r in metrics(tmp_path / d) if "loss" in r] for d in ("ddp", "one"))
    assert len(ddp) == len(alone) == 3
    for a, b in zip(ddp, alone):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["grad_norm"] == pytest.approx(b["grad_norm"],
                                                                                                  rel=1e-3)


def test_bundled_student_loads_and_the_bundle_stays_small(bundled, tiny_dlm_cd, tiny_dlm):
    path = bundled("tiny-dlm-cd")
    student, teacher = tiny_dlm_cd, tiny_dlm
    assert student.kind == "diffusion" and student.decode_defaults == teacher.decode_defaults
    a, b = load_file(path / "model.safetensors"), load_file(bundled("tiny-dlm") / "model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    total = sum(f.stat().st_size for f in path.parent.rglob("*") if f.is_file())  # the assets folder
    assert total < 45_000_000, f"bundled models take {total / 1e6:.1f} MB"


def test_the_clipped_fraction_of_each_dscd_term_is_logged(tmp_path, random_dlm_dir):
    distill(tiny(random_dlm_dir, steps=2, val_size=0, ce_clip=1e-3), tmp_path / "tight", progress=False)
    rows = [r for r in metrics(tmp_path / "tight") if "loss" in r]
    assert all(r["ce_clipped"] == pytest.approx(1.0) and 0 <= r["kl_clipped"] <= 1 for r in rows)
    distill(tiny(random_dlm_dir, steps=2, val_size=0, kl_clip=1e6, ce_clip=1e6), tmp_path / "loose", progress=False)
    assert all(r["kl_clipped"] == 0 and r["ce_clipped"] == 0 for r in metrics(tmp_path / "loose") if "loss" in r)
    assert (tmp_path / "tight" / "loss.png").stat().st_size > 0
    distill(tiny(random_dlm_dir, steps=1, val_size=0, objective="mdlm"), tmp_path / "mdlm", progress=False)
    assert "kl_clipped" not in metrics(tmp_path / "mdlm")[0]
