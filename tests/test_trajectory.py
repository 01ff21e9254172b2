"""The trajectory objective of ``fewstep distill`` (fewstep.training.trajectory): states along the
teacher's own decoding, the loss with certainty forcing on hand-made tensors, and a run."""

import json

import pytest
import torch
import torch.nn.functional as F

from fewstep.training import trajectory
from fewstep.training.config import DistillConfig
from fewstep.training.distill import distill


def test_a_state_masks_what_the_teacher_committed_at_its_step_or_later():
    r = trajectory.Rollouts(tokens=torch.tensor([[5, 6, 7, 8]] * 2), committed_at=torch.tensor([[2, 0, 3, 1]] * 2),
                            steps=4, right=torch.tensor([True, True]), nfe=8, seconds=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        masked = trajectory.states(r, gen)
        for row, c in zip(masked, r.committed_at):
            k = int((~row).sum())  # k steps done: the k positions committed before step k are visible
            assert row.tolist() == (c >= k).tolist() and 0 <= k < 4


def test_certainty_forcing_acts_only_where_the_student_is_already_right():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]])  # [1, 3, V]
    target = torch.tensor([[0, 2, 1]])
    masked = torch.tensor([[True, True, False]])
    ce, entropy = trajectory.token_terms(logits, target, masked)
    assert torch.allclose(ce, F.cross_entropy(logits[0, :2], target[0, :2], reduction="none"))
    p = torch.softmax(logits[0, 0], -1)
    assert entropy[0].item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)  # argmax 0 == target
    assert entropy[1].item() == 0.0  # argmax 1, target 2: no forcing


def test_a_trajectory_run_logs_its_rollout_cost(tmp_path, random_dlm_dir):
    cfg = DistillConfig(teacher=str(random_dlm_dir), objective="trajectory", gen_length=24, steps=2, batch_size=8,
                        lr=1e-3, warmup=1, val_size=8, val_every=2, threads=1, traj_steps=6, traj_verified=False,
                        certainty_weight=0.5)
    distill(cfg, tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == 2 and all(r["rollout_nfe"] == 6 and r["rollout_s"] > 0 and r["ce"] > 0 and r["entropy"] >= 0
                                   for r in train)
    assert any("val_loss" in r and r["val_loss"] > 0 for r in rows)
