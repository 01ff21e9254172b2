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


def test_a_state_of_a_row_that_finished_early_stays_within_its_own_trajectory():
    # row 0 took 4 steps, row 1 (an adaptive strategy's early finish) only 2
    r = trajectory.Rollouts(tokens=torch.tensor([[5, 6, 7, 8]] * 2),
                            committed_at=torch.tensor([[2, 0, 3, 1], [1, 0, 1, 0]]), steps=4,
                            right=torch.tensor([True, True]), nfe=6, seconds=0.0)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        masked = trajectory.states(r, gen)
        k1 = 0 if masked[1].all() else 1  # k 0: all masked; k 1: those committed at step 0 visible
        assert masked[1].tolist() == (r.committed_at[1] >= k1).tolist()
        seen.add(k1)
    assert seen == {0, 1}


def _metrics(path):
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "rollout_s")} for r in rows]


def test_rollouts_written_beforehand_train_exactly_as_rollouts_made_at_each_step(tmp_path, random_dlm_dir):
    from fewstep.training.rollouts import RolloutConfig, RolloutStore, write_rollouts

    common = dict(teacher=str(random_dlm_dir), gen_length=24, steps=2, batch_size=8, val_size=8)
    written = write_rollouts(RolloutConfig(**common, strategy="llada:steps=6", threads=1), str(tmp_path / "r"),
                             progress=False)
    assert written["steps"] == 2 and written["nfe"] == 2 * 8 * 6 and written["seconds"] > 0
    cfg = DistillConfig(**common, objective="trajectory", lr=1e-3, warmup=1, val_every=2, threads=1, traj_steps=6,
                        traj_verified=False, certainty_weight=0.5)
    distill(cfg, tmp_path / "live", progress=False)
    stored = DistillConfig(**{**cfg.__dict__, "rollouts": str(tmp_path / "r")})
    distill(stored, tmp_path / "stored", progress=False)
    live, offline = _metrics(tmp_path / "live"), _metrics(tmp_path / "stored")
    assert live == offline and len(live) >= 3
    store = RolloutStore(str(tmp_path / "r"), {})
    logged = [json.loads(x)["rollout_s"] for x in (tmp_path / "stored" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert logged == [store.step(0).seconds, store.step(1).seconds]  # the stored cost is the run's


def test_rollouts_resume_shard_over_processes_and_refuse_another_run(tmp_path, random_dlm_dir, monkeypatch):
    from fewstep.errors import ConfigError
    from fewstep.training.rollouts import RolloutConfig, write_rollouts

    out = str(tmp_path / "r")
    rc = RolloutConfig(teacher=str(random_dlm_dir), strategy="threshold:threshold=0.5", gen_length=24, steps=3,
                       batch_size=4, val_size=4, threads=1)
    for rank in (1, 0):  # two processes of a launcher, one after the other
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        write_rollouts(rc, out, progress=False)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    names = sorted(p.relative_to(out).as_posix() for p in (tmp_path / "r").glob("shard-*/*.pt"))
    assert names == ["shard-0-of-2/step-000000.pt", "shard-0-of-2/step-000002.pt", "shard-0-of-2/val.pt",
                     "shard-1-of-2/step-000001.pt"]
    longer = RolloutConfig(**{**rc.__dict__, "steps": 4})
    assert write_rollouts(longer, out, progress=False)["steps"] == 1  # only the new step
    with pytest.raises(ConfigError, match="another run"):
        write_rollouts(RolloutConfig(**{**rc.__dict__, "seed": 1}), out, progress=False)
    cfg = DistillConfig(teacher=str(random_dlm_dir), objective="trajectory", gen_length=24, steps=5, batch_size=4,
                        val_size=4, rollouts=out)
    with pytest.raises(ConfigError, match="4 steps, the run has 5"):
        distill(cfg, tmp_path / "run", progress=False)


def test_the_rollouts_command_and_its_errors(tmp_path, random_dlm_dir, capsys):
    from fewstep.cli import main

    out = str(tmp_path / "r")
    assert main(["rollouts", "--teacher", str(random_dlm_dir), "--strategy", "llada:steps=4", "--gen-length", "24",
                 "--steps", "1", "--batch-size", "2", "--val-size", "2", "--threads", "1", "--no-progress",
                 "--out", out]) == 0
    assert "8 teacher forwards" in capsys.readouterr().out  # 1 step x 2 rows x 4 forwards
    assert main(["distill", "--teacher", str(random_dlm_dir), "--rollouts", out, "--out", str(tmp_path / "d")]) == 2
    assert "add --objective trajectory" in capsys.readouterr().err
    assert main(["distill", "--teacher", str(random_dlm_dir), "--objective", "trajectory", "--rollouts", out,
                 "--gen-length", "24", "--steps", "1", "--batch-size", "2", "--val-size", "2", "--traj-steps", "8",
                 "--out", str(tmp_path / "d2")]) == 2
    assert "--traj-steps 8" in capsys.readouterr().err
