"""fewstep distill --plan: exact parameter counts and the LLaDA-8B configurations of issue 25."""

import json
from pathlib import Path

import pytest

from fewstep.cli import main
from fewstep.training.config import DistillConfig
from fewstep.training.plan import plan

LLADA_8B = json.loads((Path(__file__).parent / "data" / "llada-8b-instruct" / "config.json").read_text())
GB = 1e9


def test_llada_8b_count_is_the_published_one():
    p = plan(LLADA_8B, DistillConfig(batch_size=4, gen_length=256))
    assert p["parameters"] == 8_015_581_184 == p["trainable_parameters"]


def test_llada_8b_configurations_at_batch_4_and_gen_256():
    def per_device(devices=1, **kw):
        return plan(LLADA_8B, DistillConfig(batch_size=4, gen_length=256, dtype="bfloat16", **kw), devices)

    assert per_device(8)["per_device_bytes"] > 80 * GB  # full fine-tuning, data parallel
    lora = per_device(lora_r=8, gradient_checkpointing=True)
    assert lora["per_device_bytes"] < 40 * GB and lora["parts"]["teacher"] == 0
    assert per_device(8, sharding="fsdp", gradient_checkpointing=True)["per_device_bytes"] < 80 * GB


def test_tiny_counts_are_exact(random_dlm_dir):
    import fewstep
    from fewstep.training.student import make_student

    config = json.loads((random_dlm_dir / "config.json").read_text())
    module = fewstep.load_model(random_dlm_dir).module
    assert plan(config, DistillConfig(gen_length=24))["parameters"] == sum(p.numel() for p in module.parameters())
    cfg = DistillConfig(gen_length=24, lora_r=4)
    student = make_student(module, cfg)
    lora = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert plan(config, cfg)["trainable_parameters"] == lora


def test_cli_prints_one_json_object(capsys):
    teacher = str(Path(__file__).parent / "data" / "llada-8b-instruct")
    assert main(["distill", "--teacher", teacher, "--plan", "--plan-devices", "8", "--sharding", "fsdp",
                 "--dtype", "bfloat16", "--batch-size", "4", "--gen-length", "256"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["parts"]) == {"weights", "teacher", "gradients", "optimizer", "activations"}
    assert out["per_device_bytes"] == sum(out["parts"].values()) and out["devices"] == 8


@pytest.mark.parametrize("name", ["Dream", "llada2_moe"])
def test_other_architectures_plan(name):
    from fewstep.models.registry import find, target

    cfg = target(find(name).config)
    fields = {"Dream": dict(model_type="Dream", vocab_size=64, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6),
              "llada2_moe": dict(model_type="llada2_moe", vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
                                 moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, n_group=1,
                                 topk_group=1)}[name]
    assert cfg is not None
    p = plan(fields, DistillConfig(gen_length=16, batch_size=2))
    assert p["parameters"] > 0 and p["per_device_bytes"] > 0
